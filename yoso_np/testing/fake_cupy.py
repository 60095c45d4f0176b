"""A NumPy-backed stand-in for the parts of CuPy that yoso_np uses, with CuPy's rules where they differ from NumPy's.

``cupy`` and ``cupyx`` are module objects built here; emulated_cuda() puts them in sys.modules. Arrays are an
ndarray type of their own (wrapping a NumPy array), so every ``backend.array_module`` dispatch takes the GPU branch.
As CuPy documents:
  - no implicit conversion to NumPy (``numpy.asarray(x)`` raises TypeError; use ``.get()`` or ``cupy.asnumpy``);
    NumPy ufuncs and functions called on these arrays dispatch back here (``__array_ufunc__``/``__array_function__``);
  - ufuncs and array functions take these arrays and scalars only: a numpy.ndarray or a list raises TypeError
    (the constructors ``array``/``asarray`` convert);
  - reductions and scalar indexing return 0-dimensional arrays, not scalars;
  - ``empty`` gives uninitialised memory (here: 0xFF bytes, so NaN floats and -1 ints show up where code relied
    on zeros); assigning a non-scalar numpy.ndarray into an array raises ValueError as CuPy's fill does.
Deliberately stricter than CuPy: out-of-bounds integer-array indices raise IndexError as NumPy does (CuPy wraps
them around, which would hide the bug). RawModule/RawKernel launch on yoso_np.testing.emulator.
"""
import functools
import sys
import types

import numpy as np

from . import emulator

# What a GPU pays for, counted for tests that pin budgets (`with emulated_cuda() as gpu: ...; gpu.counts`):
# launches (kernels and array operations; views, reshapes and empty allocations are free), transfers each way
# (device_to_host includes every implicit sync: bool/int/float of an array, .item(), .get()), explicit
# synchronizations and device attribute queries. emulated_cuda() zeroes them on entry.
counts = {"launches": 0, "host_to_device": 0, "device_to_host": 0, "synchronizations": 0, "device_queries": 0}
_FREE = frozenset("reshape transpose swapaxes moveaxis expand_dims squeeze broadcast_to broadcast_arrays atleast_1d "
                  "atleast_2d split array_split view shape ndim size".split())


def reset_counts():
    for key in counts:
        counts[key] = 0


def _count(kind, n=1):
    counts[kind] += n


