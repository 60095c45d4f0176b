"""Compiling kernel sources: NVRTC through ctypes (no GPU, no CuPy needed) and CuPy RawModules memoised per device."""
import ctypes
import ctypes.util
import os
import sys


class NvrtcNotFoundError(OSError):
    """No libnvrtc could be loaded."""


def _nvrtc_candidates():
    names = ("libnvrtc.so.12", "libnvrtc.so")
    for base in sys.path:  # the nvidia-cuda-nvrtc-cu12 wheel: site-packages/nvidia/cuda_nvrtc/lib
        for name in names:
            path = os.path.join(base or ".", "nvidia", "cuda_nvrtc", "lib", name)
            if os.path.exists(path):
                yield path
    for env in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(env):
            for name in names:
                yield os.path.join(os.environ[env], "lib64", name)
    found = ctypes.util.find_library("nvrtc")
    if found:
        yield found
    yield from names  # whatever the dynamic loader finds


_nvrtc = None


def load_nvrtc():
    """The NVRTC shared library (loaded once), or NvrtcNotFoundError saying what was tried."""
    global _nvrtc
    if _nvrtc is not None:
        return _nvrtc
    tried = []
    for candidate in _nvrtc_candidates():
        try:
            lib = ctypes.CDLL(candidate)
            break
        except OSError as exc:
            tried.append(f"{candidate}: {exc}")
    else:
        raise NvrtcNotFoundError("libnvrtc not found; install it with `pip install nvidia-cuda-nvrtc-cu12` "
                                 "(or the CUDA toolkit). Tried:\n  " + "\n  ".join(tried))
    p = ctypes.c_void_p
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    lib.nvrtcCreateProgram.argtypes = [ctypes.POINTER(p), ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, p, p]
    lib.nvrtcCompileProgram.argtypes = [p, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    lib.nvrtcDestroyProgram.argtypes = [ctypes.POINTER(p)]
    for name in ("nvrtcGetProgramLogSize", "nvrtcGetPTXSize", "nvrtcGetCUBINSize"):
        getattr(lib, name).argtypes = [p, ctypes.POINTER(ctypes.c_size_t)]
    for name in ("nvrtcGetProgramLog", "nvrtcGetPTX", "nvrtcGetCUBIN"):
        getattr(lib, name).argtypes = [p, ctypes.c_char_p]
    _nvrtc = lib
    return lib


def nvrtc_compile(source, name, arch="sm_80"):
    """Compile one CUDA source with NVRTC: CUBIN bytes for arch 'sm_XX', PTX bytes for 'compute_XX'."""
    if not isinstance(arch, str) or not arch.startswith(("sm_", "compute_")):
        raise ValueError(f"arch must look like 'sm_80' (CUBIN) or 'compute_80' (PTX), got {arch!r}")
    lib = load_nvrtc()

    def check(result, what):
        if result != 0:
            raise RuntimeError(f"NVRTC {what} failed for {name}: {lib.nvrtcGetErrorString(result).decode()}")

    prog = ctypes.c_void_p()
    check(lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), f"{name}.cu".encode(), 0, None, None),
          "nvrtcCreateProgram")
    try:
        options = [f"--gpu-architecture={arch}".encode(), b"--std=c++17"]
        result = lib.nvrtcCompileProgram(prog, len(options), (ctypes.c_char_p * len(options))(*options))
        if result != 0:
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, log)
            raise RuntimeError(f"NVRTC could not compile {name} for {arch}:\n{log.value.decode(errors='replace')}")
        kind = "CUBIN" if arch.startswith("sm_") else "PTX"
        size = ctypes.c_size_t()
        check(getattr(lib, f"nvrtcGet{kind}Size")(prog, ctypes.byref(size)), f"nvrtcGet{kind}Size")
        buffer = ctypes.create_string_buffer(size.value)
        check(getattr(lib, f"nvrtcGet{kind}")(prog, buffer), f"nvrtcGet{kind}")
        return buffer.raw
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


_modules = {}  # (source name, device id) -> cupy.RawModule


def get_kernel(name, source, function):
    """cupy.RawKernel `function` of `source`, compiled once per process and device."""
    from ..backend import cupy_module
    cupy = cupy_module()
    key = (name, cupy.cuda.Device().id)
    if key not in _modules:
        _modules[key] = cupy.RawModule(code=source, options=("--std=c++17",))
    return _modules[key].get_function(function)


_device_facts = {}  # (cupy module, device id, fact) -> value: each query is a driver call, made once per device


def _device_fact(name, query):
    from ..backend import cupy_module
    cupy = cupy_module()
    device = cupy.cuda.Device()
    key = (id(cupy), device.id, name)
    if key not in _device_facts:
        _device_facts[key] = query(device)
    return _device_facts[key]


def multiprocessor_count():
    return _device_fact("multiprocessors", lambda device: device.attributes["MultiProcessorCount"])


def total_memory():
    """The current device's memory in bytes."""
    return _device_fact("memory", lambda device: device.mem_info[1])


INT32_MAX = 2**31 - 1


def check_launch_array(name, a, dtype, shape):
    """TypeError/ValueError unless `a` is a C-contiguous CuPy array of `dtype` and `shape`."""
    from ..backend import is_cupy_array
    if not is_cupy_array(a):
        raise TypeError(f"{name} must be a cupy.ndarray, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name} must be {dtype}, got dtype {a.dtype}")
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(a.shape)}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")


def check_int32(**scalars):
    """The scalars as numpy.int32, or ValueError for one that does not fit."""
    import numpy as np
    out = []
    for name, value in scalars.items():
        if not 0 <= int(value) <= INT32_MAX:
            raise ValueError(f"{name} must fit in int32 for the kernel, got {value}")
        out.append(np.int32(value))
    return out
