"""INT8 through ONNX Runtime (runtime/onnx_int8.py): build, cache, concurrency, fallbacks, selection."""

from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from inference_server.runtime import onnx_int8
from inference_server.runtime.model import (
    LoadedModel,
    ModelLoadError,
    encode_ids,
    forward_ids,
    load_model,
    predict_logits,
)
from inference_server.runtime.onnx_int8 import (
    OrtClassifier,
    attention_shape,
    cache_key,
    cached_int8_onnx,
    default_cache_dir,
    open_session,
    optimizer_model_type,
)
from inference_server.runtime.quantization import int8_variant, parse_int8_backend

CLEAR = ["great", "awful", "i love this excellent film", "terrible boring plot", "hate it", "excellent"]


@pytest.fixture(scope="module")
def fp32(tiny_model_dir: Path) -> LoadedModel:
    return load_model(tiny_model_dir, version="t")


def _labels(m: LoadedModel, texts: list[str]) -> list[int]:
    return [int(i) for i in predict_logits(m, texts).argmax(axis=1)]


# --- pure decisions ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("hf_type", "expected"),
    [("bert", "bert"), ("xlm_roberta", "bert"), ("DistilBERT", "bert"), ("gpt_neo", None), ("t5", None)],
)
def test_which_model_types_are_fused(hf_type: str, expected: str | None) -> None:
    assert optimizer_model_type(hf_type) == expected


def test_attention_shape_from_bert_and_distilbert_configs() -> None:
    assert attention_shape({"num_attention_heads": 12, "hidden_size": 384}) == (12, 384)
    assert attention_shape({"n_heads": 4, "dim": 64}) == (4, 64)
    assert attention_shape({}) == (0, 0)


def test_cache_key_changes_with_weights_and_tools() -> None:
    base = cache_key("a" * 64, {"torch": "2.1", "onnxruntime": "1.32"})
    assert base == cache_key("a" * 64, {"onnxruntime": "1.32", "torch": "2.1"})  # order-independent
    assert base != cache_key("b" * 64, {"torch": "2.1", "onnxruntime": "1.32"})
    assert base != cache_key("a" * 64, {"torch": "2.1", "onnxruntime": "1.33"})


def test_default_cache_dir_precedence(tmp_path: Path) -> None:
    assert default_cache_dir({"ONNX_CACHE_DIR": str(tmp_path / "x")}) == tmp_path / "x"
    assert default_cache_dir({"SENTIMENT_CACHE": str(tmp_path)}) == tmp_path / "onnx"
    assert default_cache_dir({}).name == "onnx"


def test_int8_backend_values() -> None:
    assert parse_int8_backend(None) == "onnxruntime" and parse_int8_backend(" Torch ") == "torch"
    with pytest.raises(ValueError, match="INT8_BACKEND"):
        parse_int8_backend("tensorrt")


# --- the served model -------------------------------------------------------------------------------
def test_ort_int8_agrees_with_fp32_on_clear_texts(fp32: LoadedModel, tmp_path: Path) -> None:
    int8 = int8_variant(fp32, backend="onnxruntime", threads=1, cache_dir=tmp_path)
    assert isinstance(int8.model, OrtClassifier) and int8.quantized and not fp32.quantized
    assert _labels(int8, CLEAR) == _labels(fp32, CLEAR) == [1, 0, 1, 0, 0, 1]
    # The server's path (pre-encoded ids, padded batch) and the jobs' path (tokenizer) give the same logits.
    ids = encode_ids(int8, CLEAR)
    np.testing.assert_allclose(forward_ids(int8, ids), predict_logits(int8, CLEAR), atol=1e-4)
    # INT8 moves logits a little (~10% on this tiny model, whose weights are hard to quantize), not a lot.
    reference = forward_ids(fp32, ids)
    assert np.abs(forward_ids(int8, ids) - reference).max() < 0.25 * np.abs(reference).max()


