"""Builds the Cython fast path; all metadata lives in pyproject.toml."""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

# -O3 for the hot loop; WARDTAP_NATIVE=1 adds -march=native for a build on the Pi itself.
flags = ["-O3", "-fno-strict-aliasing"]
if os.environ.get("WARDTAP_NATIVE") == "1":
    flags.append("-march=native")

extensions = [
    Extension("fastpath.core", ["fastpath/core.pyx"], extra_compile_args=flags),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3", "embedsignature": True},
        annotate=os.environ.get("WARDTAP_ANNOTATE") == "1",
    ),
)
