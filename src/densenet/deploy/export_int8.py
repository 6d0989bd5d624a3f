"""``densenet export --int8``: our int8 model (:mod:`densenet.deploy.int8`) as an ONNX graph in QDQ form, the same
codes and weights, for ONNX Runtime.

The graph is written node by node from the :class:`~densenet.deploy.int8.QuantizedDenseNet`, not traced: each int8
convolution is ``DequantizeLinear(u8 codes) → Conv(DequantizeLinear(s8 weight, per output channel), DequantizeLinear
(s32 bias)) [→ Relu] → QuantizeLinear(u8)``, the pattern ONNX Runtime fuses into one ``QLinearConv``; the clamp of
the codes is ``Max``/``Min`` on u8 with per-channel bounds; a block's buffer is a ``Concat`` of u8 maps, each with
its own code (which the 1×1 conv's folded weights read, [Q1] in docs/MATH.md — so no ``QLinearConcat``, the op
onnxruntime's own quantizer fails on for DenseNet). The image is quantized with its code, the stem's conv is int8
(the image's zero point as the ``DequantizeLinear`` offset: padding stays a real zero), its max pool on u8; a
transition's average pool of the codes is a depthwise QDQ conv, as ours; the head is float32, as in ours. The bias
is rounded to int32 at the scale ``s_x·σ_o`` (what the QDQ pattern asks for; ours keeps it in float32): the logits
differ from ours by that rounding and by ONNX Runtime's requantization rounding.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from densenet.deploy.export import ExportError, ExportReport
from densenet.deploy.int8 import QConv, QParams, QuantizedDenseBlock, QuantizedDenseNet, QuantizedTransition
from densenet.fileio import atomic_path

if TYPE_CHECKING:
    import onnx

OPSET = 17
# of the largest logit, on the random check images: far from the calibrated ranges, where a code that rounds the
# other way is amplified layer after layer (0.03–0.2 measured on small trained models); a wrong graph is off by ~1
INT8_TOLERANCE = 0.3


class _Graph:
    """Nodes and initializers of the graph being written, with unique names."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def constant(self, prefix: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], **attributes: object) -> str:
        from onnx import helper

        output = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [output], **attributes))
        return output


def _codes(graph: _Graph, x: str, code: QParams) -> str:
    """float → u8 codes."""
    scale = graph.constant("scale", np.array(code.scale, dtype=np.float32))
    zero = graph.constant("zero", np.array(code.zero_point, dtype=np.uint8))
    return graph.node("QuantizeLinear", [x, scale, zero])


def _qconv(graph: _Graph, x: str, conv: QConv) -> str:
    """u8 codes → u8 codes: DQ → Conv(DQ weight, DQ bias) [→ Relu] → Q."""
    x_scale = graph.constant("x_scale", np.array(conv.x_scale, dtype=np.float32))
    zero_u8 = graph.constant("x_zero", np.array(conv.x_zero_point, dtype=np.uint8))
    inputs = graph.node("DequantizeLinear", [x, x_scale, zero_u8])
    weight_scale = conv.weight_scale.numpy().astype(np.float32)
    weight = graph.node("DequantizeLinear", [
        graph.constant("w", conv.weight.contiguous().numpy()), graph.constant("w_scale", weight_scale),
        graph.constant("w_zero", np.zeros(len(weight_scale), dtype=np.int8))], axis=0)
    bias_scale = (conv.x_scale * weight_scale.astype(np.float64))
    bias_codes = np.round(conv.bias.double().numpy() / bias_scale).astype(np.int32)
    bias = graph.node("DequantizeLinear", [
        graph.constant("b", bias_codes), graph.constant("b_scale", bias_scale.astype(np.float32)),
        graph.constant("b_zero", np.zeros(len(weight_scale), dtype=np.int32))], axis=0)
    out = graph.node("Conv", [inputs, weight, bias], strides=[conv.stride] * 2, pads=[conv.padding] * 4)
    if conv.relu:
        out = graph.node("Relu", [out])
    return _codes(graph, out, conv.out)


def _clamp(graph: _Graph, x: str, lo: torch.Tensor, hi: torch.Tensor) -> str:
    low = graph.node("Max", [x, graph.constant("lo", lo.numpy())])
    return graph.node("Min", [low, graph.constant("hi", hi.numpy())])


