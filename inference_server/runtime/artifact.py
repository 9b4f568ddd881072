"""Content hashing of model artifacts, so a served model is exactly the one that was evaluated."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
# Files that do not change what the model computes and that tools rewrite freely.
_IGNORED_NAMES = frozenset({".DS_Store"})
_IGNORED_DIRS = frozenset({"__pycache__", ".git"})
# At the top level only: huggingface_hub's metadata for `hf download --local-dir` (download times, lock
# files), rewritten by every download of the same weights. Nothing that loads a model reads it.
_IGNORED_TOP_DIRS = frozenset({".cache"})


class ArtifactError(Exception):
    """The artifact is missing, unreadable, or not the one that was expected."""


def _iter_files(root: Path, ignored_top_dirs: frozenset[str]) -> list[Path]:
    files = []
    for path in root.rglob("*"):
        parts = path.relative_to(root).parts
        if parts[0] in ignored_top_dirs or any(part in _IGNORED_DIRS for part in parts):
            continue
        if path.is_file() and path.name not in _IGNORED_NAMES:
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _hash_file_into(digest: hashlib._Hash, path: Path) -> None:
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)


def sha256_of_artifact(path: Path | str, *, _ignored_top_dirs: frozenset[str] = _IGNORED_TOP_DIRS) -> str:
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
    for file in _iter_files(root, _ignored_top_dirs):
        rel = file.relative_to(root).as_posix().encode()
        digest.update(len(rel).to_bytes(4, "big") + rel + file.stat().st_size.to_bytes(8, "big"))
        _hash_file_into(digest, file)
    return digest.hexdigest()


def verify_artifact(path: Path | str, expected_sha256: str) -> str:
    """Return the artifact's sha256, or raise ArtifactError when it is not the expected one."""
    actual = sha256_of_artifact(path)
    # The spelling the server's settings accept (MODEL_SHA256=sha256:AB…), so that a Job given the
    # pod's own value checks the same artifact instead of refusing it.
    expected = expected_sha256.strip().lower().removeprefix("sha256:")
    if actual != expected and _is_legacy_hash(Path(path), expected):
        log.warning(
            "artifact %s matches the expected sha256 only by the previous releases' rule, which also "
            "hashed its .cache/ download metadata; loading it, but re-register the artifact with its "
            "sha256 %s (sentiment-ml registry register) and set that as MODEL_SHA256: the next "
            "download that rewrites .cache/ would have it refused",
            path,
            actual,
            extra={"fields": {"event": "artifact_legacy_hash", "artifact_sha256": actual}},
        )
    elif actual != expected:
        raise ArtifactError(
            f"artifact {path} has sha256 {actual}, expected {expected_sha256}: refusing to serve it"
        )
    return actual


def _is_legacy_hash(root: Path, expected: str) -> bool:
    """Whether ``expected`` is the hash releases before the ``.cache`` rule recorded for ``root``:
    MODEL_SHA256 values and registry entries taken then still name the same weights."""
    return (
        root.is_dir()
        and any((root / name).is_dir() for name in _IGNORED_TOP_DIRS)
        and sha256_of_artifact(root, _ignored_top_dirs=frozenset()) == expected
    )