def test_load_model_quantized_defaults_to_onnxruntime_and_env_selects_torch(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.delenv("INT8_BACKEND", raising=False)
    assert isinstance(load_model(tiny_model_dir, quantized=True).model, OrtClassifier)
    monkeypatch.setenv("INT8_BACKEND", "torch")
    q = load_model(tiny_model_dir, quantized=True)
    assert q.quantized and not any(isinstance(x, torch.nn.Linear) for x in q.model.modules())
    assert _labels(q, CLEAR) == [1, 0, 1, 0, 0, 1]
    monkeypatch.setenv("INT8_BACKEND", "gpu")  # a job (no settings object) fails like a bad model would
    with pytest.raises(ModelLoadError, match="INT8_BACKEND"):
        load_model(tiny_model_dir, quantized=True)


def test_second_load_uses_the_cache(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=onnx_int8.__name__):
        onnx_int8.load_int8_session(tiny_model_dir, threads=1, cache_dir=tmp_path)
        first = next(tmp_path.glob("*.onnx"))
        mtime = first.stat().st_mtime_ns
        again = cached_int8_onnx(tiny_model_dir, cache_dir=tmp_path)
        onnx_int8.load_int8_session(tiny_model_dir, threads=1, cache_dir=tmp_path)
    assert not again.built and again.path == first and first.stat().st_mtime_ns == mtime
    events = [getattr(r, "fields", {}).get("from_cache") for r in caplog.records if hasattr(r, "fields")]
    assert events == [False, True]  # start-up says whether it built (and how long) or used the cache
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


@pytest.mark.parametrize("damage", ["truncate", "flip", "digest"])
def test_a_damaged_cache_file_is_rebuilt_not_served(
    tiny_model_dir: Path, tmp_path: Path, fp32: LoadedModel, damage: str
) -> None:
    good = cached_int8_onnx(tiny_model_dir, cache_dir=tmp_path)
    data = good.path.read_bytes()
    if damage == "truncate":
        good.path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # same size, one weight byte changed: still parses, must not be served
        good.path.write_bytes(data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:])
    else:
        good.path.with_name(good.path.name + ".sha256").unlink()
    leftover = tmp_path / f".{good.path.name}.x1y2.partial"  # what a builder killed mid-way leaves
    leftover.write_bytes(b"half")
    rebuilt = cached_int8_onnx(tiny_model_dir, cache_dir=tmp_path)
    assert rebuilt.built and rebuilt.data == good.path.read_bytes()
    assert not leftover.exists()
    session = open_session(rebuilt.data, path=rebuilt.path, threads=1)
    ids = encode_ids(fp32, CLEAR)
    from inference_server.runtime.model import pad_batch

    assert [int(i) for i in session.logits(*pad_batch(ids, 0)).argmax(1)] == _labels(fp32, CLEAR)


def test_concurrent_builders_make_one_valid_file(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds: list[int] = []
    real_build = onnx_int8.build_int8_onnx
    start = threading.Barrier(3)

    def counting_build(model_dir: Path, out: Path, *, allow_fusion: bool = True) -> onnx_int8.BuildInfo:
        builds.append(1)
        return real_build(model_dir, out, allow_fusion=allow_fusion)

    monkeypatch.setattr(onnx_int8, "build_int8_onnx", counting_build)

    def load() -> onnx_int8.CachedOnnx:
        start.wait()
        return cached_int8_onnx(tiny_model_dir, cache_dir=tmp_path)

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: load(), range(3)))
    assert len(builds) == 1 and sorted(r.built for r in results) == [False, False, True]
    assert len({r.data for r in results}) == 1
    assert [p.suffix for p in sorted(tmp_path.glob("int8-*.onnx"))] == [".onnx"]
    open_session(results[0].data, path=results[0].path, threads=1)  # a complete, loadable model


def test_unfused_graph_is_quantized_when_the_type_is_not_fusable(
    tiny_model_dir: Path, tmp_path: Path, fp32: LoadedModel
) -> None:
    out = tmp_path / "unfused.onnx"
    info = onnx_int8.build_int8_onnx(tiny_model_dir, out, allow_fusion=False)
    assert info.fused == {}
    session = open_session(out.read_bytes(), path=out, threads=1)
    from inference_server.runtime.model import pad_batch

    labels = session.logits(*pad_batch(encode_ids(fp32, CLEAR), 0)).argmax(1)
    assert [int(i) for i in labels] == _labels(fp32, CLEAR)


def test_fused_build_reports_fused_operators(tiny_model_dir: Path, tmp_path: Path) -> None:
    info = onnx_int8.build_int8_onnx(tiny_model_dir, tmp_path / "m.onnx")
    assert info.fused.get("Attention", 0) >= 1 and info.fused.get("SkipLayerNormalization", 0) >= 1


