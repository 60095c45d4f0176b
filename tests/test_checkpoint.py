"""checkpoint.py: safetensors in and out, the torch-free .bin reader, hub resolution, key matching.

No test here may touch the network: the autouse fixture fails any test that opens a socket.
"""
import json
import os
import pickle
import re
import socket
import struct
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest

from tests.compare import assert_same_bytes
from tests.hubcache import make_hub_cache
from yoso_np import checkpoint
from yoso_np.checkpoint import (CheckpointError, align_state_dict, load_state_dict, read_safetensors, read_torch_bin,
                                resolve_file, save_safetensors)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "bin")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Record and refuse every connection or DNS lookup; a test that tried one fails at teardown."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network use is not allowed in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield attempts
    assert not attempts, f"the test tried to use the network: {attempts}"


def assert_same(got, expected):
    assert sorted(got) == sorted(expected)
    for key in expected:
        assert got[key].dtype == expected[key].dtype, key
        assert got[key].shape == expected[key].shape, key
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def small_state(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "yoso.embeddings.word_embeddings.weight": rng.standard_normal((6, 4)).astype(np.float32),
        "cls.predictions.bias": rng.standard_normal(6).astype(np.float16),
        "yoso.embeddings.position_ids": np.arange(5, dtype=np.int64)[None],
        "mask": np.array([True, False]),
        "scalar": np.array(2.5, dtype=np.float64),
    }


# ------------------------------------------------------------------------------------------------ safetensors


def write_raw_safetensors(path, header, data):
    """A safetensors file from a header dict (or raw header bytes) and the data section, written by hand."""
    header_bytes = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)) + header_bytes + data)


def test_safetensors_round_trip_keeps_dtypes_and_values(tmp_path):
    state = small_state()
    state["big_endian"] = np.arange(3, dtype=">i4")
    state["transposed"] = np.arange(6, dtype=np.float32).reshape(2, 3).T
    path = tmp_path / "model.safetensors"
    save_safetensors(state, path)
    got = read_safetensors(path)
    expected = dict(state, big_endian=np.arange(3, dtype=np.int32))
    assert_same(got, expected)
    assert got["big_endian"].dtype.isnative
    assert os.listdir(tmp_path) == ["model.safetensors"]  # no temporary file left


def test_safetensors_interoperates_with_the_safetensors_library(tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    state = small_state()
    ours = tmp_path / "ours.safetensors"
    save_safetensors(state, ours)
    assert_same(load_file(ours), state)
    with safe_open(ours, "np") as f:
        assert f.metadata() == {"format": "pt"}

    save_safetensors(state, ours, metadata={"format": "np", "note": "x"})
    with safe_open(ours, "np") as f:
        assert f.metadata() == {"format": "np", "note": "x"}

    theirs = tmp_path / "theirs.safetensors"
    save_file(state, theirs, metadata={"format": "pt"})
    assert_same(read_safetensors(theirs), state)


def test_bfloat16_safetensors_written_by_hand_is_widened_to_float32(tmp_path):
    values = np.array([[1.0, -2.5, 3.140625], [0.0, -0.0, 2.0 ** -130]], dtype=np.float32)  # exact in bf16
    bits = (values.view(np.uint32) >> 16).astype("<u2")
    header = {"__metadata__": {"format": "pt"},
              "w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]},
              "b": {"dtype": "F16", "shape": [2], "data_offsets": [12, 16]}}
    path = tmp_path / "model.safetensors"
    write_raw_safetensors(path, header, bits.tobytes() + np.array([1.5, -4], "<f2").tobytes())
    got = read_safetensors(path)
    assert got["w"].dtype == np.float32 and got["b"].dtype == np.float16
    np.testing.assert_array_equal(got["w"], values)

    loaded = load_state_dict(tmp_path)  # default dtype float32
    assert loaded["w"].dtype == np.float32 and loaded["b"].dtype == np.float32
    np.testing.assert_array_equal(loaded["b"], [1.5, -4.0])
    assert load_state_dict(tmp_path, dtype=np.float16)["w"].dtype == np.float16
    assert load_state_dict(tmp_path, dtype=None)["b"].dtype == np.float16


def test_load_state_dict_casts_floats_only(tmp_path):
    save_safetensors(small_state(), tmp_path / "model.safetensors")
    got = load_state_dict(tmp_path)
    assert got["cls.predictions.bias"].dtype == np.float32
    assert got["scalar"].dtype == np.float32
    assert got["yoso.embeddings.position_ids"].dtype == np.int64
    assert got["mask"].dtype == np.bool_
    with pytest.raises(ValueError, match="dtype must be a floating dtype"):
        load_state_dict(tmp_path, dtype=np.int32)


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    save_safetensors({"a": np.ones(3, np.float32)}, path)
    before = path.read_bytes()

    def disk_full(fd):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "fsync", disk_full)
    with pytest.raises(OSError, match="disk full"):
        save_safetensors({"a": np.zeros(1000, np.float32)}, path)
    assert_same_bytes(path.read_bytes(), before, str(path))
    assert os.listdir(tmp_path) == ["model.safetensors"]


