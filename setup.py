"""Package semgrpo and its C extension.

The C extension (csrc/script_check.c -> semgrpo._script_check) is optional: when it cannot be
compiled (no compiler, no Python headers), the install still succeeds and semgrpo.script falls
back to its pure-Python `regex` path, which gives identical answers.
"""
import os

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


def _requirements(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


class OptionalBuildExt(build_ext):
    """Build C extensions, but never fail the install because of them."""

    def run(self):
        try:
            super().run()
        except Exception as exc:
            print(f"semgrpo: C extension not built ({exc}); the pure-Python script checker will be used")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"semgrpo: {ext.name} not built ({exc}); the pure-Python fallback will be used")


# The one place the C extension is declared.
EXTENSIONS = [
    Extension(
        "semgrpo._script_check",
        sources=["csrc/script_check.c"],
        extra_compile_args=["-O3", "-std=c99"],
        optional=True,
    )
]
EXTENSIONS = [e for e in EXTENSIONS if all(os.path.exists(os.path.join(HERE, s)) for s in e.sources)]

setup(
    name="semgrpo",
    version="0.1.0",
    description="Semantic-reward GRPO for low-resource language expansion on DeepSpeed ZeRO-3",
    packages=find_packages(include=["semgrpo", "semgrpo.*"]),
    package_data={"semgrpo.getdata": ["*.json"]},  # the data manifest and the OpenPecha id lists
    python_requires=">=3.10",
    install_requires=_requirements("requirements.txt"),
    extras_require={"test": _requirements("requirements-test.txt"), "wandb": ["wandb==0.31.0"]},
    ext_modules=EXTENSIONS,
    cmdclass={"build_ext": OptionalBuildExt},
)