def _pool(graph: _Graph, x: str, channels: int) -> str:
    """u8 codes → their 2×2 stride-2 average, rounded to u8 codes, as ours (:class:`~densenet.deploy.int8.CodePool`):
    a depthwise QDQ conv, weight code 1 at scale ¼, input and output at scale 1 (ONNX Runtime: one ``QLinearConv``).
    """
    one = graph.constant("one", np.array(1.0, dtype=np.float32))
    zero = graph.constant("zero", np.array(0, dtype=np.uint8))
    weight = graph.node("DequantizeLinear", [
        graph.constant("pool_w", np.ones((channels, 1, 2, 2), dtype=np.int8)),
        graph.constant("pool_scale", np.full(channels, 0.25, dtype=np.float32)),
        graph.constant("pool_zero", np.zeros(channels, dtype=np.int8))], axis=0)
    pooled = graph.node("Conv", [graph.node("DequantizeLinear", [x, one, zero]), weight], strides=[2, 2],
                        group=channels)
    return graph.node("QuantizeLinear", [pooled, one, zero])


def _block(graph: _Graph, x: str, block: QuantizedDenseBlock) -> str:
    maps = [x]
    for index in range(block.num_layers):
        inputs = maps[0] if len(maps) == 1 else graph.node("Concat", maps, axis=1)  # [x_0, …, x_{l−1}]  [F2]
        clamped = _clamp(graph, inputs, getattr(block, f"lo{index}"), getattr(block, f"hi{index}"))
        maps.append(_qconv(graph, _qconv(graph, clamped, block.conv1[index]), block.conv2[index]))
    return graph.node("Concat", maps, axis=1)


def int8_onnx_model(model: QuantizedDenseNet, input_size: int) -> onnx.ModelProto:
    """The QDQ ONNX model of ``model`` for ``input_size × input_size`` images, the batch dimension dynamic."""
    from onnx import TensorProto, helper

    graph = _Graph()
    # the image's codes, the stem's int8 conv, the max pool on the codes (MaxPool takes u8)
    x = _qconv(graph, _codes(graph, "image", model.stem.image), model.stem.conv)
    if model.stem.max_pool:
        x = graph.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    for stage in model.stages:
        if isinstance(stage, QuantizedDenseBlock):
            x = _block(graph, x, stage)
        else:
            assert isinstance(stage, QuantizedTransition)
            x = _qconv(graph, _pool(graph, _clamp(graph, x, stage.lo, stage.hi), stage.pool.channels), stage.conv)
    # σ((a·s)·q + (b − a·s·z)), then the global average and the classifier [F4, F5]
    x = graph.node("Cast", [x], to=TensorProto.FLOAT)
    x = graph.node("Add", [graph.node("Mul", [x, graph.constant("scale5", model.scale5.numpy())]),
                           graph.constant("shift5", model.shift5.numpy())])
    x = graph.node("Flatten", [graph.node("GlobalAveragePool", [graph.node("Relu", [x])])])
    classifier = model.classifier
    logits = graph.node("Gemm", [x, graph.constant("fc_w", classifier.weight.detach().numpy()),
                                 graph.constant("fc_b", classifier.bias.detach().numpy())], transB=1)
    graph.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    channels = model.config.in_chans
    onnx_graph = helper.make_graph(
        graph.nodes, "densenet_int8",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", channels, input_size, input_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", model.config.num_classes])],
        graph.initializers)
    return helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)])


def export_int8_onnx(model: QuantizedDenseNet, path: str | Path, input_size: int | None = None, threads: int = 2,
                     tolerance: float = INT8_TOLERANCE) -> ExportReport:
    """Write :func:`int8_onnx_model` to ``path``, checked: run under ONNX Runtime on a batch of 3 (another size than
    1, the batch dimension is dynamic), its logits within ``tolerance`` of the largest of ours, else nothing is
    written.

    Raises:
        ExportError: ONNX Runtime's logits differ more (the rounding of int32 biases and of ONNX Runtime's
            requantization differ from oneDNN's by a code here and there, not more).
    """
    import onnx

    from densenet.deploy.runtime import onnx_feed, onnx_session

    size = input_size if input_size is not None else model.config.default_input_size
    model.config.check_input_size((size, size), "the int8 export")
    proto = int8_onnx_model(model, size)
    onnx.checker.check_model(proto)
    check = torch.randn(3, model.config.in_chans, size, size, generator=torch.Generator().manual_seed(3))
    with atomic_path(path) as temporary:
        onnx.save(proto, str(temporary))
        session = onnx_session(temporary, threads)
        actual = torch.from_numpy(session.run(None, onnx_feed(session, check))[0])
        expected = model(check)
        max_abs = (actual - expected).abs().max().item()
        max_rel = max_abs / max(expected.abs().max().item(), 1e-12)
        if not max_rel <= tolerance:
            raise ExportError(f"the int8 ONNX model's logits differ from ours by {max_rel:.2e} of the largest "
                              f"(tolerance {tolerance:.0e}); nothing written")
    return ExportReport(Path(path), "onnx-int8", max_abs, max_rel, check.shape[0])
