"""INT8 through ONNX Runtime: a model directory → a fused, dynamically quantized ONNX file → a session.

Why not torch's dynamic INT8 alone: it quantizes only the Linear layers and leaves attention, GELU and
LayerNorm as separate fp32 kernels, which on an AVX2 CPU without VNNI gains ~1.3× over fp32. ONNX
Runtime's transformer optimizer fuses each encoder layer into a handful of kernels (Attention,
BiasGelu, SkipLayerNormalization) before the graph is quantized, which is where the rest comes from.

Building the file (export → fuse → quantize) takes seconds to minutes, so it is cached on disk, keyed by
the artifact's sha256 and the versions of the tools that made it. The cache is shared between
processes (several server workers, a pod's restarts on an emptyDir): one builder at a time under a file
lock, the file written to a temporary name and renamed, and its own sha256 kept beside it so that a
truncated or damaged file is rebuilt rather than served.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from inference_server.contract import Env
from inference_server.runtime.artifact import sha256_of_artifact
from inference_server.runtime.atomic import write_bytes_atomic

log = logging.getLogger(__name__)

# Bump when the export/fuse/quantize recipe changes: old cache entries then stop matching.
RECIPE_VERSION: Final = "2"
INPUT_NAMES: Final = ("input_ids", "attention_mask")
OUTPUT_NAME: Final = "logits"
OPSET: Final = 17
LOCK_TIMEOUT_S: Final = 1800.0  # a large model's export on a busy CPU; past this, fail loudly
CACHE_ENV: Final = "SENTIMENT_CACHE"  # the project's cache root (as in inference_server.ml.common)
_FILE_MODE: Final = 0o644  # mkstemp makes 0600; a cache other users' processes share must be readable

# Hugging Face model types whose encoder ORT's "bert" fusion recognises (same layer structure: post-LN
# self-attention, GELU feed-forward). Anything else is quantized unfused: slower, still correct.
_BERT_LIKE: Final = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert"})

# ORT's intra-op pool: do idle worker threads spin between kernels? Measured (default model, INT8, 2
# threads, 2-core machine at load average 4-6, one extra CPU-bound process; three rounds, spin off vs on
# back to back): batch 1 p50 7-15 ms off vs 23-36 ms on (p95 15-75 vs 61-69 ms), batch 16
# 26-37 vs 22-27 sentences/s. Spinning threads burn the time slices that the thread holding the work
# needs (the same effect as libgomp's, the "OpenMP" finding in docs/reports/server-benchmark.md), and a
# serving pod always shares its CPUs with its event loop and tokeniser: off.
ALLOW_SPINNING: Final = "0"


class OnnxInt8Error(Exception):
    """The INT8 ONNX model could not be built, cached or opened; the message says what to do."""


# --- pure decisions ---------------------------------------------------------------------------------
def optimizer_model_type(hf_model_type: str) -> str | None:
    """The model_type to give ORT's transformer optimizer, or None when it would not fuse this model."""
    return "bert" if hf_model_type.lower().replace("_", "-") in _BERT_LIKE else None


def attention_shape(config: Mapping[str, Any]) -> tuple[int, int]:
    """(num_heads, hidden_size) from a config.json; (0, 0) lets ORT detect them from the graph."""
    heads = config.get("num_attention_heads", config.get("n_heads", 0))
    hidden = config.get("hidden_size", config.get("dim", 0))
    return int(heads or 0), int(hidden or 0)