@pytest.mark.parametrize("tensors, metadata, message", [
    ({"a": np.array(["x"])}, None, "cannot store"),
    ({"a": np.zeros(2, np.complex64)}, None, "cannot store"),
    ({"a": [1.0, 2.0]}, None, "must be a NumPy or CuPy array"),
    ({"a": np.zeros(2)}, {"format": 1}, "metadata must be a dict of str -> str"),
    ([np.zeros(2)], None, "tensors must be a dict"),
])
def test_save_safetensors_rejects_bad_input(tmp_path, tensors, metadata, message):
    with pytest.raises(TypeError, match=message):
        save_safetensors(tensors, tmp_path / "x.safetensors", metadata=metadata)
    assert os.listdir(tmp_path) == []


GOOD_HEADER = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
GOOD_DATA = np.arange(4, dtype="<f4").tobytes()


@pytest.mark.parametrize("content, message", [
    (b"\x01\x02", "shorter than the 8-byte header size"),
    (struct.pack("<Q", 10 ** 9) + b"{}", "header length 1000000000 is past the end"),
    (struct.pack("<Q", 5) + b"{nope" + GOOD_DATA, "not valid JSON"),
    (struct.pack("<Q", 4) + b"\xff\xfe{}" + GOOD_DATA, "not valid JSON"),
    (struct.pack("<Q", 2) + b"[]", "JSON list, expected an object"),
    ((GOOD_HEADER, GOOD_DATA[:12]), "run past the end of the data .* truncated"),
    (({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}}, GOOD_DATA), "16 bytes of data, but dtype F32"),
    (({"w": {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 16]}}, GOOD_DATA), "need 8"),
    (({"w": {"dtype": "Q8", "shape": [4], "data_offsets": [0, 16]}}, GOOD_DATA), "unknown dtype 'Q8'"),
    (({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, GOOD_DATA), "shape must be a list"),
    (({"w": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}}, GOOD_DATA), "data_offsets must be"),
    (({"w": {"dtype": "F32", "shape": [4]}}, GOOD_DATA), "needs dtype, shape and data_offsets"),
])
def test_corrupt_safetensors_raise_value_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "broken.safetensors"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write_raw_safetensors(path, *content)
    with pytest.raises(ValueError, match=message) as info:
        read_safetensors(path)
    assert str(path) in str(info.value)


def test_truncating_a_saved_file_anywhere_raises_value_error(tmp_path):
    path = tmp_path / "model.safetensors"
    save_safetensors(small_state(), path)
    full = path.read_bytes()
    header_end = 8 + int.from_bytes(full[:8], "little")
    for cut in (0, 7, 8, 20, header_end - 1, header_end + 1, len(full) - 1):
        path.write_bytes(full[:cut])
        if cut < 8:
            expected = f"not a safetensors file \\({cut} bytes, shorter than the 8-byte header size\\)"
        elif cut < header_end:
            expected = f"header length {header_end - 8} is past the end of the file \\({cut} bytes\\): truncated"
        else:
            expected = r"tensor '[\w.]+': data_offsets \[\d+, \d+\] run past the end of the data .*: the file is " \
                       "truncated"
        with pytest.raises(CheckpointError, match=f"^{re.escape(str(path))}: {expected}"):
            read_safetensors(path)


