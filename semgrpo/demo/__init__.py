"""The embedded offline demo: CLDR term pairs, a tokenizer, a tiny policy pretrained on them
(tiny_policy.py) and a tiny reward encoder (tiny_encoder.py), built once into the user's cache (assets.py)."""
from semgrpo.demo.assets import DemoAssets, build_demo

__all__ = ["DemoAssets", "build_demo"]
