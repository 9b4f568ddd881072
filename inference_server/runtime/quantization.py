"""Dynamic INT8: which backend serves it, and the torch variant (Linear weights INT8, activations
quantized per call). The ONNX Runtime variant lives in runtime/onnx_int8.py."""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, cast, get_args

from inference_server.contract import Env

if TYPE_CHECKING:
    from inference_server.runtime.model import LoadedModel

Int8Backend = Literal["onnxruntime", "torch"]
INT8_BACKENDS: Final[tuple[str, ...]] = get_args(Int8Backend)
# ONNX Runtime: fused attention/GELU/LayerNorm kernels plus INT8 matmuls, ~2× torch's dynamic INT8 on
# AVX2 CPUs (docs/reports/quantization.md). torch stays selectable: no build step, no extra packages.
DEFAULT_INT8_BACKEND: Final[Int8Backend] = "onnxruntime"


def normalise_int8_backend(value: str | None) -> str:
    """Case and surrounding blanks do not matter; empty means the default."""
    return (value or "").strip().lower() or DEFAULT_INT8_BACKEND


def parse_int8_backend(value: str | None) -> Int8Backend:
    """INT8_BACKEND's value (empty/None: the default); ValueError naming the variable otherwise."""
    v = normalise_int8_backend(value)
    if v not in INT8_BACKENDS:
        raise ValueError(f"{Env.INT8_BACKEND}: expected one of {', '.join(INT8_BACKENDS)}, got {value!r}")
    return cast(Int8Backend, v)


def int8_backend_from_env(environ: Mapping[str, str] | None = None) -> Int8Backend:
    env = os.environ if environ is None else environ
    return parse_int8_backend(env.get(str(Env.INT8_BACKEND)))


def quantize_dynamic_int8(model: Any) -> Any:
    """A dynamically quantized INT8 copy of `model` (the fp32 original is left untouched).

    Only ``torch.nn.Linear`` is quantized: it holds nearly all of a transformer encoder's FLOPs, and
    embeddings/LayerNorm stay fp32, which keeps accuracy within a fraction of a point.
    """
    import torch

    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, which is not a dependency here and
        # has no CPU dynamic-INT8 path as simple as this one; the API still works and is tested
        # (tests/server/test_quantization.py), so the warning would only be noise in every start-up log.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*")
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor.*deprecated")
        from torch.ao.quantization import quantize_dynamic

        quantized = quantize_dynamic(  # type: ignore[no-untyped-call]
            copy.deepcopy(model).eval(), {torch.nn.Linear}, dtype=torch.qint8, inplace=False
        )
    return quantized.eval()


def int8_variant(
    fp32: LoadedModel,
    *,
    backend: Int8Backend | None = None,
    threads: int | None = None,
    cache_dir: Path | None = None,
) -> LoadedModel:
    """The INT8 copy of a loaded fp32 model, served by `backend` (default: INT8_BACKEND, else ONNX
    Runtime). ``threads``: ONNX Runtime's intra-op threads (default: torch's, as configured)."""
    from inference_server.runtime.model import ModelLoadError

    try:
        chosen = backend or int8_backend_from_env()
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from exc
    if chosen == "torch":
        return dataclasses.replace(fp32, model=quantize_dynamic_int8(fp32.model), quantized=True)

    import torch

    from inference_server.runtime.onnx_int8 import OnnxInt8Error, load_int8_session

    try:
        session = load_int8_session(
            fp32.path,
            threads=threads or torch.get_num_threads(),
            cache_dir=cache_dir,
            artifact_sha256=fp32.sha256,
        )
    except OnnxInt8Error as exc:
        raise ModelLoadError(str(exc)) from exc
    return dataclasses.replace(fp32, model=session, quantized=True)