# --- errors that name the fix -----------------------------------------------------------------------
def test_missing_onnxruntime_is_a_model_load_error_naming_the_fix(
    fp32: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime → ImportError
    with pytest.raises(ModelLoadError, match=r"onnxruntime.*INT8_BACKEND=torch"):
        int8_variant(fp32, backend="onnxruntime", threads=1, cache_dir=tmp_path)


def test_a_failing_build_is_a_model_load_error_naming_the_fallback(
    fp32: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_export(model_dir: Path, out: Path) -> None:
        raise RuntimeError("unsupported operator aten::frobnicate")

    monkeypatch.setattr(onnx_int8, "export_fp32", broken_export)
    with pytest.raises(ModelLoadError, match=r"frobnicate.*INT8_BACKEND=torch"):
        int8_variant(fp32, backend="onnxruntime", threads=1, cache_dir=tmp_path)
    assert not list(tmp_path.glob("int8-*.onnx")) and not list(tmp_path.glob(".*partial*"))


def test_unusable_cache_dir_is_a_model_load_error_naming_the_variable(
    fp32: LoadedModel, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ModelLoadError, match="ONNX_CACHE_DIR"):
        int8_variant(fp32, backend="onnxruntime", threads=1, cache_dir=blocker / "cache")


def test_a_cache_that_holds_the_file_serves_it_without_a_lock_file(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Built once and shipped read-only (baked into the image, a read-only volume): the lock file cannot
    be created there, and a valid file needs none. Only a build takes the lock."""
    import filelock

    built = cached_int8_onnx(tiny_model_dir, cache_dir=tmp_path)

    def read_only(*_: object, **__: object) -> filelock.FileLock:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(filelock, "FileLock", read_only)
    again = cached_int8_onnx(tiny_model_dir, cache_dir=tmp_path)
    assert not again.built and again.data == built.data and again.path == built.path
    built.path.write_bytes(built.data[:100])  # nothing valid there: building needs the lock, as before
    with pytest.raises(onnx_int8.OnnxInt8Error, match="ONNX_CACHE_DIR"):
        cached_int8_onnx(tiny_model_dir, cache_dir=tmp_path)


def test_a_model_dir_that_changes_during_the_build_is_not_cached(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export re-reads MODEL_PATH after its hash was verified: had a writer changed it meanwhile, the
    file of the other weights would be cached under the verified artifact's key for every later pod."""
    import shutil

    from inference_server.runtime.artifact import sha256_of_artifact

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    verified = sha256_of_artifact(model_dir)

    def export_while_written(src: Path, out: Path, *, allow_fusion: bool = True) -> onnx_int8.BuildInfo:
        (src / "model.safetensors").write_bytes(b"other weights")  # a writer replacing the artifact
        out.write_bytes(b"int8 of the other weights")
        return onnx_int8.BuildInfo({}, 0.0)

    monkeypatch.setattr(onnx_int8, "build_int8_onnx", export_while_written)
    cache = tmp_path / "cache"
    with pytest.raises(onnx_int8.OnnxInt8Error, match=r"MODEL_PATH=.*changed while the INT8 model was built"):
        cached_int8_onnx(model_dir, cache_dir=cache, artifact_sha256=verified)
    assert not list(cache.glob("int8-*.onnx")) and not list(cache.glob(".*partial*"))


def test_the_test_session_never_writes_to_the_user_cache() -> None:
    assert "onnx-cache" in os.environ["ONNX_CACHE_DIR"]


def test_each_thread_runs_on_a_session_with_the_thread_count_it_set(fp32: LoadedModel) -> None:
    """A forward worker's slice runs on a session with its share of the threads, the lone pass on the
    full one, side by side, each from the same bytes and with the same answers."""
    int8 = int8_variant(fp32, backend=parse_int8_backend("onnxruntime"), threads=2)
    classifier = int8.model
    assert isinstance(classifier, OrtClassifier)
    from inference_server.runtime.model import pad_batch, thread_setter

    batch = pad_batch(encode_ids(fp32, CLEAR), 0)
    full = classifier.logits(*batch)  # nothing set: the session it was opened with (2 threads)
    seen: dict[str, int] = {}

    def on_worker(threads: int) -> np.ndarray:
        thread_setter(int8)(threads)
        seen[threading.current_thread().name] = classifier._local.threads
        return classifier.logits(*batch)

    with ThreadPoolExecutor(2, thread_name_prefix="w") as pool:
        one, two = pool.map(on_worker, [1, 2])
    assert sorted(seen.values()) == [1, 2]
    assert sorted(classifier._sessions) == [1, 2]  # one session per count, opened once
    assert classifier._sessions[1].get_session_options().intra_op_num_threads == 1
    np.testing.assert_allclose(one, full, atol=1e-5)
    np.testing.assert_allclose(two, full, atol=1e-5)
    assert getattr(classifier._local, "threads", None) is None  # the caller's thread never chose
