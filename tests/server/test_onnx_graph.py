"""The ONNX model served under enable_quantized_model really computes in INT8: its graph is read, not
only its outputs (fp32-like logits, a `quantized` flag the code sets itself and a smaller file all hold
for an fp32 graph copied under the INT8 name)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
import pytest

from inference_server.runtime import onnx_int8

FLOAT_MATMULS = ("MatMul", "Gemm", "Attention")  # fp32 operators that can carry a weight


@pytest.mark.parametrize("allow_fusion", [True, False], ids=["fused", "unfused"])
def test_the_built_graph_computes_its_weight_matmuls_in_int8(
    tiny_model_dir: Path, tmp_path: Path, allow_fusion: bool
) -> None:
    out = tmp_path / "model.int8.onnx"
    onnx_int8.build_int8_onnx(tiny_model_dir, out, allow_fusion=allow_fusion)
    graph = onnx.load(str(out)).graph
    ops = Counter(node.op_type for node in graph.node)
    assert ops["DynamicQuantizeLinear"] >= 1, ops
    assert ops["MatMulInteger"] + ops["QAttention"] >= 1, ops

    initializers = {t.name: t for t in graph.initializer}
    # No fp32 operator multiplies by a weight: a MatMul left between two activations (the unfused
    # graph's Q·Kᵀ and attention·V) is fine, one reading an initializer is an unquantized layer.
    float_weights = [
        (node.op_type, name)
        for node in graph.node
        if node.op_type in FLOAT_MATMULS
        for name in node.input
        if name in initializers and len(initializers[name].dims) == 2
    ]
    assert float_weights == [], float_weights
    # Every integer matmul's weight operand is an INT8 initializer (per-channel QInt8 weights).
    int8_weights = [
        initializers[node.input[1]]
        for node in graph.node
        if node.op_type == "MatMulInteger" and node.input[1] in initializers
    ]
    assert int8_weights and all(t.data_type == onnx.TensorProto.INT8 for t in int8_weights)
    assert sum(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer) >= 6
