"""Content hashing of model artifacts, so a served model is exactly the one that was evaluated."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20
# Files that do not change what the model computes and that tools rewrite freely.
_IGNORED_NAMES = frozenset({".DS_Store"})
_IGNORED_DIRS = frozenset({"__pycache__", ".git"})
# At the top level only: huggingface_hub's metadata for `hf download --local-dir` (download times, lock
# files), rewritten by every download of the same weights. Nothing that loads a model reads it.
_IGNORED_TOP_DIRS = frozenset({".cache"})


class ArtifactError(Exception):
    """The artifact is missing, unreadable, or not the one that was expected."""


def _iter_files(root: Path) -> list[Path]:
    files = []
    for path in root.rglob("*"):
        parts = path.relative_to(root).parts
        if parts[0] in _IGNORED_TOP_DIRS or any(part in _IGNORED_DIRS for part in parts):
            continue
        if path.is_file() and path.name not in _IGNORED_NAMES:
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _hash_file_into(digest: hashlib._Hash, path: Path) -> None:
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)


def sha256_of_artifact(path: Path | str) -> str:
    """sha256 of a file, or of a directory over its sorted relative paths and contents.

    For a directory the digest covers each file's relative POSIX path, its size and its bytes, so a
    renamed or moved file changes the hash as well as an edited one. Left out: ``.git`` and
    ``__pycache__`` directories and ``.DS_Store`` files anywhere, and the top-level ``.cache`` directory
    (huggingface_hub's download metadata), which tools rewrite without changing the model.
    """
    root = Path(path)
    if not root.exists():
        raise ArtifactError(f"artifact not found: {root}")
    digest = hashlib.sha256()
    if root.is_file():
        _hash_file_into(digest, root)
        return digest.hexdigest()
    for file in _iter_files(root):
        rel = file.relative_to(root).as_posix().encode()
        digest.update(len(rel).to_bytes(4, "big") + rel + file.stat().st_size.to_bytes(8, "big"))
        _hash_file_into(digest, file)
    return digest.hexdigest()


def verify_artifact(path: Path | str, expected_sha256: str) -> str:
    """Return the artifact's sha256, or raise ArtifactError when it is not the expected one."""
    actual = sha256_of_artifact(path)
    # The spelling the server's settings accept (MODEL_SHA256=sha256:AB…), so that a Job given the
    # pod's own value checks the same artifact instead of refusing it.
    if actual != expected_sha256.strip().lower().removeprefix("sha256:"):
        raise ArtifactError(
            f"artifact {path} has sha256 {actual}, expected {expected_sha256}: refusing to serve it"
        )
    return actual