def _root(a):
    """The NumPy array owning `a`'s memory: a kernel may touch all of it (CUDA's memcheck works per allocation)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _poison(a):
    if a.size:
        a[...] = np.frombuffer(b"\xff" * a.itemsize, dtype=a.dtype)[0]
    return a


class _MemoryPointer:
    def __init__(self, array):
        self.ptr = array.__array_interface__["data"][0]
        self.device = Device(0)


class ndarray:
    """cupy.ndarray: an N-dimensional array on the (emulated) device."""

    __slots__ = ("_a", "__weakref__")
    __array_priority__ = 100

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None:
            raise NotImplementedError("the CuPy stand-in makes arrays from shape and dtype only")
        self._a = _poison(np.empty(shape, dtype=dtype, order=order))

    # -- conversion
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a "
                        "NumPy array explicitly.")

    def get(self, stream=None, order="C", out=None):
        _count("device_to_host")
        if out is not None:
            np.copyto(out, self._a)
            return out
        return np.array(self._a, order=order)

    def item(self, *args):
        _count("device_to_host")
        return self._a.item(*args)

    def tolist(self):
        _count("device_to_host")
        return self._a.tolist()

    def __repr__(self):
        return repr(self._a)

    def __str__(self):
        return str(self._a)

    def _scalar(self, kind):
        if self._a.size != 1:
            raise TypeError(f"only size-1 arrays can be converted to Python scalars, got shape {self._a.shape}")
        _count("device_to_host")
        return kind(self._a.reshape(()))

    def __bool__(self):
        if self._a.size != 1:
            raise ValueError("The truth value of an array with more than one element is ambiguous.")
        _count("device_to_host")
        return bool(self._a.reshape(()))

    def __float__(self):
        return self._scalar(float)

    def __int__(self):
        return self._scalar(int)

    def __complex__(self):
        return self._scalar(complex)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self._a)))

    # -- attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: _wrap(self._a.T))
    mT = property(lambda self: _wrap(np.swapaxes(self._a, -1, -2)))
    real = property(lambda self: _wrap(self._a.real))
    imag = property(lambda self: _wrap(self._a.imag))
    data = property(lambda self: _MemoryPointer(self._a))
    device = property(lambda self: Device(0))
    base = property(lambda self: None if self._a.base is None else _wrap(_root(self._a)))

    @shape.setter
    def shape(self, value):
        self._a.shape = value

    # -- indexing
    def __getitem__(self, key):
        out = self._a[_unwrap_index(key)]
        if not np.may_share_memory(out, self._a):  # advanced indexing gathers: a kernel; basic indexing is a view
            _count("launches")
        return _wrap(out)

    def __setitem__(self, key, value):
        if isinstance(value, np.ndarray) and value.ndim:
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        _count("launches")
        self._a[_unwrap_index(key)] = value._a if isinstance(value, ndarray) else _scalar_arg(value)

    # -- NumPy's protocols: NumPy functions called on these arrays run the stand-in's
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        ours = _MODULE.__dict__.get(ufunc.__name__)
        if not isinstance(ours, _Ufunc):
            return NotImplemented
        return getattr(ours, method)(*inputs, **kwargs) if method != "__call__" else ours(*inputs, **kwargs)

    def __array_function__(self, func, types_, args, kwargs):
        module = _MODULE if func.__module__ == "numpy" else getattr(_MODULE, func.__module__.split(".")[-1], None)
        ours = getattr(module, func.__name__, None) if module is not None else None
        return NotImplemented if ours is None else ours(*args, **kwargs)


_METHODS = ("astype reshape transpose swapaxes sum mean max min argmax argmin any all copy ravel flatten squeeze "
            "fill cumsum prod var std clip dot nonzero repeat take round conj view argsort diagonal trace "
            "sort partition").split()


def _method(name):
    def method(self, *args, **kwargs):
        if name not in _FREE:
            _count("launches")
        out = getattr(self._a, name)(*_unwrap(args, name), **_unwrap(kwargs, name))
        return self if out is None and name in ("fill", "sort") else _wrap_result(out, kwargs)
    method.__name__ = name
    return method


for _name in _METHODS:
    setattr(ndarray, _name, _method(_name))


_OPERATORS = {"add": "add", "sub": "subtract", "mul": "multiply", "truediv": "true_divide",
              "floordiv": "floor_divide", "mod": "remainder", "pow": "power", "matmul": "matmul",
              "and": "bitwise_and", "or": "bitwise_or", "xor": "bitwise_xor", "lshift": "left_shift",
              "rshift": "right_shift"}


def _operators():
    def binary(name):
        return lambda self, other: _MODULE.__dict__[name](self, other)

    def reflected(name):
        return lambda self, other: _MODULE.__dict__[name](other, self)

    def inplace(name):
        def op(self, other):
            _MODULE.__dict__[name](self, other, out=self)
            return self
        return op

    for op, name in _OPERATORS.items():
        setattr(ndarray, f"__{op}__", binary(name))
        setattr(ndarray, f"__r{op}__", reflected(name))
        if op != "matmul":
            setattr(ndarray, f"__i{op}__", inplace(name))
    for op, name in {"eq": "equal", "ne": "not_equal", "lt": "less", "le": "less_equal", "gt": "greater",
                     "ge": "greater_equal"}.items():
        setattr(ndarray, f"__{op}__", binary(name))
    for op, name in {"neg": "negative", "pos": "positive", "abs": "absolute", "invert": "invert"}.items():
        setattr(ndarray, f"__{op}__", lambda self, _n=name: _MODULE.__dict__[_n](self))
    ndarray.__hash__ = None


_operators()


def _wrap(a):
    """A NumPy result as a stand-in array (NumPy scalars become 0-d arrays, as CuPy returns)."""
    if isinstance(a, np.generic):
        a = np.asarray(a)
    if isinstance(a, np.ndarray):
        out = object.__new__(ndarray)
        out._a = a
        return out
    if isinstance(a, tuple):
        return tuple(_wrap(x) for x in a)
    if isinstance(a, list):
        return [_wrap(x) for x in a]
    return a


def _wrap_result(result, kwargs):
    out = kwargs.get("out")
    if isinstance(out, ndarray) and result is out._a:
        return out
    if isinstance(out, tuple) and isinstance(result, tuple):
        return tuple(o if isinstance(o, ndarray) and r is o._a else _wrap(r) for r, o in zip(result, out))
    return _wrap(result)


def _unsupported(x, where):
    return TypeError(f"Unsupported type {type(x)}" + (f" in {where}" if where else "")
                     + " (CuPy functions take cupy.ndarray; move NumPy data with cupy.asarray)")


def _unwrap(x, where=""):
    """Arguments for NumPy: stand-in arrays unwrapped (inside lists, tuples, dicts too); a numpy.ndarray refused."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray):
        raise _unsupported(x, where)
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v, where) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v, where) for k, v in x.items()}
    return x


