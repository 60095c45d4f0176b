"""Run CUDA kernel sources on the CPU: each block with its real blockDim OS threads, blocks spread over the cores.

A source is compiled unchanged by the system C++ compiler under a small shim (_shim.HEADER) with every memory
access instrumented; the runtime (_shim.RUNTIME) checks each access while a kernel runs and stops the launch with
KernelFault, before the access happens, for
  - shared memory outside the launch's shared_mem bytes, or global memory outside every array argument;
  - a data race on shared memory: a word written by one thread and read or written by another (atomics aside)
    with no __syncthreads() between them;
  - __syncthreads() reached by part of a block while the rest has returned, and misaligned accesses.
Shared memory starts each block filled with 0xFF bytes (NaN floats, -1 ints), as a GPU gives no zeros either.
Libraries are cached by source hash under $YOSO_NP_EMULATOR_CACHE (default ~/.cache/yoso_np/cuda_emulator).
"""
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import _shim

SHARED_MAX = _shim.SHARED_MAX
MAX_THREADS_PER_BLOCK = 1024
KERNEL_FLAGS = ["-std=c++17", "-O1", "-fPIC", "-w", "-fsanitize=kernel-address", "--param",
                "asan-instrumentation-with-call-threshold=0", "--param", "asan-globals=0", "--param", "asan-stack=0"]
RUNTIME_FLAGS = ["-std=c++17", "-O2", "-fPIC", "-w", "-pthread", f"-DSHARED_MAX_BYTES={SHARED_MAX}"]
_KERNEL = re.compile(r"__global__\s+void\s+(\w+)\s*\(")
_SHARED = re.compile(r"extern\s+__shared__\s+[^;]*?(\w+)\s*\[\s*\]\s*;")


class EmulatorError(RuntimeError):
    """The emulator cannot run a source (no compiler, a compile error, a bad launch configuration)."""


class KernelFault(RuntimeError):
    """A launch did something a GPU would fault on or race at; the message names kernel, block and thread."""


MAX_WORKERS = 4  # each runs a block's 256-1024 threads: more cores would mean thousands of threads per launch


