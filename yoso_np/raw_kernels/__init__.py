"""CUDA kernels for CuPy arrays, one file per kernel family: the math, the CUDA source and a checking launcher.

compile_all() compiles every source with NVRTC (through ctypes), which needs neither a GPU nor CuPy.
"""
from . import cumulation, expectation, fast_hash
from ._compile import NvrtcNotFoundError, load_nvrtc, nvrtc_compile

SOURCES = {"fast_hash": fast_hash.SOURCE, "cumulation": cumulation.SOURCE,
           "expectation": expectation.SOURCE}


def compile_all(arch="sm_80"):
    """{source name: CUBIN bytes (arch 'sm_XX') or PTX bytes (arch 'compute_XX')} for every kernel source."""
    return {name: nvrtc_compile(source, name, arch) for name, source in SOURCES.items()}


__all__ = ["SOURCES", "compile_all", "load_nvrtc", "nvrtc_compile", "NvrtcNotFoundError", "cumulation", "expectation",
           "fast_hash"]