def cache_key(artifact_sha256: str, versions: Mapping[str, str]) -> str:
    """What the built file depends on: the weights and the tools (and recipe) that turned them into it."""
    parts = [f"artifact={artifact_sha256}", f"recipe={RECIPE_VERSION}"]
    parts += [f"{name}={versions[name]}" for name in sorted(versions)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def cache_file_name(key: str) -> str:
    return f"int8-{key[:40]}.onnx"


def default_cache_dir(environ: Mapping[str, str]) -> Path:
    """ONNX_CACHE_DIR, else <SENTIMENT_CACHE or ~/.cache/sentiment-rollouts>/onnx."""
    explicit = environ.get(str(Env.ONNX_CACHE_DIR), "").strip()
    if explicit:
        return Path(explicit).expanduser()
    root = environ.get(CACHE_ENV) or str(Path.home() / ".cache" / "sentiment-rollouts")
    return Path(root).expanduser() / "onnx"


def tool_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _require_onnxruntime() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise OnnxInt8Error(
            f"INT8 via ONNX Runtime needs the onnxruntime and onnx packages ({exc}): install the server "
            f"extra (pip install 'sentiment-rollouts[server]') or set {Env.INT8_BACKEND}=torch"
        ) from exc


# --- building the file ------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildInfo:
    fused: dict[str, int]  # fused operator counts (empty when the graph was quantized unfused)
    seconds: float


def export_fp32(model_dir: Path, out: Path) -> None:
    """torch → ONNX with dynamic batch and sequence axes.

    Eager attention: with the default SDPA attention the exported graph hides the attention pattern that
    ORT's fusion looks for, and nothing fuses.
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, local_files_only=True, attn_implementation="eager"
    ).eval()
    dummy = (torch.ones((2, 16), dtype=torch.long), torch.ones((2, 16), dtype=torch.long))
    axes = {"batch": 0, "sequence": 1}
    dynamic = {name: {i: n for n, i in axes.items()} for name in INPUT_NAMES}
    with warnings.catch_warnings(), torch.inference_mode():
        # The TorchScript exporter warns about its own deprecation and traced control flow that is
        # constant for these models; neither is actionable at start-up.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            dummy,
            str(out),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes={**dynamic, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )


def fuse(src: Path, out: Path, config: Mapping[str, Any]) -> dict[str, int] | None:
    """ORT's transformer fusion, or None when this model type is not one it fuses."""
    kind = optimizer_model_type(str(config.get("model_type", "")))
    if kind is None:
        return None
    from onnxruntime.transformers import optimizer

    heads, hidden = attention_shape(config)
    optimized = optimizer.optimize_model(str(src), model_type=kind, num_heads=heads, hidden_size=hidden)
    optimized.save_model_to_file(str(out))
    stats = optimized.get_fused_operator_statistics()
    return {str(k): int(v) for k, v in stats.items() if v}


class _DropOnnxRuntimeInfo(logging.Filter):
    """ORT's quantizer logs a line per tensor through the root logger at INFO, and advises a
    pre-processing pass that ORT's transformer optimizer has already done; keep its other warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "onnxruntime" not in record.pathname:
            return True
        return record.levelno >= logging.WARNING and "pre-processing" not in record.getMessage()


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    f = _DropOnnxRuntimeInfo()
    root = logging.getLogger()
    root.addFilter(f)
    try:
        yield
    finally:
        root.removeFilter(f)


def quantize(src: Path, out: Path) -> None:
    """Dynamic quantization: INT8 weights, activations quantized per call (no calibration data needed).

    Weights per output channel: on the first (one-epoch) default model (rotten_tomatoes test, 1276
    sentences) per-tensor scales cost 0.5 point of macro-F1 (0.8104 vs fp32 0.8157, 96.4% same labels),
    per-channel none (0.8174, 98.4%), at the same batch-32 speed within the noise; reduce_range and
    uint8 weights were worse on both counts. The three-epoch default: −0.51 points, 98.4% same labels
    (docs/reports/quantization.md).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # DefaultTensorType: the fused graph has outputs whose type ORT's shape inference leaves unknown;
    # without a default the quantizer stops with "Unable to find data type for weight_name".
    with _quiet_root_logger():
        quantize_dynamic(
            str(src),
            str(out),
            weight_type=QuantType.QInt8,
            per_channel=True,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def build_int8_onnx(model_dir: Path, out: Path, *, allow_fusion: bool = True) -> BuildInfo:
    """Export, fuse (when the model type allows) and quantize `model_dir` into `out`."""
    _require_onnxruntime()
    t0 = time.perf_counter()
    config = json.loads((model_dir / "config.json").read_text())
    with tempfile.TemporaryDirectory(prefix=f"{out.name}.build-", dir=out.parent) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_fp32(model_dir, fp32)
        fused_path = Path(tmp) / "fused.onnx"
        fused = fuse(fp32, fused_path, config) if allow_fusion else None
        if fused is None:
            log.warning(
                "model type %r is not one ONNX Runtime fuses: quantizing the unfused graph",
                config.get("model_type"),
            )
        quantize(fused_path if fused is not None else fp32, out)
    return BuildInfo(fused or {}, time.perf_counter() - t0)


# --- the on-disk cache ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CachedOnnx:
    path: Path
    data: bytes  # the verified file content (the session is created from these bytes, not the path)
    built: bool  # False: served from the cache
    build: BuildInfo | None


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_verified(path: Path) -> bytes | None:
    """The cached file's bytes when it is complete and unchanged since it was written, else None."""
    try:
        data = path.read_bytes()
        expected = _digest_path(path).read_text().strip()
    except OSError:
        return None
    return data if hashlib.sha256(data).hexdigest() == expected else None


def _remove_leftovers(path: Path) -> None:
    """Temporary files of this entry that a killed builder left behind (we hold its lock: none is live)."""
    for leftover in path.parent.glob(f".{path.name}.*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _build_into_cache(
    model_dir: Path, path: Path, allow_fusion: bool, artifact_sha256: str
) -> tuple[bytes, BuildInfo]:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        try:
            info = build_int8_onnx(model_dir, Path(tmp), allow_fusion=allow_fusion)
        except (OnnxInt8Error, OSError):
            raise
        except Exception as exc:  # exporter/optimizer/quantizer: many error types, one actionable answer
            raise OnnxInt8Error(
                f"building the INT8 ONNX model from {model_dir} failed ({type(exc).__name__}: {exc}); "
                f"set {Env.INT8_BACKEND}=torch to serve torch's dynamic INT8 instead"
            ) from exc
        # The export re-read model_dir, seconds to minutes after its hash (the cache key) was taken: had
        # it changed meanwhile, the file would hold other weights under this artifact's key, and every
        # later pod that verified the right artifact would serve them. One more hash, on a build only.
        now = sha256_of_artifact(model_dir)
        if now != artifact_sha256:
            raise OnnxInt8Error(
                f"{Env.MODEL_PATH}={model_dir} changed while the INT8 model was built from it (sha256 "
                f"{artifact_sha256}, now {now}): refusing to cache or serve it; restart once nothing "
                "writes to the model directory"
            )
        data = Path(tmp).read_bytes()
        os.chmod(tmp, _FILE_MODE)
        # Digest first, then the file: a reader that finds the new file also finds its digest; a crash
        # in between leaves a digest without a matching file, which reads as "rebuild".
        write_bytes_atomic(_digest_path(path), hashlib.sha256(data).hexdigest().encode(), mode=_FILE_MODE)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return data, info


def cached_int8_onnx(
    model_dir: Path,
    *,
    cache_dir: Path,
    artifact_sha256: str | None = None,
    allow_fusion: bool = True,
) -> CachedOnnx:
    """The INT8 ONNX file for `model_dir`: from the cache when a valid one is there, else built now."""
    from filelock import FileLock, Timeout

    _require_onnxruntime()
    sha = (artifact_sha256 or sha256_of_artifact(model_dir)).strip().lower().removeprefix("sha256:")
    versions = tool_versions() | {"fusion": str(allow_fusion)}
    path = cache_dir / cache_file_name(cache_key(sha, versions))
    # Without the lock first: the file is renamed into place after its digest and checked against it, so
    # a reader never takes a half-written file. A cache built once and mounted read-only (baked into
    # the image, a read-only volume) then serves with no lock file to create.
    data = _read_verified(path)
    if data is not None:
        return CachedOnnx(path, data, built=False, build=None)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S)
        with lock:
            data = _read_verified(path)  # another process may have built it while this one waited
            if data is not None:
                return CachedOnnx(path, data, built=False, build=None)
            if path.exists():
                log.warning("cached INT8 model %s is damaged or incomplete: rebuilding it", path)
            _remove_leftovers(path)
            data, info = _build_into_cache(model_dir, path, allow_fusion, sha)
            return CachedOnnx(path, data, built=True, build=info)
    except Timeout as exc:
        raise OnnxInt8Error(
            f"another process has held {exc.lock_file} for {LOCK_TIMEOUT_S:.0f}s while building the INT8 "
            f"model; remove the lock file if that process is gone, or set {Env.ONNX_CACHE_DIR}"
        ) from exc
    except OSError as exc:
        raise OnnxInt8Error(
            f"cannot use the INT8 model cache {cache_dir} ({exc}): set {Env.ONNX_CACHE_DIR} to a writable "
            f"directory (in a pod: an emptyDir volume)"
        ) from exc


# --- running it -------------------------------------------------------------------------------------
class OrtClassifier:
    """ONNX Runtime sessions that map (input_ids, attention_mask) to logits.

    A session's intra-op pool is fixed when it is created, so where torch lets each forward worker
    set its own thread count, this keeps one session per count, opened on first use from the same
    bytes (tens of MB each for MiniLM): ``set_threads`` picks, for the calling thread, the session
    its next ``logits`` call runs on. Sessions are safe to run from several threads at once.
    """

    def __init__(self, session: Any, *, path: Path, data: bytes) -> None:
        self.path = path
        self._data = data  # the model file: sessions for other thread counts are opened from it
        self._threads = int(session.get_session_options().intra_op_num_threads)
        self._sessions: dict[int, Any] = {self._threads: session}
        self._open_lock = threading.Lock()
        self._local = threading.local()
        self._inputs = tuple(i.name for i in session.get_inputs())
        missing = set(self._inputs) - set(INPUT_NAMES)
        if missing:
            raise OnnxInt8Error(f"{path}: unexpected model inputs {sorted(missing)}")

    @property
    def size_bytes(self) -> int:
        return len(self._data)

    def set_threads(self, threads: int) -> None:
        """Run this thread's next passes on a session with ``threads`` intra-op threads."""
        if threads not in self._sessions:
            with self._open_lock:
                if threads not in self._sessions:
                    self._sessions[threads] = _new_session(self._data, threads)
        self._local.threads = threads

    def logits(
        self, input_ids: npt.NDArray[np.int64], attention_mask: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        session = self._sessions[getattr(self._local, "threads", self._threads)]
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        out = session.run([OUTPUT_NAME], {k: feed[k] for k in self._inputs})[0]
        return np.asarray(out, dtype=np.float32)


def session_options(threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    # Sized like torch's pool (runtime/threads.py): all the threads for a pass alone, a forward worker's
    # share for a slice beside others (OrtClassifier.set_threads), never more than the CPU quota.
    so.intra_op_num_threads = max(1, threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", ALLOW_SPINNING)
    so.add_session_config_entry("session.inter_op.allow_spinning", ALLOW_SPINNING)
    so.log_severity_level = 3  # warnings about unused initializers etc. are noise in start-up logs
    return so


def _new_session(data: bytes, threads: int) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(data, session_options(threads), providers=["CPUExecutionProvider"])


def open_session(data: bytes, *, path: Path, threads: int) -> OrtClassifier:
    return OrtClassifier(_new_session(data, threads), path=path, data=data)


def load_int8_session(
    model_dir: Path,
    *,
    threads: int,
    cache_dir: Path | None = None,
    artifact_sha256: str | None = None,
) -> OrtClassifier:
    """A ready ONNX Runtime INT8 classifier for `model_dir` (built or taken from the cache)."""
    directory = cache_dir or default_cache_dir(os.environ)
    cached = cached_int8_onnx(model_dir, cache_dir=directory, artifact_sha256=artifact_sha256)
    fields: dict[str, Any] = {
        "event": "int8_onnx_ready",
        "path": str(cached.path),
        "size_bytes": len(cached.data),
        "from_cache": not cached.built,
        "intra_op_threads": threads,
    }
    if cached.build is not None:
        fields |= {"build_seconds": round(cached.build.seconds, 2), "fused_ops": cached.build.fused}
        log.info(
            "built INT8 ONNX model in %.1fs: %s", cached.build.seconds, cached.path, extra={"fields": fields}
        )
    else:
        log.info("INT8 ONNX model from cache: %s", cached.path, extra={"fields": fields})
    return open_session(cached.data, path=cached.path, threads=threads)
