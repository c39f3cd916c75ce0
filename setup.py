"""Builds the Cython fast path; all metadata lives in pyproject.toml."""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

# -O3 for the hot loop; WARDTAP_NATIVE=1 adds -march=native for a build on the Pi itself.
# GCC's default inlining limits leave the compact path (fastpath/compact.pxi) a call from the
# batch loop, which costs 27 of its instructions a packet; these let the loop take it in
# (callgrind: 296 -> 277 instructions a hit, bench/bench_scale.py --only callgrind).
flags = ["-O3", "-fno-strict-aliasing",
         "--param=max-inline-insns-single=1000", "--param=large-function-growth=1000"]
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
