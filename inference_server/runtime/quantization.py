"""Dynamic INT8 quantization of a model's Linear layers (weights INT8, activations quantized per call)."""

from __future__ import annotations

import copy
import warnings
from typing import Any


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
