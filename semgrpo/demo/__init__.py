"""The embedded offline demo: CLDR term pairs of any language (cldr.py), a tokenizer that keeps the script's units
(tokenizer.py), a tiny policy pretrained on them (tiny_policy.py) and a tiny reward encoder (tiny_encoder.py), built
once into the user's cache (assets.py). Tibetan from Chinese by default; `demo.language` / `demo.source` pick others."""
from semgrpo.demo.assets import DemoAssets, build_demo

__all__ = ["DemoAssets", "build_demo"]
