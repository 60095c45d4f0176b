"""Faults while writing: a full disk or a read-only folder during save_pretrained (model, config, tokenizer) or a
fine-tuning checkpoint gives an OSError that says what could not be saved and why, and what was saved there
before is intact and loads. The faults are simulated (a write budget, a refused temporary file) everywhere, and
made real on a small tmpfs where this process may mount one (root on Linux)."""
import errno
import os
import shutil
import subprocess

import numpy as np
import pytest

from yoso_np import Tokenizer, YosoConfig, YosoForMaskedLM, YosoForSequenceClassification, checkpoint
from yoso_np.data import Dataset
from yoso_np.train import TrainingArguments, list_checkpoints, load_checkpoint, SGD, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(seed, **kw):
    config = YosoConfig(vocab_size=30, hidden_size=8, num_attention_heads=2, num_hidden_layers=1, intermediate_size=6,
                        max_position_embeddings=16, **kw)
    return YosoForMaskedLM(config, seed=seed)


def snapshot(folder):
    """Every file in a folder, by name, with its bytes."""
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


class DiskBudget:
    """Binary files opened for writing share ``budget`` bytes; the write that would pass it fails with ENOSPC, as
    on a full disk."""

    def __init__(self, monkeypatch, budget):
        self.left = budget
        real_fdopen = os.fdopen
        budget_owner = self

        class Limited:
            def __init__(self, f):
                self.f = f

            def write(self, data):
                size = memoryview(data).nbytes
                if size > budget_owner.left:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                budget_owner.left -= size
                return self.f.write(data)

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

        def fdopen(fd, mode="r", *args, **kwargs):
            f = real_fdopen(fd, mode, *args, **kwargs)
            return Limited(f) if "w" in mode and "b" in mode else f

        monkeypatch.setattr(os, "fdopen", fdopen)


def read_only(monkeypatch):
    """New files in any folder are refused as on a read-only mount (root ignores chmod, so it is simulated)."""
    def refuse(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), dir)

    monkeypatch.setattr(checkpoint.tempfile, "mkstemp", refuse)


def assert_loads_as(folder, model):
    loaded = YosoForMaskedLM.from_pretrained(folder)
    assert loaded.config.to_dict() == model.config.to_dict()
    for k, w in model.weights.items():
        np.testing.assert_array_equal(loaded.weights[k], w, err_msg=k)


# the old model is 5 kB of weights; budgets that fail before, inside and after the new weights (then on config.json)
@pytest.mark.parametrize("budget", [0, 10, 3000, "all but the config"])
def test_save_pretrained_on_a_full_disk_keeps_the_model_saved_before(tmp_path, monkeypatch, budget):
    old, new = tiny(0), tiny(1, hidden_act="relu")
    old.save_pretrained(tmp_path)
    before = snapshot(tmp_path)
    if budget == "all but the config":
        budget = len(before["model.safetensors"]) + 5
    DiskBudget(monkeypatch, budget)
    with pytest.raises(OSError) as info:
        new.save_pretrained(tmp_path)
    assert info.value.errno == errno.ENOSPC
    assert f"could not save the model to {tmp_path}: No space left on device" in str(info.value)
    assert "unchanged" in str(info.value)
    monkeypatch.undo()
    assert snapshot(tmp_path) == before  # no temporary files left behind either
    assert_loads_as(tmp_path, old)


def test_save_pretrained_into_a_read_only_folder(tmp_path, monkeypatch):
    old = tiny(0)
    old.save_pretrained(tmp_path)
    before = snapshot(tmp_path)
    read_only(monkeypatch)
    with pytest.raises(OSError) as info:
        tiny(1).save_pretrained(tmp_path)
    assert info.value.errno == errno.EROFS and "Read-only file system" in str(info.value)
    assert str(tmp_path) in str(info.value)
    monkeypatch.undo()
    assert snapshot(tmp_path) == before
    assert_loads_as(tmp_path, old)


def test_tokenizer_and_config_saves_are_all_or_nothing(tmp_path, monkeypatch):
    tok = Tokenizer.from_pretrained(os.path.join(ROOT, "tests", "fixtures", "tokenizer"))
    tok.save_pretrained(tmp_path)
    tiny(0).config.save_pretrained(tmp_path)
    before = snapshot(tmp_path)
    tok.model_max_length = 7
    for save, what in ((tok.save_pretrained, "the tokenizer"), (tiny(1, num_hash=8).config.save_pretrained,
                                                                "the config")):
        with monkeypatch.context() as m:
            DiskBudget(m, 200)
            with pytest.raises(OSError, match=f"could not save {what} to .*No space left on device"):
                save(tmp_path)
        assert snapshot(tmp_path) == before
    assert Tokenizer.from_pretrained(tmp_path).model_max_length != 7


