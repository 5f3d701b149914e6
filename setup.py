"""The one build step pyproject.toml cannot state stably: difftem's compiled CPU kernels (src/difftem/forward/_native.c,
used through forward/native.py). Optional: without a C compiler the install goes on and the torch paths run."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("difftem.forward._native", ["src/difftem/forward/_native.c"],
                             extra_compile_args=["-O3"], optional=True)])
