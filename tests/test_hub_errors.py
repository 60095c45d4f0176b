"""Hub failures name their cause: no network (and the two ways out), a repo that does not exist, a file missing
from a repo, a gated repo, a missing revision. Each is an OSError from Python and exit status 2 with one line
from the command line, within seconds.

Nothing here reaches a real hub: huggingface_hub talks to a small local HTTP server that answers as the hub does
(the X-Error-Code headers its own error parsing reads), to a closed local port (no network), or its calls are
replaced by ones raising its real exception types."""
import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import constants

from tests.hubcache import make_hub_cache
from yoso_np import YosoConfig, YosoForMaskedLM, checkpoint
from yoso_np.checkpoint import resolve_file
from yoso_np.cli import main

ROOT = Path(__file__).resolve().parent.parent
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def closed_port():
    """A local port nobody listens on: connecting is refused at once, as with no network."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers HEAD/GET /<org>/<name>/resolve/<revision>/<file> as the hub does for the repos in ``repos``."""
    repos = {}  # repo id -> {file name: bytes}; "org/gated" answers as a gated repo
    requests = []

    def log_message(self, *args):
        pass

    def answer(self, body):
        self.requests.append((self.command, self.path))
        parts = self.path.lstrip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self.fail(404, "RepoNotFound")
        repo, revision, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        if repo == "org/gated":
            return self.fail(401, "GatedRepo")
        if repo == "org/private":  # a token was sent and the hub does not know it
            if self.headers.get("Authorization") != "Bearer hf_good":
                return self.fail(401, None, "Invalid credentials in Authorization header")
            return self.fail(403, None, "Access to this resource requires a fine-grained permission")
        if repo not in self.repos:
            return self.fail(401, "RepoNotFound")  # the hub hides private repos behind the same answer
        if revision not in ("main", COMMIT):
            return self.fail(404, "RevisionNotFound")
        if name not in self.repos[repo]:
            return self.fail(404, "EntryNotFound")
        data = self.repos[repo][name]
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def fail(self, status, code, message=None):
        self.send_response(status)
        if code is not None:
            self.send_header("X-Error-Code", code)
        if message is not None:
            self.send_header("X-Error-Message", message)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self):
        self.answer(body=False)

    def do_GET(self):
        self.answer(body=True)


def point_hub_at(monkeypatch, endpoint):
    """huggingface_hub reads HF_ENDPOINT once at import: set the constants that were built from it (and skip
    the pause between the two looks at an unreachable hub)."""
    monkeypatch.setattr(checkpoint, "_LOOK_UP_PAUSE", 0.0)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    config = YosoConfig(vocab_size=20, hidden_size=8, num_attention_heads=2, num_hidden_layers=1,
                        intermediate_size=6, max_position_embeddings=10)
    YosoForMaskedLM(config, seed=0).save_pretrained(folder)
    return {name: (folder / name).read_bytes() for name in ("config.json", "model.safetensors")}


@pytest.fixture
def fake_hub(monkeypatch, tiny_repo):
    FakeHub.repos = {"org/tiny": tiny_repo}
    FakeHub.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
    thread.start()
    point_hub_at(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}")
    yield FakeHub
    server.shutdown()
    server.server_close()


@pytest.fixture
def no_hub(monkeypatch):
    point_hub_at(monkeypatch, f"http://127.0.0.1:{closed_port()}")


def timed(fn):
    start = time.perf_counter()
    try:
        fn()
    finally:
        timed.elapsed = time.perf_counter() - start


# ------------------------------------------------------------------------------------------------ no network
def test_no_network_says_so_with_the_two_ways_out_within_seconds(no_hub, tmp_path):
    with pytest.raises(ConnectionError) as info:
        timed(lambda: YosoForMaskedLM.from_pretrained("org/tiny", cache_dir=tmp_path))
    message = str(info.value)
    assert "cannot reach the hub" in message and "config.json of 'org/tiny'" in message
    assert "local folder" in message and "HF_HUB_OFFLINE=1" in message
    assert isinstance(info.value, OSError)
    assert timed.elapsed < 10, f"took {timed.elapsed:.1f} s (huggingface_hub alone retries for 23 s)"


def test_no_network_with_the_file_cached_uses_the_cache(no_hub, tmp_path, tiny_repo):
    make_hub_cache(tmp_path, "org/tiny", tiny_repo)
    timed(lambda: YosoForMaskedLM.from_pretrained("org/tiny", cache_dir=tmp_path))
    assert timed.elapsed < 10


def test_no_network_from_the_command_line_is_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_HOME": str(tmp_path),
           "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_OFFLINE", None)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "yoso_np", "fill-mask", "org/tiny", "a <mask>."],
                          capture_output=True, text=True, env=env, timeout=60)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("yoso-np: error: cannot reach the hub"), proc.stderr
    assert "HF_HUB_OFFLINE=1" in lines[0]
    assert elapsed < 30


# ------------------------------------------------------------------------------------------------ hub answers
def test_a_real_download_through_the_fake_hub(fake_hub, tmp_path, tiny_repo):
    model = YosoForMaskedLM.from_pretrained("org/tiny", cache_dir=tmp_path)
    assert model.config.vocab_size == 20
    assert ("GET", "/org/tiny/resolve/main/model.safetensors") in fake_hub.requests