def _unwrap_index(key):
    """Index keys may hold CuPy arrays, NumPy arrays and lists (CuPy converts them)."""
    if isinstance(key, tuple):
        return tuple(_unwrap_index(k) for k in key)
    return key._a if isinstance(key, ndarray) else key


def _scalar_arg(x, where=""):
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, (bool, int, float, complex, np.generic)) or x is None:
        return x
    if isinstance(x, np.ndarray) and x.ndim == 0:
        return x
    raise _unsupported(x, where)


class _Ufunc:
    """cupy.ufunc: CuPy arrays and scalars only (no lists, no NumPy arrays)."""

    def __init__(self, np_ufunc):
        self._f = np_ufunc
        self.__name__ = np_ufunc.__name__
        self.nin, self.nout, self.nargs = np_ufunc.nin, np_ufunc.nout, np_ufunc.nargs

    def _kwargs(self, kwargs):
        kwargs = {k: v._a if isinstance(v, ndarray) and k != "out" else v for k, v in kwargs.items()}  # where=
        if "out" in kwargs:
            out = kwargs["out"]
            kwargs["out"] = tuple(_scalar_arg(o, self.__name__) for o in out) if isinstance(out, tuple) else \
                _scalar_arg(out, self.__name__)
        return kwargs

    def __call__(self, *args, **kwargs):
        _count("launches")
        args = [_scalar_arg(a, self.__name__) for a in args]
        return _wrap_result(self._f(*args, **self._kwargs(kwargs)), kwargs)

    def reduce(self, a, *args, **kwargs):
        _count("launches")
        return _wrap_result(self._f.reduce(_scalar_arg(a, self.__name__), *args, **self._kwargs(kwargs)), kwargs)

    def accumulate(self, a, *args, **kwargs):
        _count("launches")
        return _wrap_result(self._f.accumulate(_scalar_arg(a, self.__name__), *args, **self._kwargs(kwargs)), kwargs)

    def outer(self, a, b, **kwargs):
        _count("launches")
        return _wrap_result(self._f.outer(_scalar_arg(a), _scalar_arg(b), **self._kwargs(kwargs)), kwargs)

    def at(self, a, indices, b=None):
        _count("launches")
        self._f.at(_scalar_arg(a), _unwrap_index(indices), *(() if b is None else (_scalar_arg(b),)))