def test_saved_files_are_readable_by_others(tmp_path):
    """mkstemp makes 0600 files; a saved model is as readable as a file open() would create."""
    tiny(0).save_pretrained(tmp_path)
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("config.json", "model.safetensors"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask


# -------------------------------------------------------------------------------------------- fine-tuning
def classification_data():
    rng = np.random.default_rng(0)
    rows = [rng.integers(3, 30, rng.integers(4, 9)) for _ in range(8)]
    return Dataset(rows, {"labels": rng.integers(0, 2, 8)}, pad_token_id=1)


def classifier():
    config = YosoConfig(vocab_size=30, hidden_size=8, num_attention_heads=2, num_hidden_layers=1, intermediate_size=6,
                        max_position_embeddings=16)
    return YosoForSequenceClassification(config, seed=0)


@pytest.mark.parametrize("fault, reason", [("full disk", "No space left on device"),
                                           ("read-only", "Read-only file system")])
def test_a_fault_at_a_checkpoint_keeps_the_one_before(tmp_path, monkeypatch, fault, reason):
    out = tmp_path / "run"
    args = dict(output_dir=str(out), epochs=1, batch_size=2, lr=0.01, save_steps=2, quiet=True)
    real_save = checkpoint.save_safetensors

    def second_checkpoint_fails(tensors, path, metadata=None):
        if "checkpoint-4" in os.fspath(path):  # the model of checkpoint 4 is written: its optimizer state fails
            DiskBudget(monkeypatch, 100) if fault == "full disk" else read_only(monkeypatch)
        return real_save(tensors, path, metadata)

    monkeypatch.setattr(checkpoint, "save_safetensors", second_checkpoint_fails)
    with pytest.raises(OSError) as info:
        train(classifier(), classification_data(), args=TrainingArguments(**args))
    message = str(info.value)
    assert info.value.errno == (errno.ENOSPC if fault == "full disk" else errno.EROFS)
    assert f"could not write checkpoint {out / 'checkpoint-4'}: {reason}" in message
    assert "checkpoints saved before" in message and "intact" in message
    monkeypatch.undo()
    assert [step for step, _ in list_checkpoints(out)] == [2]
    assert not [n for n in os.listdir(out) if n.startswith(".")], os.listdir(out)  # no half-written copy
    model = classifier()
    state = load_checkpoint(out / "checkpoint-2", model, SGD(model.weights, lr=0.01, momentum=0.0))
    assert state["global_step"] == 2
    # and the run resumes from it once the fault is gone
    summary = train(classifier(), classification_data(), args=TrainingArguments(**args, resume=True))
    assert summary["global_step"] == 4


# ------------------------------------------------------------------------------------ a real small filesystem
@pytest.fixture
def small_fs(tmp_path):
    """A 256 kB tmpfs, or a skip where this process may not mount one."""
    mount = tmp_path / "fs"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode(errors='replace').strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_real_full_disk_and_read_only_mount(small_fs):
    folder = small_fs / "model"
    old = tiny(0)
    old.save_pretrained(folder)
    before = snapshot(folder)
    free = shutil.disk_usage(small_fs).free
    (small_fs / "filler").write_bytes(b"\0" * max(0, free - 8192))  # 8 kB left: less than the new model needs
    big = YosoForMaskedLM(YosoConfig(vocab_size=300, hidden_size=16, num_attention_heads=2, num_hidden_layers=1,
                                     intermediate_size=8, max_position_embeddings=16), seed=1)
    with pytest.raises(OSError) as info:
        big.save_pretrained(folder)
    assert info.value.errno == errno.ENOSPC and "No space left on device" in str(info.value)
    assert snapshot(folder) == before
    assert_loads_as(folder, old)

    remounted = subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], capture_output=True)
    if remounted.returncode != 0:
        pytest.skip("cannot remount the tmpfs read-only")
    with pytest.raises(OSError) as info:
        tiny(1).save_pretrained(folder)
    assert info.value.errno == errno.EROFS
    assert_loads_as(folder, old)