@pytest.mark.parametrize("repo, filename, revision, error, words", [
    ("org/absent", "config.json", None, OSError, ["'org/absent' does not exist", "private", "token"]),
    ("org/tiny", "tokenizer.json", None, FileNotFoundError, ["tokenizer.json not found for hub repo 'org/tiny'"]),
    ("org/gated", "config.json", None, PermissionError, ["'org/gated' is gated", "token"]),
    ("org/tiny", "config.json", "v9", OSError, ["revision 'v9' not found in hub repo 'org/tiny'"]),
])
def test_hub_answers_name_their_cause(fake_hub, tmp_path, repo, filename, revision, error, words):
    with pytest.raises(error) as info:
        timed(lambda: resolve_file(repo, filename, revision=revision, cache_dir=tmp_path))
    assert type(info.value) is error, type(info.value)
    for word in words:
        assert word in str(info.value)
    assert "cannot reach" not in str(info.value)
    assert timed.elapsed < 10


@pytest.mark.parametrize("token, status", [("hf_bad", "401"), ("hf_good", "403")])
def test_a_token_the_hub_refuses_is_named(fake_hub, tmp_path, capsys, token, status):
    with pytest.raises(PermissionError, match=rf"refused access to config.json of hub repo 'org/private' \({status}\)"):
        resolve_file("org/private", "config.json", cache_dir=tmp_path, token=token)
    assert main(["info", "org/private", "--cache-dir", str(tmp_path), "--token", token]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the token" in err[0] and "invalid or expired" in err[0], err


def test_an_optional_file_missing_from_the_repo_is_none(fake_hub, tmp_path):
    assert resolve_file("org/tiny", "tokenizer.json", cache_dir=tmp_path, required=False) is None


@pytest.mark.parametrize("repo, start", [
    ("org/absent", "yoso-np: error: hub repo 'org/absent' does not exist"),
    ("org/gated", "yoso-np: error: hub repo 'org/gated' is gated"),
])
def test_hub_answers_from_the_command_line(fake_hub, tmp_path, capsys, repo, start):
    assert main(["info", repo, "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(start), err


# ------------------------------------------------------------------------------- huggingface_hub's exceptions
def raising(exc):
    def fail(*args, **kwargs):
        raise exc
    return fail


def connect_error(kind):
    """huggingface_hub's no-network error as its versions raise it: LocalEntryNotFoundError caused by an httpx
    (2.x) or requests (0.x) connection error, or the connection error itself."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    if kind == "httpx2":  # huggingface_hub 2.x's HTTP library
        httpx2 = pytest.importorskip("httpx2")
        cause = httpx2.ConnectError("[Errno -3] Temporary failure in name resolution")
    elif kind == "requests":  # huggingface_hub 0.x's
        requests = pytest.importorskip("requests")
        cause = requests.ConnectionError("Max retries exceeded with url: /org/tiny/resolve/main/config.json")
    else:
        cause = TimeoutError("timed out")
    try:
        raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub") from cause
    except LocalEntryNotFoundError as exc:
        return exc


@pytest.mark.parametrize("kind", ["httpx2", "requests", "timeout"])
@pytest.mark.parametrize("where", ["look-up", "download"])
def test_connection_errors_of_each_http_library_read_as_no_network(monkeypatch, tmp_path, kind, where):
    point_hub_at(monkeypatch, "https://hub.invalid")
    if where == "look-up":
        monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", raising(connect_error(kind)))
    else:  # the look-up passed, the download lost the network
        monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda *a, **k: None)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", raising(connect_error(kind)))
    with pytest.raises(ConnectionError, match="cannot reach the hub"):
        resolve_file("org/tiny", "config.json", cache_dir=tmp_path)
    assert main(["info", "org/tiny", "--cache-dir", str(tmp_path)]) == 2


def test_the_look_up_is_tried_twice_on_a_network_error(monkeypatch, tmp_path):
    point_hub_at(monkeypatch, "https://hub.invalid")
    calls = []

    def flaky(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise connect_error("httpx2")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", flaky)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: "/cached/config.json")
    assert resolve_file("org/tiny", "config.json", cache_dir=tmp_path) == "/cached/config.json"
    assert len(calls) == 2


@pytest.mark.parametrize("exc_name, error", [
    ("RepositoryNotFoundError", OSError),
    ("GatedRepoError", PermissionError),
    ("RemoteEntryNotFoundError", FileNotFoundError),
    ("RevisionNotFoundError", OSError),
])
def test_hub_exception_types_map_to_named_os_errors(monkeypatch, tmp_path, exc_name, error):
    """The same exceptions raised by the download itself (e.g. an older huggingface_hub without the look-up)."""
    from huggingface_hub import errors

    httpx2 = pytest.importorskip("httpx2")

    request = httpx2.Request("HEAD", "https://hub.invalid/org/tiny/resolve/main/config.json")
    exc = getattr(errors, exc_name)("404 Client Error.", response=httpx2.Response(404, request=request))
    point_hub_at(monkeypatch, "https://hub.invalid")
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", raising(exc))
    with pytest.raises(error) as info:
        resolve_file("org/tiny", "config.json", revision="v1", cache_dir=tmp_path)
    assert type(info.value) is error and "org/tiny" in str(info.value)
