"""Build a real huggingface_hub cache folder from local files or bytes, for tests that must not use the network.

    snapshot = make_hub_cache(tmp_path, "org/name", {"config.json": b"{}", "model.safetensors": "/path/to/file"})
    hf_hub_download("org/name", "config.json", cache_dir=tmp_path, local_files_only=True)  # finds it

Layout (as huggingface_hub writes it): ``<cache>/models--org--name/blobs/<sha256>``,
``snapshots/<40-hex commit>/<file>`` (a relative symlink to the blob, or a copy where symlinks are not
allowed) and ``refs/<revision>`` holding the commit hash. Calling it again for another revision adds a snapshot.
"""
import hashlib
import os
import shutil

REPO_TYPE_FOLDERS = {"model": "models", "dataset": "datasets", "space": "spaces"}


def _is_commit_hash(revision):
    return len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)


def make_hub_cache(cache_dir, repo_id, files, revision="main", repo_type="model"):
    """Put ``files`` (``{name_in_repo: local path (str/PathLike) or bytes}``) in the cache as ``revision``.

    Returns the snapshot folder. ``revision`` is a branch or tag name (written to refs/) or a 40-hex commit.
    """
    if repo_type not in REPO_TYPE_FOLDERS:
        raise ValueError(f"repo_type must be one of {sorted(REPO_TYPE_FOLDERS)}, got {repo_type!r}")
    if not files:
        raise ValueError("files must name at least one file")
    contents = {}
    for name, source in files.items():
        if isinstance(source, bytes):
            contents[name] = source
        elif isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                contents[name] = f.read()
        else:
            raise TypeError(f"files[{name!r}] must be a local path or bytes, got {type(source).__name__}")

    if _is_commit_hash(revision):
        commit = revision
    else:  # a made-up but stable commit for this revision and content
        digest = hashlib.sha1(f"{repo_type}/{repo_id}@{revision}".encode())
        for name in sorted(contents):
            digest.update(name.encode() + b"\0" + hashlib.sha256(contents[name]).digest())
        commit = digest.hexdigest()

    repo_folder = os.path.join(os.fspath(cache_dir),
                               "--".join([REPO_TYPE_FOLDERS[repo_type], *repo_id.split("/")]))
    snapshot = os.path.join(repo_folder, "snapshots", commit)
    os.makedirs(os.path.join(repo_folder, "blobs"), exist_ok=True)
    for name, data in contents.items():
        blob = os.path.join(repo_folder, "blobs", hashlib.sha256(data).hexdigest())
        if not os.path.exists(blob):
            with open(blob, "wb") as f:
                f.write(data)
        pointer = os.path.join(snapshot, *name.split("/"))
        os.makedirs(os.path.dirname(pointer), exist_ok=True)
        if os.path.lexists(pointer):
            os.remove(pointer)
        try:
            os.symlink(os.path.relpath(blob, os.path.dirname(pointer)), pointer)
        except OSError:  # no symlinks here (e.g. Windows without developer mode): huggingface_hub copies too
            shutil.copyfile(blob, pointer)

    if not _is_commit_hash(revision):
        ref = os.path.join(repo_folder, "refs", *revision.split("/"))
        os.makedirs(os.path.dirname(ref), exist_ok=True)
        with open(ref, "w") as f:
            f.write(commit)  # no newline, as huggingface_hub writes it
    return snapshot