_UFUNCS = ("add subtract multiply divide true_divide floor_divide negative positive power float_power remainder mod "
           "fmod absolute abs sign exp expm1 exp2 log log1p log2 log10 sqrt cbrt square reciprocal sin cos tan arcsin "
           "arccos arctan arctan2 sinh cosh tanh arcsinh arccosh arctanh maximum minimum fmax fmin copysign signbit "
           "isnan isinf isfinite greater greater_equal less less_equal equal not_equal logical_and logical_or "
           "logical_not logical_xor bitwise_and bitwise_or bitwise_xor invert left_shift right_shift floor ceil "
           "trunc rint hypot deg2rad rad2deg nextafter ldexp frexp modf conjugate conj").split()

_FUNCTIONS = ("where clip matmul dot vdot inner outer tensordot einsum stack concatenate vstack hstack pad broadcast_to "
              "broadcast_arrays reshape transpose swapaxes moveaxis expand_dims squeeze repeat tile sum mean max amax "
              "min amin argmax argmin any all prod cumsum sort argsort take take_along_axis copyto isclose allclose "
              "array_equal flatnonzero nonzero unique count_nonzero diff tril triu diag var std ravel atleast_1d "
              "atleast_2d split array_split flip roll cumprod searchsorted bincount nan_to_num round "
              "around argwhere logaddexp triu_indices tril_indices").split()


def _function(name):
    np_function = getattr(np, name)

    @functools.wraps(np_function)
    def function(*args, **kwargs):
        if name not in _FREE:
            _count("launches")
        return _wrap_result(np_function(*_unwrap(args, name), **_unwrap(kwargs, name)), kwargs)
    return function


# -- creation: the only functions that take NumPy arrays and lists, and copy them to the device
def array(obj, dtype=None, copy=True, order="K", ndmin=0):
    on_device = isinstance(obj, ndarray)
    _count("launches" if on_device else "host_to_device")
    data = obj._a if on_device else _unwrap_sequence(obj)
    return _wrap(np.array(data, dtype=dtype, copy=True if copy or not on_device else None, order=order, ndmin=ndmin))


def _unwrap_sequence(obj):
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unwrap_sequence(o) for o in obj)
    return obj._a if isinstance(obj, ndarray) else obj


def asarray(a, dtype=None, order=None, *, blocking=False):
    if isinstance(a, ndarray):
        out = np.asarray(a._a, dtype=dtype, order=order)
        if out is not a._a:
            _count("launches")
        return _wrap(out)
    _count("host_to_device")
    return _wrap(np.array(_unwrap_sequence(a), dtype=dtype, order=order or "K"))  # a host array: always copied


asanyarray = asarray


def ascontiguousarray(a, dtype=None):
    out = np.ascontiguousarray(_unwrap(a, "ascontiguousarray"), dtype=dtype)
    if not isinstance(a, ndarray) or out is not a._a:
        _count("launches")
    return _wrap(out)


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    return a.get(order=order, out=out) if isinstance(a, ndarray) else np.asarray(a, order=order)


def empty(shape, dtype=float, order="C"):
    return _wrap(_poison(np.empty(shape, dtype=dtype, order=order)))


def empty_like(a, dtype=None, order="K", subok=None, shape=None):
    return _wrap(_poison(np.empty_like(_unwrap(a, "empty_like"), dtype=dtype, order=order, shape=shape)))


def _creation(name):
    np_function = getattr(np, name)

    @functools.wraps(np_function)
    def function(*args, **kwargs):
        _count("launches")
        return _wrap(np_function(*_unwrap(args, name), **_unwrap(kwargs, name)))
    return function


def get_array_module(*args):
    return _MODULE if any(isinstance(a, ndarray) for a in args) else np


def scatter_add(a, slices, value):
    """cupyx.scatter_add: a[slices] += value with repeated indices summed (NumPy's add.at)."""
    if not isinstance(a, ndarray):
        raise _unsupported(a, "scatter_add")
    _count("launches")
    np.add.at(a._a, _unwrap_index(slices), _scalar_arg(value, "scatter_add"))


