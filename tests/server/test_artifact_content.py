"""MODEL_SHA256 covers the model's bytes: a same-size change inside model.safetensors (a retrained or
tampered weight) is refused, and the directory digest is the documented layout, computed here
independently with hashlib (the other sha256 tests compare the function with itself or with "0"×64)."""

from __future__ import annotations

import hashlib
import shutil
import struct
from pathlib import Path

from fastapi.testclient import TestClient

from inference_server import contract as c
from inference_server.app import create_app
from inference_server.runtime.artifact import sha256_of_artifact
from inference_server.serving.lifecycle import Phase

from .conftest import settings_for, wait_phase


def _flip_one_weight_byte(model_dir: Path) -> None:
    """Change one byte of tensor data (after the safetensors header), keeping the file's size and the
    file loadable: only the hash can tell this model from the original."""
    weights = model_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    at = 8 + header_len + (len(data) - 8 - header_len) // 2
    data[at] ^= 0x01
    size = weights.stat().st_size
    weights.write_bytes(bytes(data))
    assert weights.stat().st_size == size


def test_a_same_size_weight_change_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    old = sha256_of_artifact(model)
    _flip_one_weight_byte(model)
    new = sha256_of_artifact(model)
    assert new != old

    fatal: list[str] = []
    app = create_app(settings_for(model, tmp_path / "a", MODEL_SHA256=old), on_fatal=fatal.append)
    with TestClient(app) as client:
        assert wait_phase(app) is Phase.FAILED
        r = client.get(c.Path.READYZ)
        assert r.status_code == 503 and r.json()["error"]["code"] == "artifact_mismatch"
        assert client.post(c.Path.INFER, json={"text": "great"}).status_code == 503
    assert len(fatal) == 1 and old in fatal[0] and new in fatal[0]

    # The changed model itself loads and serves: the hash is the only thing that refused it.
    app = create_app(settings_for(model, tmp_path / "b", MODEL_SHA256=new))
    with TestClient(app) as client:
        assert wait_phase(app) is Phase.READY, app.state.ctx.state.error
        assert client.post(c.Path.INFER, json={"text": "great"}).status_code == 200


def _entry(rel: str, content: bytes) -> bytes:
    name = rel.encode()
    return len(name).to_bytes(4, "big") + name + len(content).to_bytes(8, "big") + content


def test_the_directory_digest_is_the_documented_layout(tmp_path: Path) -> None:
    """sha256 over the files sorted by relative POSIX path, each as: 4-byte big-endian path length,
    the path, 8-byte big-endian size, the bytes."""
    root = tmp_path / "artifact"
    (root / "weights").mkdir(parents=True)
    files = {"config.json": b'{"a": 1}\n', "weights/w.bin": bytes(range(256)) * 3}
    for rel, content in files.items():
        (root / rel).write_bytes(content)
    expected = hashlib.sha256(b"".join(_entry(rel, files[rel]) for rel in sorted(files))).hexdigest()
    assert sha256_of_artifact(root) == expected
    # A single file is hashed as its bytes.
    single = hashlib.sha256(files["weights/w.bin"]).hexdigest()
    assert sha256_of_artifact(root / "weights" / "w.bin") == single
    # A same-size edit of one file's content changes the digest.
    (root / "config.json").write_bytes(b'{"a": 2}\n')
    assert sha256_of_artifact(root) != expected
