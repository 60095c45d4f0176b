"""Reading and writing YOSO weights exactly as transformers saves them, without torch.

Weights are a flat ``dict[str, np.ndarray]`` keyed by the checkpoint's own names
(``yoso.embeddings.word_embeddings.weight``, ``cls.predictions.bias``, ...).

- ``resolve_file``: a file of a local folder or of a hub repo (through huggingface_hub's cache).
- ``load_state_dict``: model.safetensors, its sharded index, pytorch_model.bin, its sharded index.
- ``read_safetensors`` / ``save_safetensors``: our own parser and writer of the safetensors format
  (BF16 widened to float32 on read, strict checks with errors that name the file).
- ``read_torch_bin``: a ``torch.save`` zip read through a restricted unpickler that can build tensors
  and nothing else.
- ``align_state_dict``: match a checkpoint's names to a model's, as transformers does with the ``yoso.`` prefix.
"""
import collections
import json
import math
import os
import pickle
import tempfile
import warnings
import zipfile

import numpy as np

from yoso_np.backend import to_numpy

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
TORCH_WEIGHTS_NAME = "pytorch_model.bin"
TORCH_WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
WEIGHTS_NAMES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, TORCH_WEIGHTS_NAME, TORCH_WEIGHTS_INDEX_NAME)


class CheckpointError(ValueError):
    """A weights file that is truncated, corrupt, or (for .bin) asks to unpickle something other than tensors."""