# -- cupy.random: draws made "on the device" (NumPy's generator here; a real device's cuRAND draws other numbers)
class RandomState:
    """cupy.random.RandomState(seed): random_sample/standard_normal/randint, one launch per draw."""

    def __init__(self, seed=None, method=None):
        self._rng = np.random.default_rng(seed)

    def seed(self, seed=None):
        self._rng = np.random.default_rng(seed)

    def random_sample(self, size=None, dtype=float):
        _count("launches")
        return _wrap(self._rng.random(size, dtype=dtype))

    def standard_normal(self, size=None, dtype=float):
        _count("launches")
        return _wrap(self._rng.standard_normal(size, dtype=dtype))

    def randint(self, low, high=None, size=None, dtype=int):
        _count("launches")
        return _wrap(self._rng.integers(low, high, size, dtype=dtype))


# -- cupy.cuda
class Device:
    """cupy.cuda.Device: the one emulated device; MultiProcessorCount is the number of blocks run at once."""

    def __init__(self, device=None):
        device = 0 if device is None else int(device)
        if device != 0:
            raise _runtime_error("cudaErrorInvalidDevice: invalid device ordinal")
        self.id = device

    @property
    def attributes(self):
        _count("device_queries")
        return {"MultiProcessorCount": emulator.workers(), "MaxThreadsPerBlock": emulator.MAX_THREADS_PER_BLOCK,
                "MaxSharedMemoryPerBlock": emulator.SHARED_MAX, "WarpSize": 32, "MaxBlockDimX": 1024,
                "MaxBlockDimY": 1024, "MaxBlockDimZ": 64, "MaxGridDimX": 2**31 - 1, "MaxGridDimY": 65535,
                "MaxGridDimZ": 65535}

    compute_capability = "80"
    EMULATED_MEMORY = 16 * 2**30  # what mem_info reports as total (and free): sizes budgets, not a real limit

    @property
    def mem_info(self):
        _count("device_queries")
        return self.EMULATED_MEMORY, self.EMULATED_MEMORY

    def use(self):
        pass

    def synchronize(self):
        _count("synchronizations")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(("emulated cuda device", self.id))

    def __repr__(self):
        return f"<CUDA Device {self.id} (emulated)>"


class CUDADriverError(RuntimeError):
    pass


class CUDARuntimeError(RuntimeError):
    pass


def _runtime_error(message):
    return CUDARuntimeError(message)


class RawKernel:
    """cupy.RawKernel(code, name, options=()): a launch runs the source on the emulator."""

    def __init__(self, code, name, options=(), backend="nvrtc", translate_cucomplex=False, *,
                 enable_cooperative_groups=False, jitify=False):
        self.code, self.name, self.options, self.backend = code, name, tuple(options), backend
        self.max_dynamic_shared_size_bytes = 0
        self._kernel = None

    @property
    def kernel(self):
        if self._kernel is None:
            self._kernel = emulator.module(self.code).function(self.name)
        return self._kernel

    @property
    def attributes(self):
        return {"max_threads_per_block": emulator.MAX_THREADS_PER_BLOCK, "shared_size_bytes": 0,
                "max_dynamic_shared_size_bytes": self.max_dynamic_shared_size_bytes or emulator.SHARED_MAX}

    def __call__(self, grid, block, args, *, shared_mem=0):
        if not isinstance(args, tuple):
            raise TypeError(f"args must be a tuple, got {type(args).__name__}")
        _count("launches")
        self.kernel(grid, block, [_kernel_argument(a, i, self.name) for i, a in enumerate(args)], shared_mem)


def _kernel_argument(a, i, kernel):
    """As CuPy passes a kernel argument: an array as its device pointer, a NumPy scalar as its dtype, a Python
    bool/int/float as bool/int64 (long long)/float64 (double)."""
    if isinstance(a, ndarray):
        return emulator.Pointer(a.data.ptr, _root(a._a))
    if isinstance(a, np.ndarray):
        raise TypeError(f"{kernel} argument {i}: a numpy.ndarray cannot be passed to a kernel (host memory)")
    if isinstance(a, np.generic):
        return a
    if isinstance(a, bool):
        return np.bool_(a)
    if isinstance(a, int):
        return np.int64(a)
    if isinstance(a, float):
        return np.float64(a)
    raise TypeError(f"{kernel} argument {i}: unsupported type {type(a).__name__}")


