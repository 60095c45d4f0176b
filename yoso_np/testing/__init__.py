"""Testing helpers shipped with yoso_np (like numpy.testing): run the GPU code paths on a machine without a GPU.

    with yoso_np.testing.emulated_cuda():
        model.to("cuda")                       # NumPy-backed CuPy stand-in arrays
        out = model(ids, rng=0)                # the real GPU branches; the CUDA kernels on the emulator

emulated_cuda() puts a NumPy-backed stand-in for CuPy (fake_cupy) in sys.modules as ``cupy`` and ``cupyx`` for the
block; its RawModule/RawKernel run the CUDA sources on a threaded CPU emulator (emulator) that stops a launch with
KernelFault on an out-of-bounds access, a shared-memory race or a divergent __syncthreads(). The parity helpers
behind ``yoso-np parity`` are in yoso_np.testing.parity.
"""
import contextlib
import sys

from .emulator import EmulatorError, KernelFault

_MISSING = object()


@contextlib.contextmanager
def emulated_cuda():
    """Install the CuPy stand-in and the kernel emulator for the block; sys.modules is restored exactly on exit.
    Yields the stand-in ``cupy`` module. Arrays made inside stop being "GPU" arrays outside. Its ``counts`` (a dict:
    launches, host_to_device, device_to_host, synchronizations, device_queries) start at zero."""
    from ..raw_kernels import _compile
    from . import fake_cupy

    saved = {name: sys.modules.get(name, _MISSING) for name in fake_cupy.MODULES}
    saved_kernels = _compile._modules
    sys.modules.update(fake_cupy.MODULES)
    fake_cupy.reset_counts()
    _compile._modules = {}  # RawModules compiled for a real device must not meet the stand-in's, nor the reverse
    try:
        yield fake_cupy.MODULES["cupy"]
    finally:
        _compile._modules = saved_kernels
        for name, module in saved.items():
            if module is _MISSING:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


__all__ = ["emulated_cuda", "EmulatorError", "KernelFault"]