def workers():
    """How many blocks run at once (the emulated device's MultiProcessorCount): one per core, at most
    MAX_WORKERS, or $YOSO_NP_EMULATOR_WORKERS."""
    if os.environ.get("YOSO_NP_EMULATOR_WORKERS"):
        return max(1, int(os.environ["YOSO_NP_EMULATOR_WORKERS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(cores, MAX_WORKERS)


_GCC = {}


def compiler():
    """$CXX or g++ on PATH, checked to be GCC (the instrumentation flags are GCC's); EmulatorError otherwise."""
    found = os.environ.get("CXX") or shutil.which("g++")
    if not found:
        raise EmulatorError("the CUDA emulator needs GCC's C++ compiler: no g++ on PATH and CXX is not set")
    if found not in _GCC:
        try:  # the compiler's predefined macros: GCC defines __GNUC__, and clang defines it too, with __clang__
            macros = subprocess.run([found, "-dM", "-E", "-x", "c++", os.devnull], capture_output=True,
                                    text=True).stdout
        except OSError as exc:
            raise EmulatorError(f"the CUDA emulator cannot run the C++ compiler {found}: {exc}") from None
        _GCC[found] = "#define __GNUC__ " in macros and "__clang__" not in macros
    if not _GCC[found]:
        raise EmulatorError(f"the CUDA emulator needs GCC (g++), but {found} is another compiler")
    return found


def available():
    """True where the emulator can compile (GCC's g++ found), for skipping tests elsewhere."""
    try:
        compiler()
    except EmulatorError:
        return False
    return True


def cache_dir():
    path = os.environ.get("YOSO_NP_EMULATOR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "yoso_np",
        "cuda_emulator")
    os.makedirs(path, exist_ok=True)
    return path


def _compile(cxx, flags, source_path, object_path):
    result = subprocess.run([cxx, *flags, "-c", source_path, "-o", object_path], capture_output=True, text=True)
    if result.returncode:
        raise EmulatorError(f"{cxx} could not compile {os.path.basename(source_path)} for the emulator:\n"
                            f"{result.stderr[-4000:]}")


def _cached_object(cxx, name, text, flags):
    """An object file compiled once per (compiler, flags, text) into the cache."""
    path = os.path.join(cache_dir(), hashlib.sha256("\0".join([cxx, *flags, text]).encode()).hexdigest()[:32] + ".o")
    if not os.path.exists(path):
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            with open(os.path.join(tmp, name), "w") as f:
                f.write(text)
            _compile(cxx, flags, os.path.join(tmp, name), os.path.join(tmp, "out.o"))
            os.replace(os.path.join(tmp, "out.o"), path)
    return path


def build(source):
    """Path of the emulator library for `source` (compiled once per source, compiler and shim)."""
    cxx = compiler()
    kernels = _KERNEL.findall(source)
    shared = sorted(set(_SHARED.findall(source)))
    objects = [
        _cached_object(cxx, "kernel.cpp", _shim.HEADER + source + _shim.FOOTER_HEAD
                       + "".join(_shim.FOOTER_KERNEL.format(name=name) for name in kernels), KERNEL_FLAGS),
        _cached_object(cxx, "shared.cpp", _shim.SHARED_UNIT.format(size=SHARED_MAX, aliases="\n".join(
            _shim.SHARED_ALIAS.format(name=name, size=SHARED_MAX) for name in shared)), RUNTIME_FLAGS),
        _cached_object(cxx, "runtime.cpp", _shim.RUNTIME, RUNTIME_FLAGS),
    ]
    path = os.path.join(cache_dir(), hashlib.sha256("\0".join(objects).encode()).hexdigest()[:32] + ".so")
    if not os.path.exists(path):
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            result = subprocess.run([cxx, "-shared", "-pthread", "-Wl,-z,defs", *objects, "-o",
                                     os.path.join(tmp, "k.so")], capture_output=True, text=True)
            if result.returncode:
                raise EmulatorError(f"{cxx} could not link the emulator library:\n{result.stderr[-4000:]}")
            os.replace(os.path.join(tmp, "k.so"), path)
    return path


GUARD_BYTES = 256  # around each staged allocation: an overrun lands here and is reported, not in a neighbour


class Pointer:
    """A device-pointer kernel argument: its address, inside the NumPy array `allocation` that owns the memory."""

    def __init__(self, address, allocation):
        self.address, self.allocation = int(address), allocation


def _stage(pointers):
    """{id(allocation): (allocation, staged copy)}: each allocation copied into a buffer of its own with guard
    bytes on both sides, so that an access past its end cannot land in whatever NumPy put next to it."""
    staged = {}
    for p in pointers:
        a = p.allocation
        if id(a) not in staged:
            buffer = np.full(a.nbytes + 2 * GUARD_BYTES, 0xFB, dtype=np.uint8)
            ctypes.memmove(buffer.ctypes.data + GUARD_BYTES, a.ctypes.data, a.nbytes)
            staged[id(a)] = (a, buffer)
    return staged


def _unstage(staged):
    for a, buffer in staged.values():
        if a.flags.writeable:
            ctypes.memmove(a.ctypes.data, buffer.ctypes.data + GUARD_BYTES, a.nbytes)


class _Launch(ctypes.Structure):
    _fields_ = [("grid", ctypes.c_int64 * 3), ("block", ctypes.c_int64 * 3), ("shared_bytes", ctypes.c_int64),
                ("first_block", ctypes.c_int64), ("block_step", ctypes.c_int64), ("n_ranges", ctypes.c_int64),
                ("ranges", ctypes.POINTER(ctypes.c_uint64)), ("kernel", ctypes.c_char_p), ("n_params", ctypes.c_int64),
                ("params", ctypes.POINTER(ctypes.c_uint64))]


_CTYPES = {("i", 1): ctypes.c_int8, ("i", 2): ctypes.c_int16, ("i", 4): ctypes.c_int32, ("i", 8): ctypes.c_int64,
           ("u", 1): ctypes.c_uint8, ("u", 2): ctypes.c_uint16, ("u", 4): ctypes.c_uint32, ("u", 8): ctypes.c_uint64,
           ("f", 4): ctypes.c_float, ("f", 8): ctypes.c_double, ("b", 1): ctypes.c_bool}
_C_NAMES = {("i", 1): "char", ("i", 2): "short", ("i", 4): "int", ("i", 8): "long long", ("u", 1): "unsigned char",
            ("u", 2): "unsigned short", ("u", 4): "unsigned int", ("u", 8): "unsigned long long",
            ("f", 4): "float", ("f", 8): "double", ("b", 1): "bool", ("p", 8): "a pointer"}


class Module:
    """A compiled source: one library copy per worker, so that blocks running at once have their own shared memory."""

    _lock = threading.Lock()
    _pool = None

    def __init__(self, source):
        self.source = source
        self.path = build(source)
        self.kernels = _KERNEL.findall(source)
        self._copies = []
        self.launch_lock = threading.Lock()  # a copy's runtime holds one launch's state (and error) at a time

    def _copy(self, i):
        with Module._lock:
            while len(self._copies) <= i:
                path = f"{self.path[:-3]}.w{len(self._copies)}.so"  # a distinct file: dlopen shares one per file
                if not os.path.exists(path):
                    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}"
                    shutil.copyfile(self.path, tmp)
                    os.replace(tmp, path)
                self._copies.append(ctypes.CDLL(path))
            return self._copies[i]

    def function(self, name):
        if name not in self.kernels:
            raise EmulatorError(f"no __global__ function named {name!r} in the source; it has {self.kernels}")
        return Kernel(self, name)


class Kernel:
    def __init__(self, module, name):
        self.module, self.name = module, name
        signature = getattr(module._copy(0), f"__emu_signature_{name}")
        signature.restype = ctypes.c_char_p
        self.params = [(p[0], int(p[1:])) for p in signature().decode().split()]

    def _arguments(self, args, staged):
        """The argument values (ctypes) and per argument the byte range [lo, hi) it may touch ([0, 0): none)."""
        if len(args) != len(self.params) or len(args) > 64:
            raise TypeError(f"{self.name} takes {len(self.params)} arguments, the launch passed {len(args)}")
        values, ranges = [], []
        for i, (arg, (kind, size)) in enumerate(zip(args, self.params)):
            if kind == "p":
                if not isinstance(arg, Pointer):
                    raise TypeError(f"{self.name} argument {i} is a pointer, the launch passed {type(arg).__name__}")
                allocation, buffer = staged[id(arg.allocation)]
                lo = buffer.ctypes.data + GUARD_BYTES
                values.append(ctypes.c_void_p(lo + arg.address - allocation.ctypes.data))
                ranges += [lo, lo + allocation.nbytes]
                continue
            ranges += [0, 0]
            if not isinstance(arg, np.generic):
                raise TypeError(f"{self.name} argument {i}: expected a NumPy scalar, got {type(arg).__name__}")
            got = ("b" if arg.dtype == bool else arg.dtype.kind, arg.dtype.itemsize)
            if got != (kind, size):
                raise TypeError(f"{self.name} argument {i} is {_C_NAMES[kind, size]} ({size} bytes) but the launch "
                                f"passed {arg.dtype} ({arg.dtype.itemsize} bytes): on a GPU the kernel would read "
                                f"the wrong bytes")
            values.append(_CTYPES[kind, size](arg.item()))
        return values, ranges

    def __call__(self, grid, block, args, shared_mem=0):
        grid, block = _dims("grid", grid), _dims("block", block)
        if any(d > limit for d, limit in zip(grid, (2**31 - 1, 65535, 65535))):
            raise EmulatorError(f"grid {grid} exceeds CUDA's limits (2**31 - 1, 65535, 65535)")
        if (any(d > limit for d, limit in zip(block, (1024, 1024, 64)))
                or block[0] * block[1] * block[2] > MAX_THREADS_PER_BLOCK):
            raise EmulatorError(f"block {block} exceeds CUDA's limits (1024, 1024, 64; 1024 threads in all)")
        if not 0 <= int(shared_mem) <= SHARED_MAX:
            raise EmulatorError(f"shared_mem must be in [0, {SHARED_MAX}] bytes (CUDA's default limit per block), "
                                f"got {shared_mem}")
        args = list(args)
        staged = _stage([a for a in args if isinstance(a, Pointer)])
        try:
            with self.module.launch_lock:
                self._launch(grid, block, args, shared_mem, staged)
        finally:
            _unstage(staged)

    def _launch(self, grid, block, args, shared_mem, staged):
        values, ranges = self._arguments(args, staged)
        slots = (ctypes.c_uint64 * max(1, len(values)))()
        for slot, value in zip(range(len(values)), values):
            ctypes.memmove(ctypes.addressof(slots) + 8 * slot, ctypes.addressof(value), ctypes.sizeof(value))
        range_array = (ctypes.c_uint64 * max(1, len(ranges)))(*ranges)
        blocks = grid[0] * grid[1] * grid[2]
        n = min(workers(), blocks)
        launches = [_Launch(grid, block, int(shared_mem), i, n, len(ranges) // 2, range_array, self.name.encode(),
                            len(values), slots) for i in range(n)]

        def run(i):
            entry = getattr(self.module._copy(i), f"__emu_run_{self.name}")
            entry.argtypes = [ctypes.c_void_p]
            return entry(ctypes.addressof(launches[i]))

        if n == 1:
            codes = [run(0)]
        else:
            with Module._lock:
                if Module._pool is None or Module._pool._max_workers < n:
                    Module._pool = ThreadPoolExecutor(max(n, workers()), thread_name_prefix="cuda_emulator")
            codes = list(Module._pool.map(run, range(n)))
        for i, code in enumerate(codes):
            if code == 2:
                raise EmulatorError(f"{self.name}: could not start {block[0] * block[1] * block[2]} threads")
            if code == 1:
                error = getattr(self.module._copy(i), "__emu_error")
                error.restype = ctypes.c_char_p
                raise KernelFault(error().decode(errors="replace"))


def _dims(name, dims):
    dims = (dims,) if isinstance(dims, (int, np.integer)) else tuple(dims)
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, (int, np.integer)) for d in dims):
        raise EmulatorError(f"{name} must be an int or a tuple of 1 to 3 ints, got {dims!r}")
    dims = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    if min(dims) < 1:
        raise EmulatorError(f"{name} dimensions must be >= 1 (CUDA_ERROR_INVALID_VALUE), got {dims}")
    return dims


_modules = {}


def module(source):
    """The compiled Module of `source`, memoised for the process."""
    with Module._lock:
        found = _modules.get(source)
    if found is None:
        found = Module(source)
        with Module._lock:
            _modules[source] = found
    return found