def _widen_bfloat16(bits):
    """uint16 arrays holding bfloat16 bit patterns -> float32 (bf16 is the top half of a float32)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


# ----------------------------------------------------------------------------------------------- hub / files


def _offline_from_env():
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    # huggingface_hub reads the variable once at import; a later change of the environment counts too
    return env.strip().upper() in ("1", "ON", "YES", "TRUE") or bool(constants.HF_HUB_OFFLINE)


def resolve_file(path_or_repo_id, filename, *, revision=None, cache_dir=None, local_files_only=False, token=None,
                 required=True):
    """Path of ``filename`` inside a local folder, or inside a hub repo (downloaded or from the local cache).

    Returns None for a missing file when ``required=False``. Otherwise every failure is an OSError that names its
    cause: FileNotFoundError for a file missing from the folder or repo, OSError for a repo or revision that does
    not exist, PermissionError for a gated or private repo without an accepted token, ConnectionError when the
    hub cannot be reached (within seconds, not after huggingface_hub's 23 s of retries). With
    ``local_files_only`` or HF_HUB_OFFLINE set, only the local cache is read and the network is never touched.
    """
    path_or_repo_id = os.fspath(path_or_repo_id)
    if os.path.isdir(path_or_repo_id):
        path = os.path.join(path_or_repo_id, filename)
        if os.path.isfile(path):
            return path
        if required:
            raise FileNotFoundError(f"{filename} not found in the folder {path_or_repo_id}")
        return None

    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import (EntryNotFoundError, GatedRepoError, HFValidationError, LocalEntryNotFoundError,
                                       RepositoryNotFoundError, RevisionNotFoundError, validate_repo_id)

    try:
        validate_repo_id(path_or_repo_id)
    except HFValidationError as exc:
        raise FileNotFoundError(
            f"{path_or_repo_id!r} is neither an existing folder nor a valid hub repo id ({exc})") from None
    offline = local_files_only or _offline_from_env()
    repo = f"hub repo {path_or_repo_id!r}" + (f" at revision {revision!r}" if revision is not None else "")
    try:
        # a pure file-system lookup first: hf_hub_download(local_files_only=True) may still make a request
        # (huggingface_hub 2.4 fetches an agent registry while building its headers)
        cached = try_to_load_from_cache(path_or_repo_id, filename, cache_dir=cache_dir, revision=revision)
        if offline:
            if isinstance(cached, str):
                return cached
            raise LocalEntryNotFoundError(filename)
        return _hub_download(path_or_repo_id, filename, revision=revision, cache_dir=cache_dir, token=token,
                             cached=isinstance(cached, str))
    except GatedRepoError:
        raise PermissionError(
            f"{repo} is gated: accept its conditions on the hub, then log in (hf auth login, or HF_TOKEN) or pass "
            f"token= (--token) for an account that has access") from None
    except RepositoryNotFoundError:
        raise OSError(f"{repo} does not exist, or is private and needs token= (--token) or a login "
                      "(hf auth login, or HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise OSError(f"revision {revision!r} not found in hub repo {path_or_repo_id!r}") from None
    except (EntryNotFoundError, LocalEntryNotFoundError) as exc:
        network = _network_failure(exc)
        if network is not None and not offline:
            raise _unreachable(path_or_repo_id, filename, network) from None
        if not required:
            return None
        where = " in the local cache (offline: the network was not used)" if offline else ""
        raise FileNotFoundError(f"{filename} not found for {repo}{where}") from None
    except Exception as exc:
        network = _network_failure(exc)
        if network is not None:
            raise _unreachable(path_or_repo_id, filename, network) from None
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):  # a token the hub refused (invalid, expired) or one without access
            raise PermissionError(
                f"the hub refused access to {filename} of {repo} ({status}): the token (token=, --token, HF_TOKEN "
                "or hf auth login) is invalid or expired, or lacks access to this repo") from None
        raise


def _hub_download(repo_id, filename, *, revision, cache_dir, token, cached):
    """hf_hub_download, after one quick look at the hub for a file not yet in the cache.

    With no network, hf_hub_download retries a file it does not hold for 23 s (1 + 2 + 4 + 8 + 8 s of backoff)
    and then reports it as not found. The look (a HEAD request, tried twice with 1 s between, each within
    HF_HUB_ETAG_TIMEOUT) fails in about a second instead and names the network; it also answers for a missing
    repo or file without a download attempt. A file in the cache goes straight to hf_hub_download, which falls
    back to the cached copy at once when the hub cannot be reached.
    """
    import huggingface_hub

    if not cached:
        _look_up(repo_id, filename, revision=revision, token=token)
    return huggingface_hub.hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, token=token)


_LOOK_UP_ATTEMPTS, _LOOK_UP_PAUSE = 2, 1.0  # seconds between the attempts


def _look_up(repo_id, filename, *, revision, token):
    import inspect
    import time

    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo_id, filename, revision=revision)
    options = dict(token=token, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    if "retry_on_errors" in inspect.signature(get_hf_file_metadata).parameters:
        options["retry_on_errors"] = False
    for attempt in range(_LOOK_UP_ATTEMPTS):
        try:
            return get_hf_file_metadata(url, **options)
        except Exception as exc:
            if attempt + 1 == _LOOK_UP_ATTEMPTS or _network_failure(exc) is None:
                raise
            time.sleep(_LOOK_UP_PAUSE)


_NETWORK_ERROR_MODULES = ("httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3", "aiohttp")


def _network_failure(exc):
    """The exception in ``exc``'s chain that says the hub could not be reached (DNS, refused or dropped
    connection, timeout, proxy), or None. huggingface_hub reports a missing network as LocalEntryNotFoundError
    ("not found") with the connection error as its cause."""
    import socket

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        kind = type(exc)
        if kind.__name__ == "OfflineModeIsEnabled":
            return None  # not a network failure: offline mode was asked for
        if isinstance(exc, (ConnectionError, TimeoutError, socket.gaierror, socket.timeout)):
            return exc
        if kind.__module__.split(".")[0] in _NETWORK_ERROR_MODULES and any(
                word in k.__name__ for k in kind.__mro__ for word in ("Connect", "Timeout", "Network", "Proxy")):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _unreachable(repo_id, filename, cause):
    from huggingface_hub import constants

    return ConnectionError(
        f"cannot reach the hub ({constants.ENDPOINT}) for {filename} of {repo_id!r}: {type(cause).__name__}: "
        f"{cause}. Without a network, pass a local folder that holds the model's files instead of the repo id, or "
        "set HF_HUB_OFFLINE=1 (or local_files_only=True, --local-files-only) to use a hub cache that holds them")


def load_state_dict(path_or_repo_id, *, revision=None, cache_dir=None, local_files_only=False, token=None,
                    dtype=np.float32):
    """The weights of a folder, hub repo or single weights file as ``{name: np.ndarray}``.

    Tries model.safetensors, model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json in
    that order. Floating arrays are cast to ``dtype`` (``None`` keeps them as stored, bf16 as float32);
    integer arrays are unchanged.
    """
    if dtype is not None and np.dtype(dtype).kind != "f":
        raise ValueError(f"dtype must be a floating dtype or None, got {dtype!r}")
    source = os.fspath(path_or_repo_id)
    hub = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token)

    if os.path.isfile(source):  # a weights file named directly
        folder, name = os.path.split(source)
        state = _load_weights_file(folder or ".", name, source, hub)
    else:
        for name in WEIGHTS_NAMES:
            path = resolve_file(source, name, required=False, **hub)
            if path is not None:
                state = _load_weights_file(source, name, path, hub)
                break
        else:
            offline = not os.path.isdir(source) and (local_files_only or _offline_from_env())
            note = " (offline: only the local cache was searched)" if offline else ""
            raise FileNotFoundError(f"no weights found in {source!r}{note}: tried {', '.join(WEIGHTS_NAMES)}")

    if dtype is not None:
        state = {k: v.astype(dtype, copy=False) if v.dtype.kind == "f" else v for k, v in state.items()}
    return state


def _load_weights_file(source, name, path, hub):
    if name.endswith(".index.json"):
        return _load_sharded(source, path, hub)
    if name.endswith(".safetensors"):
        return read_safetensors(path)
    if name.endswith(".bin"):
        return read_torch_bin(path)
    raise ValueError(f"unknown weights file type {path!r}: expected .safetensors, .bin or .index.json")


def _load_sharded(source, index_path, hub):
    try:
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index_path}: not a valid sharded-weights index ({exc!r})") from None
    state = {}
    for shard in dict.fromkeys(weight_map.values()):  # each shard once, in order of first mention
        shard_path = resolve_file(source, shard, **hub)
        shard_state = (read_safetensors if shard.endswith(".safetensors") else read_torch_bin)(shard_path)
        absent = sorted(k for k, s in weight_map.items() if s == shard and k not in shard_state)
        if absent:
            raise CheckpointError(f"{shard_path}: the index {index_path} lists keys missing from this shard: {absent}")
        state.update(shard_state)
    return state


# -------------------------------------------------------------------------------------------------- safetensors

# safetensors dtype code -> little-endian numpy dtype; BF16 is read as its uint16 bits
_SAFETENSORS_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}
_NUMPY_TO_SAFETENSORS = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items() if k != "BF16"}
_MAX_HEADER = 100 * 1024 * 1024


def read_safetensors(path):
    """All tensors of a .safetensors file as ``{name: np.ndarray}`` (BF16 widened to float32).

    A truncated or corrupt file raises ValueError naming the file and what is wrong.
    """
    path = os.fspath(path)
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        if file_size < 8:
            raise CheckpointError(
                f"{path}: not a safetensors file ({file_size} bytes, shorter than the 8-byte header size)")
        header_size = int.from_bytes(f.read(8), "little")
        if header_size > min(file_size - 8, _MAX_HEADER):
            raise CheckpointError(f"{path}: header length {header_size} is past the end of the file "
                                  f"({file_size} bytes): truncated or not a safetensors file")
        try:
            header = json.loads(f.read(header_size).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise CheckpointError(f"{path}: the header is not valid JSON ({exc})") from None
        except RecursionError:
            raise CheckpointError(f"{path}: the header is not valid JSON (nested too deeply)") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: the header is a JSON {type(header).__name__}, expected an object")
        header.pop("__metadata__", None)
        data_start, data_size = 8 + header_size, file_size - 8 - header_size
        entries = {name: _check_header_entry(path, name, info, data_size) for name, info in header.items()}
        # tensors may not share bytes: each is copied out, so overlapping ones would read (and allocate) the
        # same bytes again and again: n entries over one range would allocate n times its size
        previous_end, previous = 0, None
        for name, (_, _, begin, end) in sorted(entries.items(), key=lambda e: e[1][2:]):
            if begin < previous_end:
                raise CheckpointError(f"{path}: tensors {previous!r} and {name!r} overlap in the data section "
                                      f"(bytes {begin}..{end} start before {previous_end})")
            previous_end, previous = end, name
        tensors = {}
        for name, (dtype, shape, begin, end) in entries.items():
            info = header[name]
            f.seek(data_start + begin)
            array = np.empty(math.prod(shape), dtype=dtype)
            if f.readinto(array.view(np.uint8)) != end - begin:
                raise CheckpointError(f"{path}: tensor {name!r}: the file ended while reading its data")
            array = array.reshape(shape)
            if info["dtype"] == "BF16":
                tensors[name] = _widen_bfloat16(array)
            else:
                tensors[name] = array.astype(dtype.newbyteorder("="), copy=False)
    return tensors


def _check_header_entry(path, name, info, data_size):
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise CheckpointError(f"{where}: header entry needs dtype, shape and data_offsets, got {info!r}")
    if info["dtype"] not in _SAFETENSORS_DTYPES:
        raise CheckpointError(
            f"{where}: unknown dtype {info['dtype']!r}, expected one of {sorted(_SAFETENSORS_DTYPES)}")
    dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
    shape, offsets = info["shape"], info["data_offsets"]
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise CheckpointError(f"{where}: shape must be a list of non-negative ints, got {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise CheckpointError(f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end, got {offsets!r}")
    begin, end = offsets
    if end > data_size:
        raise CheckpointError(f"{where}: data_offsets {offsets} run past the end of the data ({data_size} bytes): "
                              "the file is truncated")
    expected = math.prod(shape) * dtype.itemsize
    if end - begin != expected:
        raise CheckpointError(f"{where}: {end - begin} bytes of data, but dtype {info['dtype']} and shape {shape} "
                              f"need {expected}")
    return dtype, tuple(shape), begin, end


def safetensors_writer(tensors, metadata=None):
    """``write(binary file)`` that writes ``{name: array}`` (NumPy or CuPy) in the safetensors format, checked
    before anything is written. ``metadata`` defaults to ``{"format": "pt"}``, which transformers expects."""
    if not isinstance(tensors, dict):
        raise TypeError(f"tensors must be a dict of name -> array, got {type(tensors).__name__}")
    metadata = {"format": "pt"} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise TypeError(f"metadata must be a dict of str -> str, got {metadata!r}")

    arrays = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"tensor names must be strings other than '__metadata__', got {name!r}")
        array = to_numpy(value)
        if not isinstance(array, np.ndarray):
            raise TypeError(f"tensors[{name!r}] must be a NumPy or CuPy array, got {type(value).__name__}")
        code = _NUMPY_TO_SAFETENSORS.get(array.dtype.newbyteorder("<"))
        if code is None:
            raise TypeError(f"tensors[{name!r}] has dtype {array.dtype}, which safetensors cannot store; "
                            f"expected one of {sorted(str(d) for d in _NUMPY_TO_SAFETENSORS)}")
        arrays[name] = (code, array.astype(_SAFETENSORS_DTYPES[code], order="C", copy=False))

    header, offset = {"__metadata__": metadata}, 0
    for name in sorted(arrays):
        code, array = arrays[name]
        header[name] = {"dtype": code, "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)  # pad so the data starts 8-byte aligned

    def write(f):
        f.write(len(header_bytes).to_bytes(8, "little"))
        f.write(header_bytes)
        for name in sorted(arrays):
            f.write(arrays[name][1].tobytes())

    return write


def save_safetensors(tensors, path, metadata=None):
    """Write ``{name: array}`` (NumPy or CuPy) as a .safetensors file, atomically (temporary file + os.replace).

    ``metadata`` defaults to ``{"format": "pt"}``, which transformers expects.
    """
    path = os.fspath(path)
    write_files({path: safetensors_writer(tensors, metadata)}, what=path)


def _new_file_mode():
    """0666 less the umask, as open() would create the file; the umask is read without changing it (os.umask
    sets it for the whole process, a race with other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = 0o022
    return 0o666 & ~umask


_NEW_FILE_MODE = _new_file_mode()


def write_files(writes, *, what):
    """Write ``{path: write(binary file)}`` so that a failure (full disk, read-only folder, a kill) leaves every
    file as it was: each is written to a temporary file beside it and flushed to disk, and only when all are
    written are they renamed into place (a rename needs no space). On failure the temporary files are removed
    and an OSError of the same errno says what could not be saved (``what``) and why."""
    staged = {}
    try:
        for path, write in writes.items():
            folder = os.path.dirname(os.path.abspath(path))
            os.makedirs(folder, exist_ok=True)
            fd, staged[path] = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
            os.fchmod(fd, _NEW_FILE_MODE)  # mkstemp's 0600 would keep the saved model from other users
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        for path, tmp in list(staged.items()):
            os.replace(tmp, path)
            del staged[path]
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        where = f" ({exc.filename})" if exc.filename else ""
        message = f"could not save {what}: {reason}{where}; the files there before are unchanged"
        error = OSError(exc.errno, message) if exc.errno else OSError(message)  # errno picks the subclass
        error.reason = reason  # for callers that name what they were saving in their own words
        raise error from None
    finally:
        for tmp in staged.values():
            try:
                os.remove(tmp)
            except OSError:
                pass


# ------------------------------------------------------------------------------------------ torch .bin, no torch

_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")

# torch storage class -> numpy dtype of its elements (bf16 kept as uint16 bits until widened)
_TORCH_STORAGES = {
    "DoubleStorage": "f8", "FloatStorage": "f4", "HalfStorage": "f2", "BFloat16Storage": "u2",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?", "UntypedStorage": "u1",
}
_TORCH_DTYPES = {
    "float64": "f8", "float32": "f4", "float16": "f2", "bfloat16": "u2", "int64": "i8", "int32": "i4",
    "int16": "i2", "int8": "i1", "uint8": "u1", "bool": "?",
}


class _TorchType:
    """Stand-in for a torch storage class or torch dtype object named in a pickle."""

    def __init__(self, name, numpy_dtype):
        self.name, self.dtype, self.is_bfloat16 = name, np.dtype(numpy_dtype), name in ("BFloat16Storage", "bfloat16")

    def __repr__(self):
        return f"torch.{self.name}"


class _Storage:
    """A storage loaded from the zip: its bytes, the element type it was saved with, and the byte order."""

    def __init__(self, raw, kind, order):
        self.raw, self.kind, self.order = raw, kind, order


def _rebuild_tensor(storage, storage_offset, size, stride, kind, path):
    """A copy of the strided view torch describes; ``kind`` None means the storage's own element type."""
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"{path}: a tensor refers to {storage!r}, not a storage from the archive")
    kind = kind or storage.kind
    if not all(isinstance(v, int) and v >= 0 for v in (storage_offset, *size, *stride)) or len(size) != len(stride):
        raise CheckpointError(f"{path}: bad tensor geometry offset={storage_offset} size={size} stride={stride}")
    dtype, native = kind.dtype.newbyteorder(storage.order), kind.dtype.newbyteorder("=")
    elements = storage.raw[: storage.raw.size - storage.raw.size % dtype.itemsize].view(dtype)
    if math.prod(size) == 0:
        array = np.zeros(size, dtype=native)
    else:
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= elements.size:
            raise CheckpointError(f"{path}: tensor of size {tuple(size)}, stride {tuple(stride)} at offset "
                                  f"{storage_offset} reaches past its storage of {elements.size} elements")
        if math.prod(size) > elements.size:  # a broadcast view (stride 0): materialised, it could be any size
            raise CheckpointError(f"{path}: tensor of size {tuple(size)} ({math.prod(size)} elements) over a "
                                  f"storage of {elements.size}: a state dict holds no broadcast views")
        view = np.lib.stride_tricks.as_strided(elements[storage_offset:], shape=tuple(size),
                                               strides=tuple(s * dtype.itemsize for s in stride))
        array = np.array(view, dtype=native, order="C")
    return _widen_bfloat16(array) if kind.is_bfloat16 else array


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a tensor state dict; any global other than the few a state dict needs raises ValueError."""

    def __init__(self, file, zip_file, prefix, byteorder, path):
        super().__init__(file)
        self.zip_file, self.prefix, self.byteorder, self.path = zip_file, prefix, byteorder, path
        self.storages = {}

    def find_class(self, module, name):
        path = self.path

        def rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, hooks=None, metadata=None):
            return _rebuild_tensor(storage, storage_offset, size, stride, None, path)

        def rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, hooks, dtype, metadata=None):
            if not isinstance(dtype, _TorchType) or dtype.name in _TORCH_STORAGES:
                raise CheckpointError(f"{path}: _rebuild_tensor_v3 needs a torch dtype, got {dtype!r}")
            return _rebuild_tensor(storage, storage_offset, size, stride, dtype, path)

        def rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
            return data

        allowed = {
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor_v2,
            ("torch._utils", "_rebuild_tensor_v3"): rebuild_tensor_v3,
            ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): rebuild_parameter,
        }
        if (module, name) in allowed:
            return allowed[module, name]
        if module == "torch" and name in _TORCH_STORAGES:
            return _TorchType(name, _TORCH_STORAGES[name])
        if module == "torch" and name in _TORCH_DTYPES:
            return _TorchType(name, _TORCH_DTYPES[name])
        raise CheckpointError(f"refusing to unpickle global {module}.{name} in {self.path}: "
                              "only tensor state dicts can be read")

    def persistent_load(self, saved_id):
        if not (isinstance(saved_id, tuple) and len(saved_id) == 5 and saved_id[0] in ("storage", b"storage")
                and isinstance(saved_id[1], _TorchType) and saved_id[1].name in _TORCH_STORAGES):
            raise CheckpointError(f"{self.path}: unexpected persistent id {saved_id!r}")
        _, kind, key, _location, numel = saved_id
        if not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"{self.path}: bad storage size {numel!r}")
        key = key.decode() if isinstance(key, bytes) else str(key)
        if key not in self.storages:
            record = f"{self.prefix}/data/{key}"
            try:
                info = self.zip_file.getinfo(record)
            except KeyError:
                raise CheckpointError(f"{self.path}: storage record {record} is missing from the archive") from None
            nbytes = numel * kind.dtype.itemsize
            if info.file_size < nbytes:
                raise CheckpointError(f"{self.path}: storage {record} holds {info.file_size} bytes, "
                                      f"{numel} elements of {kind} need {nbytes}: the file is truncated")
            # torch.save stores its records uncompressed; a deflated one may not inflate past a few times the
            # archive (weights hardly compress), so a small file cannot ask for gigabytes
            limit = 4 * os.path.getsize(self.path) + (1 << 20)
            if nbytes > limit:
                raise CheckpointError(f"{self.path}: storage {record} would inflate to {nbytes} bytes from a "
                                      f"{os.path.getsize(self.path)}-byte file: refused as corrupt or hostile")
            with self.zip_file.open(info) as member:
                data = member.read(nbytes)
            if len(data) < nbytes:
                raise CheckpointError(f"{self.path}: storage {record} holds {len(data)} bytes, "
                                      f"{numel} elements of {kind} need {nbytes}: the file is truncated")
            order = "<" if self.byteorder == "little" else ">"
            self.storages[key] = _Storage(np.frombuffer(data, dtype=np.uint8, count=nbytes), kind, order)
        return self.storages[key]


def read_torch_bin(path):
    """Tensors of a ``torch.save`` zip file (pytorch_model.bin) as ``{name: np.ndarray}``, without torch.

    Only what a tensor state dict needs is unpickled; any other global raises ValueError, so a malicious
    file cannot run code. bf16 is widened to float32.
    """
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            start = f.read(len(_LEGACY_TORCH_MAGIC))
        if start == _LEGACY_TORCH_MAGIC:
            raise CheckpointError(f"{path}: a legacy (pre-1.6) torch file; re-save it with a newer torch "
                                  "(torch.save(torch.load(path), path)) or convert it to safetensors")
        raise CheckpointError(f"{path}: not a torch checkpoint (expected a zip archive written by torch.save)")
    try:
        with zipfile.ZipFile(path) as zf:
            pickles = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pickles) != 1:
                raise CheckpointError(f"{path}: expected one <name>/data.pkl record in the archive, found {pickles}")
            prefix = pickles[0][: -len("/data.pkl")]
            byteorder = "little"
            if f"{prefix}/byteorder" in zf.namelist():
                byteorder = zf.read(f"{prefix}/byteorder").decode("ascii", "replace").strip()
                if byteorder not in ("little", "big"):
                    raise CheckpointError(f"{path}: unknown byteorder record {byteorder!r}")
            with zf.open(pickles[0]) as f:
                state = _RestrictedUnpickler(f, zf, prefix, byteorder, path).load()
    except CheckpointError:
        raise
    except Exception as exc:  # garbage inside a zip: bad pickle, CRC error, truncated member, ...
        raise CheckpointError(f"{path}: corrupt torch checkpoint ({type(exc).__name__}: {exc})") from None

    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, expected a state dict of tensors")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, expected a tensor")
    return dict(state)


# ------------------------------------------------------------------------------------------------ key matching

_TIED_DECODER_WEIGHT = "cls.predictions.decoder.weight"
_DECODER_BIAS, _PREDICTIONS_BIAS = "cls.predictions.decoder.bias", "cls.predictions.bias"


def align_state_dict(state, expected_shapes, *, base_prefix="yoso", optional_keys=(),
                     ignored_keys=("embeddings.position_ids", "embeddings.token_type_ids")):
    """Match a checkpoint's keys to the weights a model holds, as transformers does.

    ``expected_shapes`` maps each weight name of the target (named as in its own checkpoint) to its shape.
    A base checkpoint (no ``yoso.`` prefix) loads into a head model and a head checkpoint into a base model.
    Returns ``(weights, missing_optional)``. Wrong shapes and missing required keys raise ValueError;
    leftover checkpoint keys produce one warning.
    """
    dot = base_prefix + "."
    ignored = set(ignored_keys) | {dot + k for k in ignored_keys}
    weights, source_of, unexpected = {}, {}, []
    for key, value in state.items():
        if key in expected_shapes:
            target = key
        elif dot + key in expected_shapes:  # base checkpoint -> head model
            target = dot + key
        elif key.startswith(dot) and key[len(dot):] in expected_shapes:  # head checkpoint -> base model
            target = key[len(dot):]
        else:
            if key not in ignored and key not in (_TIED_DECODER_WEIGHT, _DECODER_BIAS):
                unexpected.append(key)
            continue
        if target in source_of:
            raise ValueError(f"the checkpoint holds both {source_of[target]!r} and {key!r} for weight {target!r}")
        source_of[target], weights[target] = key, value

    if _PREDICTIONS_BIAS in expected_shapes and _PREDICTIONS_BIAS not in weights and _DECODER_BIAS in state:
        # the same parameter under its other name
        source_of[_PREDICTIONS_BIAS], weights[_PREDICTIONS_BIAS] = _DECODER_BIAS, state[_DECODER_BIAS]

    for key, value in weights.items():
        if tuple(value.shape) != tuple(expected_shapes[key]):
            raise ValueError(f"checkpoint weight {source_of[key]!r} has shape {tuple(value.shape)}, "
                             f"but the model's {key!r} needs {tuple(expected_shapes[key])}")

    optional = set(optional_keys)
    absent = sorted(set(expected_shapes) - set(weights))
    missing_required = [k for k in absent if k not in optional]
    if missing_required:
        raise ValueError(f"the checkpoint lacks {len(missing_required)} weight(s) the model needs: {missing_required}")
    if unexpected:
        warnings.warn(f"checkpoint weights not used by the model: {sorted(unexpected)}", stacklevel=2)
    return weights, [k for k in absent if k in optional]