def test_sharded_safetensors_reads_each_shard_once(tmp_path, monkeypatch):
    state = small_state()
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[:2], "model-00002-of-00002.safetensors": names[2:]}
    for shard, keys in shards.items():
        save_safetensors({k: state[k] for k in keys}, tmp_path / shard)
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    reads = []
    real_read = checkpoint.read_safetensors
    monkeypatch.setattr(checkpoint, "read_safetensors", lambda path: reads.append(path) or real_read(path))
    assert_same(load_state_dict(tmp_path, dtype=None), state)
    assert sorted(os.path.basename(p) for p in reads) == sorted(shards)

    # the index names a key that its shard does not hold
    weight_map["not.in.any.shard"] = "model-00001-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=r"missing from this shard: \['not.in.any.shard'\]"):
        load_state_dict(tmp_path)

    (tmp_path / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not a valid sharded-weights index"):
        load_state_dict(tmp_path)


def test_load_state_dict_prefers_safetensors_and_accepts_a_file(tmp_path):
    save_safetensors({"w": np.ones(2, np.float32)}, tmp_path / "model.safetensors")
    (tmp_path / "pytorch_model.bin").write_bytes(open(os.path.join(FIXTURES, "f16.bin"), "rb").read())
    assert list(load_state_dict(tmp_path)) == ["w"]
    assert sorted(load_state_dict(tmp_path / "pytorch_model.bin")) == ["bias", "column", "weight"]


def test_load_state_dict_lists_the_names_tried(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_state_dict(tmp_path)
    for name in checkpoint.WEIGHTS_NAMES:
        assert name in str(info.value)
    assert str(tmp_path) in str(info.value)


# ------------------------------------------------------------------------------------------------- hub cache


@pytest.fixture
def hub(tmp_path):
    """A cache holding org/tiny at 'main' (seed 0 weights) and at 'v2' (seed 1 weights)."""
    cache = tmp_path / "hub"
    for revision, seed in (("main", 0), ("v2", 1)):
        save_safetensors(small_state(seed), tmp_path / f"{revision}.safetensors")
        make_hub_cache(cache, "org/tiny", {"model.safetensors": str(tmp_path / f"{revision}.safetensors"),
                                           "config.json": b'{"model_type": "yoso"}'}, revision=revision)
    return cache


def test_hub_cache_layout_is_what_huggingface_hub_reads(hub, monkeypatch):
    import huggingface_hub.constants

    # even with local_files_only, hf_hub_download 2.4 fetches an agent registry once unless offline mode is on
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    path = huggingface_hub.hf_hub_download("org/tiny", "config.json", cache_dir=hub, local_files_only=True)
    assert open(path, "rb").read() == b'{"model_type": "yoso"}'
    assert huggingface_hub.try_to_load_from_cache("org/tiny", "model.safetensors", cache_dir=hub) is not None
    info = huggingface_hub.scan_cache_dir(hub)
    assert not info.warnings
    (repo,) = info.repos
    assert repo.repo_id == "org/tiny" and repo.repo_type == "model"
    assert {ref for rev in repo.revisions for ref in rev.refs} == {"main", "v2"}
    for rev in repo.revisions:
        assert sorted(f.file_name for f in rev.files) == ["config.json", "model.safetensors"]


def test_hub_cache_accepts_commit_hashes_and_nested_names(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = make_hub_cache(tmp_path, "solo", {"sub/dir/vocab.txt": b"a\nb\n"}, revision=commit)
    assert snapshot == str(tmp_path / "models--solo" / "snapshots" / commit)
    path = huggingface_hub.hf_hub_download("solo", "sub/dir/vocab.txt", revision=commit, cache_dir=tmp_path,
                                           local_files_only=True)
    assert open(path, "rb").read() == b"a\nb\n"


def test_load_state_dict_from_the_hub_cache(hub):
    assert_same(load_state_dict("org/tiny", cache_dir=hub, local_files_only=True, dtype=None), small_state(0))
    v2 = load_state_dict("org/tiny", revision="v2", cache_dir=hub, local_files_only=True, dtype=None)
    assert_same(v2, small_state(1))
    commit = open(hub / "models--org--tiny" / "refs" / "v2").read()
    by_commit = load_state_dict("org/tiny", revision=commit, cache_dir=hub, local_files_only=True, dtype=None)
    assert_same(by_commit, small_state(1))


def test_hf_hub_offline_is_honoured(hub, monkeypatch):
    import huggingface_hub.constants

    # huggingface_hub 2.4 reads HF_HUB_OFFLINE once at import into constants.HF_HUB_OFFLINE
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert huggingface_hub.constants.is_offline_mode()
    assert_same(load_state_dict("org/tiny", cache_dir=hub, dtype=None), small_state(0))
    with pytest.raises(FileNotFoundError, match="offline"):
        load_state_dict("org/absent", cache_dir=hub)


def test_hf_hub_offline_set_after_import_still_keeps_off_the_network(hub, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_file("org/tiny", "config.json", cache_dir=hub).endswith("config.json")
    assert resolve_file("org/tiny", "absent.json", cache_dir=hub, required=False) is None
    # no_network fails this test if huggingface_hub tried a request first


def test_hf_hub_offline_in_a_fresh_process(hub):
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise SystemExit('network used')\n"
        "socket.socket.connect = socket.create_connection = socket.getaddrinfo = refuse\n"
        "from yoso_np.checkpoint import load_state_dict\n"
        f"state = load_state_dict('org/tiny', cache_dir={str(hub)!r})\n"
        "print(sorted(state))\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=REPO_ROOT)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(sorted(small_state(0)))


def test_missing_repo_or_file_gives_a_clear_error_without_network(hub):
    with pytest.raises(FileNotFoundError) as info:
        load_state_dict("org/does-not-exist", cache_dir=hub, local_files_only=True)
    message = str(info.value)
    assert "org/does-not-exist" in message and "model.safetensors" in message and "offline" in message

    with pytest.raises(FileNotFoundError, match=r"tokenizer.json not found for hub repo 'org/tiny' at revision 'v2'"):
        resolve_file("org/tiny", "tokenizer.json", revision="v2", cache_dir=hub, local_files_only=True)
    assert resolve_file("org/tiny", "tokenizer.json", cache_dir=hub, local_files_only=True, required=False) is None
    with pytest.raises(FileNotFoundError, match="neither an existing folder nor a valid hub repo id"):
        load_state_dict("/no/such/folder/anywhere", cache_dir=hub, local_files_only=True)


def test_resolve_file_in_a_local_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_file(tmp_path, "config.json") == str(tmp_path / "config.json")
    assert resolve_file(tmp_path, "vocab.txt", required=False) is None
    with pytest.raises(FileNotFoundError, match=f"vocab.txt not found in the folder {tmp_path}"):
        resolve_file(tmp_path, "vocab.txt")


def test_sharded_bin_checkpoint_through_the_hub_cache(tmp_path):
    folder = os.path.join(FIXTURES, "sharded")
    files = {name: os.path.join(folder, name) for name in os.listdir(folder)}
    make_hub_cache(tmp_path, "org/sharded", files)
    expected = dict(np.load(os.path.join(FIXTURES, "sharded.npz")))
    assert_same(load_state_dict("org/sharded", cache_dir=tmp_path, local_files_only=True), expected)
    assert_same(load_state_dict(folder), expected)


# ------------------------------------------------------------------------------------------------- torch .bin


@pytest.mark.parametrize("name", ["f32", "f16", "bf16", "ints"])
def test_read_torch_bin_matches_the_values_torch_saved(name):
    expected = dict(np.load(os.path.join(FIXTURES, name + ".npz")))
    got = read_torch_bin(os.path.join(FIXTURES, name + ".bin"))
    assert_same(got, expected)
    for array in got.values():
        assert array.flags.writeable and array.flags.c_contiguous and array.dtype.isnative


def _unicode(text):
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(value):
    return b"J" + struct.pack("<i", value)


def _tuple(values):
    return b"(" + b"".join(_int(v) for v in values) + b"t"


def torch_pickle(entries, rebuild="_rebuild_tensor_v2"):
    """A protocol-2 pickle of {name: tensor}, opcode by opcode as torch.save writes it.

    ``entries``: (name, storage class, storage key, storage numel, offset, size, stride[, torch dtype for v3]).
    """
    out = b"\x80\x02}("
    for name, storage_class, key, numel, offset, size, stride, *dtype in entries:
        storage = b"(" + _unicode("storage") + f"ctorch\n{storage_class}\n".encode() + _unicode(key)
        storage += _unicode("cpu") + _int(numel) + b"tQ"
        args = storage + _int(offset) + _tuple(size) + _tuple(stride) + b"\x89" + b"ccollections\nOrderedDict\n)R"
        if dtype:
            args += f"ctorch\n{dtype[0]}\n".encode()
        out += _unicode(name) + f"ctorch._utils\n{rebuild}\n(".encode() + args + b"tR"
    return out + b"u."


def torch_zip(path, data_pkl, storages=(), byteorder=b"little", prefix="archive"):
    """A zip with torch.save's layout: <prefix>/data.pkl, <prefix>/data/<key>, byteorder, version."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{prefix}/data.pkl", data_pkl)
        if byteorder is not None:
            zf.writestr(f"{prefix}/byteorder", byteorder)
        for key, data in dict(storages).items():
            zf.writestr(f"{prefix}/data/{key}", data)
        zf.writestr(f"{prefix}/version", b"3\n")
    return path


def test_hand_made_torch_zip_views_and_byteorder(tmp_path):
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    entries = [("full", "FloatStorage", "0", 12, 0, (3, 4), (4, 1)),
               ("t_slice", "FloatStorage", "0", 12, 1, (3, 2), (1, 4)),
               ("longs", "LongStorage", "1", 3, 0, (3,), (1,))]
    longs = np.array([1, -2, 2 ** 40], dtype=np.int64)
    expected = {"full": base, "t_slice": base.T[1:4, :2].copy(), "longs": longs}
    assert expected["t_slice"].shape == (3, 2)

    little = torch_zip(tmp_path / "little.bin", torch_pickle(entries),
                       {"0": base.astype("<f4").tobytes(), "1": longs.astype("<i8").tobytes()})
    assert_same(read_torch_bin(little), expected)
    big = torch_zip(tmp_path / "big.bin", torch_pickle(entries),
                    {"0": base.astype(">f4").tobytes(), "1": longs.astype(">i8").tobytes()}, byteorder=b"big")
    assert_same(read_torch_bin(big), expected)
    no_record = torch_zip(tmp_path / "old.bin", torch_pickle(entries),
                          {"0": base.tobytes(), "1": longs.tobytes()}, byteorder=None)
    assert_same(read_torch_bin(no_record), expected)


def test_rebuild_tensor_v3_with_untyped_storage(tmp_path):
    half = np.array([1.5, -2.0, 0.25, 8.0], dtype="<f2")
    entries = [("h", "UntypedStorage", "0", 8, 1, (2,), (2,), "float16")]
    path = torch_zip(tmp_path / "v3.bin", torch_pickle(entries, rebuild="_rebuild_tensor_v3"), {"0": half.tobytes()})
    assert_same(read_torch_bin(path), {"h": half[1::2].astype(np.float16)})


@pytest.mark.parametrize("entry, storages, message", [
    (("w", "FloatStorage", "0", 4, 0, (2, 2), (2, 1)), {"0": b"\0" * 12}, "holds 12 bytes.*truncated"),
    (("w", "FloatStorage", "0", 4, 2, (2, 2), (2, 1)), {"0": b"\0" * 16}, "reaches past its storage"),
    (("w", "FloatStorage", "0", 4, 0, (3, 2), (1, 2)), {"0": b"\0" * 16}, "reaches past its storage"),
    (("w", "FloatStorage", "7", 4, 0, (2, 2), (2, 1)), {"0": b"\0" * 16}, "archive/data/7 is missing"),
    (("w", "FloatStorage", "0", 4, -1, (2,), (1,)), {"0": b"\0" * 16}, "bad tensor geometry"),
])
def test_inconsistent_torch_zip_raises_value_error(tmp_path, entry, storages, message):
    path = torch_zip(tmp_path / "bad.bin", torch_pickle([entry]), storages)
    with pytest.raises(ValueError, match=message) as info:
        read_torch_bin(path)
    assert str(path) in str(info.value)


def test_garbage_and_legacy_torch_files_raise_value_error(tmp_path):
    cases = {
        "garbage.bin": (b"definitely not a checkpoint", "not a torch checkpoint"),
        "legacy.bin": (pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + b"rest", "legacy .*re-save it"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=message):
            read_torch_bin(tmp_path / name)

    corrupt_pickle = torch_zip(tmp_path / "pkl.bin", b"\x80\x02}(Xgarbage")
    with pytest.raises(ValueError, match="corrupt torch checkpoint"):
        read_torch_bin(corrupt_pickle)
    not_a_dict = torch_zip(tmp_path / "list.bin", b"\x80\x02]q\x00.")
    with pytest.raises(ValueError, match="holds a list"):
        read_torch_bin(not_a_dict)
    not_tensors = torch_zip(tmp_path / "ints.bin", b"\x80\x02}X\x01\x00\x00\x00aK\x05s.")
    with pytest.raises(ValueError, match="entry 'a' is a int"):
        read_torch_bin(not_tensors)
    no_pickle = tmp_path / "empty.bin"
    with zipfile.ZipFile(no_pickle, "w") as zf:
        zf.writestr("archive/version", b"3\n")
    with pytest.raises(ValueError, match="expected one <name>/data.pkl"):
        read_torch_bin(no_pickle)

    good = open(os.path.join(FIXTURES, "f32.bin"), "rb").read()
    (tmp_path / "cut.bin").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="cut.bin"):
        read_torch_bin(tmp_path / "cut.bin")


def malicious_pickles(marker):
    """Hand-made pickles whose loading would create ``marker`` through os.system, eval or subprocess."""
    m = str(marker)
    return {
        "os.system": f"cos\nsystem\n(S'touch {m}'\ntR.".encode(),
        "posix.system": f"cposix\nsystem\n(S'touch {m}'\ntR.".encode(),
        "builtins.eval": f"cbuiltins\neval\n(S'open({m!r}, \"w\").close()'\ntR.".encode(),
        "subprocess.Popen": f"csubprocess\nPopen\n((S'touch'\nS'{m}'\nltR.".encode(),
        # protocol 4 STACK_GLOBAL, hidden inside a state dict value
        "builtins.exec": (b"\x80\x04}\x8c\x01a\x8c\x08builtins\x8c\x04exec\x93"
                          + b"\x8c" + bytes([len(f"open({m!r}, 'w').close()")]) + f"open({m!r}, 'w').close()".encode()
                          + b"\x85Rs."),
    }


@pytest.mark.parametrize("name", ["os.system", "posix.system", "builtins.eval", "subprocess.Popen", "builtins.exec"])
def test_malicious_pickle_is_refused_without_side_effects(tmp_path, name):
    marker = tmp_path / "pwned"
    payload = malicious_pickles(marker)[name]

    # the payload is real: an unrestricted unpickler runs it
    result = pickle.loads(payload)
    if hasattr(result, "wait"):
        result.wait()
    assert marker.exists()
    marker.unlink()

    path = torch_zip(tmp_path / "evil.bin", payload)
    with pytest.raises(ValueError, match=rf"refusing to unpickle global {name} in .*evil.bin"):
        read_torch_bin(path)
    assert not marker.exists()


def test_malicious_global_inside_a_tensor_entry_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    good = torch_pickle([("w", "FloatStorage", "0", 1, 0, (1,), (1,))])
    evil = good.replace(b"ccollections\nOrderedDict\n)R", f"cos\nsystem\n(S'touch {marker}'\ntR".encode())
    path = torch_zip(tmp_path / "evil.bin", evil, {"0": b"\0" * 4})
    with pytest.raises(ValueError, match="refusing to unpickle global os.system"):
        read_torch_bin(path)
    assert not marker.exists()


@pytest.mark.torch
def test_torch_reads_the_hand_made_zips_and_agrees(tmp_path):
    torch = pytest.importorskip("torch")
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    entries = [("full", "FloatStorage", "0", 12, 0, (3, 4), (4, 1)),
               ("t_slice", "FloatStorage", "0", 12, 1, (3, 2), (1, 4)),
               ("bf", "BFloat16Storage", "1", 2, 0, (2,), (1,))]
    bf = (np.array([1.0, -3.5], np.float32).view(np.uint32) >> 16).astype("<u2")
    path = torch_zip(tmp_path / "hand.bin", torch_pickle(entries), {"0": base.tobytes(), "1": bf.tobytes()})
    theirs = torch.load(path, weights_only=True)
    ours = read_torch_bin(path)
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key].float().numpy())


@pytest.mark.torch
def test_read_torch_bin_and_hand_made_bf16_safetensors_agree_with_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    g = torch.Generator().manual_seed(0)
    state = {"w": torch.randn(4, 5, generator=g).bfloat16().t(), "h": torch.randn(3, generator=g).half(),
             "i": torch.arange(6).reshape(2, 3)[:, 1:], "f": torch.randn(2, 2, generator=g)}
    torch.save(state, tmp_path / "t.bin")
    ours = read_torch_bin(tmp_path / "t.bin")
    for key, value in state.items():
        np.testing.assert_array_equal(ours[key], value.float().numpy() if key == "w" else value.numpy())

    bits = (ours["w"].view(np.uint32) >> 16).astype("<u2")
    write_raw_safetensors(tmp_path / "bf.safetensors",
                          {"w": {"dtype": "BF16", "shape": [5, 4], "data_offsets": [0, 40]}}, bits.tobytes())
    assert torch.equal(load_file(tmp_path / "bf.safetensors")["w"], state["w"])
    np.testing.assert_array_equal(read_safetensors(tmp_path / "bf.safetensors")["w"], ours["w"])


@pytest.mark.gpu
def test_save_safetensors_accepts_cupy_arrays(tmp_path, cupy):
    save_safetensors({"w": cupy.arange(6, dtype=cupy.float32).reshape(2, 3)}, tmp_path / "g.safetensors")
    np.testing.assert_array_equal(read_safetensors(tmp_path / "g.safetensors")["w"], np.arange(6).reshape(2, 3))


# ------------------------------------------------------------------------------------------- align_state_dict

BASE = {"embeddings.word_embeddings.weight": (6, 4), "encoder.layer.0.attention.self.query.weight": (4, 4)}
HEAD_BASE = {"yoso." + k: v for k, v in BASE.items()}
MLM = {**HEAD_BASE, "cls.predictions.bias": (6,), "cls.predictions.transform.dense.weight": (4, 4)}
CLASSIFIER = {**HEAD_BASE, "classifier.out_proj.weight": (2, 4), "classifier.out_proj.bias": (2,)}
CLASSIFIER_HEAD = ("classifier.out_proj.weight", "classifier.out_proj.bias")


def arrays(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


def test_base_checkpoint_into_a_head_model():
    base = arrays(BASE)
    state = dict(base, **{"embeddings.position_ids": np.arange(4)[None], "embeddings.token_type_ids": np.zeros(4)})
    weights, missing = no_warnings(align_state_dict, state, CLASSIFIER, optional_keys=CLASSIFIER_HEAD)
    assert sorted(weights) == sorted(HEAD_BASE)
    assert missing == sorted(CLASSIFIER_HEAD)
    for key in BASE:
        assert weights["yoso." + key] is base[key]


def test_head_checkpoint_into_a_base_model_drops_the_head_with_one_warning():
    mlm = arrays(MLM)
    mlm["yoso.embeddings.position_ids"] = np.arange(4)[None]
    with pytest.warns(UserWarning) as record:
        weights, missing = align_state_dict(mlm, BASE)
    assert len(record) == 1
    assert "cls.predictions.bias" in str(record[0].message)
    assert "cls.predictions.transform.dense.weight" in str(record[0].message)
    assert "position_ids" not in str(record[0].message)
    assert sorted(weights) == sorted(BASE) and missing == []
    assert weights["embeddings.word_embeddings.weight"] is mlm["yoso.embeddings.word_embeddings.weight"]


def test_mlm_checkpoint_into_a_classifier_warns_about_cls_and_reports_the_new_head():
    mlm = arrays(MLM)
    with pytest.warns(UserWarning, match=r"not used by the model: \['cls.predictions.bias', "
                                         r"'cls.predictions.transform.dense.weight'\]"):
        weights, missing = align_state_dict(mlm, CLASSIFIER, optional_keys=CLASSIFIER_HEAD)
    assert sorted(weights) == sorted(HEAD_BASE) and missing == sorted(CLASSIFIER_HEAD)


def test_same_kind_checkpoint_loads_exactly():
    clf = arrays(CLASSIFIER)
    weights, missing = no_warnings(align_state_dict, clf, CLASSIFIER, optional_keys=CLASSIFIER_HEAD)
    assert weights == clf and missing == []


def test_missing_required_weights_are_all_named():
    state = arrays(MLM)
    del state["yoso.encoder.layer.0.attention.self.query.weight"], state["cls.predictions.transform.dense.weight"]
    with pytest.raises(ValueError, match=r"lacks 2 weight\(s\).*\['cls.predictions.transform.dense.weight', "
                                         r"'yoso.encoder.layer.0.attention.self.query.weight'\]"):
        align_state_dict(state, MLM)


def test_wrong_shape_names_the_key_and_both_shapes():
    state = arrays(dict(BASE, **{"embeddings.word_embeddings.weight": (7, 4)}))
    with pytest.raises(ValueError, match=r"'embeddings.word_embeddings.weight' has shape \(7, 4\).*"
                                         r"'yoso.embeddings.word_embeddings.weight' needs \(6, 4\)"):
        align_state_dict(state, MLM, optional_keys=("cls.predictions.bias", "cls.predictions.transform.dense.weight"))


def test_decoder_bias_is_an_alias_and_the_decoder_weight_is_tied():
    state = arrays(MLM)
    bias = state.pop("cls.predictions.bias")
    state["cls.predictions.decoder.bias"] = bias
    state["cls.predictions.decoder.weight"] = state["yoso.embeddings.word_embeddings.weight"]
    weights, missing = no_warnings(align_state_dict, state, MLM)
    assert weights["cls.predictions.bias"] is bias and missing == []
    assert sorted(weights) == sorted(MLM)

    bad = dict(state, **{"cls.predictions.decoder.bias": np.zeros(5, np.float32)})
    with pytest.raises(ValueError, match=r"'cls.predictions.decoder.bias' has shape \(5,\)"):
        align_state_dict(bad, MLM)


def test_a_checkpoint_naming_one_weight_twice_is_refused():
    state = arrays(HEAD_BASE)
    state["embeddings.word_embeddings.weight"] = state["yoso.embeddings.word_embeddings.weight"]
    with pytest.raises(ValueError, match="holds both"):
        align_state_dict(state, BASE)