class RawModule:
    """cupy.RawModule(code=..., options=...): get_function(name) gives a RawKernel of the source."""

    def __init__(self, code=None, path=None, options=(), backend="nvrtc", translate_cucomplex=False, *,
                 enable_cooperative_groups=False, name_expressions=None, jitify=False):
        if code is None:
            raise NotImplementedError("the CuPy stand-in compiles source code only (code=...), not a path")
        self.code, self.options, self.backend = code, tuple(options), backend

    def get_function(self, name):
        kernel = RawKernel(self.code, name, self.options, self.backend)
        kernel.kernel  # compile now, and an unknown name fails here as CuPy's does
        return kernel


def _make_modules():
    cupy = types.ModuleType("cupy", "NumPy-backed stand-in for CuPy (yoso_np.testing.fake_cupy)")
    for name in _UFUNCS:
        if hasattr(np, name):
            setattr(cupy, name, _Ufunc(getattr(np, name)))
    for name in _FUNCTIONS:
        if hasattr(np, name):
            setattr(cupy, name, _function(name))
    for name in ("zeros", "ones", "full", "zeros_like", "ones_like", "full_like", "arange", "linspace", "eye",
                 "identity", "tri", "indices"):
        setattr(cupy, name, _creation(name))
    for name in ("float16 float32 float64 int8 int16 int32 int64 uint8 uint16 uint32 uint64 bool_ complex64 "
                 "complex128 intp integer floating signedinteger unsignedinteger number generic dtype iinfo finfo "
                 "result_type can_cast promote_types newaxis pi e inf nan euler_gamma shape ndim size isscalar "
                 "issubdtype").split():
        setattr(cupy, name, getattr(np, name))
    cupy.bool = np.bool_
    for name in ("ndarray", "array", "asarray", "asanyarray", "ascontiguousarray", "asnumpy", "empty", "empty_like",
                 "get_array_module", "RawKernel", "RawModule"):
        setattr(cupy, name, globals()[name])
    cupy.ufunc = _Ufunc
    cupy.matmul = _function("matmul")
    cupy.is_available = lambda: True
    cupy.counts = counts

    linalg = types.ModuleType("cupy.linalg")
    for name in ("norm", "inv", "det", "solve", "qr", "svd", "eigh", "cholesky", "matrix_power", "pinv"):
        np_function = getattr(np.linalg, name)
        setattr(linalg, name, functools.wraps(np_function)(
            lambda *a, _f=np_function, **k: _wrap_result(_f(*_unwrap(a), **_unwrap(k)), k)))
    cupy.linalg = linalg

    random = types.ModuleType("cupy.random")
    random.RandomState = RandomState
    cupy.random = random

    cuda = types.ModuleType("cupy.cuda")
    cuda.Device = Device
    cuda.is_available = lambda: True
    cuda.get_device_id = lambda: 0
    runtime = types.ModuleType("cupy.cuda.runtime")
    runtime.getDeviceCount = lambda: 1
    runtime.deviceSynchronize = lambda: _count("synchronizations")
    runtime.CUDARuntimeError = CUDARuntimeError
    driver = types.ModuleType("cupy.cuda.driver")
    driver.CUDADriverError = CUDADriverError
    cuda.runtime, cuda.driver = runtime, driver
    cupy.cuda = cuda

    cupyx = types.ModuleType("cupyx", "NumPy-backed stand-in for cupyx (yoso_np.testing.fake_cupy)")
    cupyx.scatter_add = scatter_add
    return {"cupy": cupy, "cupy.linalg": linalg, "cupy.random": random, "cupy.cuda": cuda, "cupy.cuda.runtime": runtime,
            "cupy.cuda.driver": driver, "cupyx": cupyx}


MODULES = _make_modules()
_MODULE = MODULES["cupy"]
