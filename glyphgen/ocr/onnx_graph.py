"""An ONNX graph run with torch ops, so gradients flow through it: the OCR recogniser that RapidOCR
ships as ONNX becomes a frozen torch module for the OCR loss (glyphgen/ocr/recogniser.py).

Only the ops that recogniser uses are implemented; any other op is a one-line error when the graph is
loaded, never a wrong result later. onnx2torch would do this job in general, but it needs
torchvision, and it cannot read graphs whose weights are Constant nodes, which is how PaddleOCR
exports them.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_DTYPES = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 11: torch.float64}


def _conv(x, w, b=None, *, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1, **_):
    if pads[0] != pads[2] or pads[1] != pads[3]:
        x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
        pads = (0, 0, 0, 0)
    return F.conv2d(x, w, b, tuple(strides), (pads[0], pads[1]), tuple(dilations), group)


def _slice(x, starts, ends, axes=None, steps=None):
    axes = list(range(len(starts))) if axes is None else axes.tolist()
    steps = [1] * len(starts) if steps is None else steps.tolist()
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts.tolist(), ends.tolist(), axes, steps, strict=True):
        index[axis] = slice(start, min(end, x.shape[axis]) if end >= 0 else end, step)
    return x[tuple(index)]


def _reshape(x, shape):
    # ONNX: a 0 copies the input's size on that axis
    return x.reshape([x.shape[i] if s == 0 else s for i, s in enumerate(shape.tolist())])


def _clip(x, low=None, high=None, **_):
    return x.clamp(None if low is None else low.item(), None if high is None else high.item())


def _average_pool(x, *, kernel_shape, strides=None, pads=(0, 0, 0, 0), ceil_mode=0, **_):
    return F.avg_pool2d(
        x, tuple(kernel_shape), tuple(strides or kernel_shape), (pads[0], pads[1]), bool(ceil_mode), False
    )


OPS = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": torch.div,
    "Pow": torch.pow,
    "Sqrt": torch.sqrt,
    "Sigmoid": torch.sigmoid,
    "Relu": torch.relu,
    "MatMul": torch.matmul,
    "Conv": _conv,
    "BatchNormalization": lambda x, scale, bias, mean, var, *, epsilon=1e-5, **_: F.batch_norm(
        x, mean, var, scale, bias, False, 0.0, epsilon
    ),
    "Slice": _slice,
    "Reshape": _reshape,
    "Clip": _clip,
    "Cast": lambda x, *, to: x.to(_DTYPES[to]),
    "ReduceMean": lambda x, *, axes, keepdims=1: x.mean(dim=tuple(axes), keepdim=bool(keepdims)),
    "Transpose": lambda x, *, perm: x.permute(*perm),
    "Concat": lambda *xs, axis: torch.cat(xs, axis),
    "Squeeze": lambda x, *, axes: x.squeeze(tuple(axes)),
    "Shape": lambda x: torch.tensor(x.shape, dtype=torch.int64),
    "Softmax": lambda x, *, axis=-1: torch.softmax(x, axis),
    "GlobalAveragePool": lambda x: x.mean(dim=(2, 3), keepdim=True),
    "HardSigmoid": lambda x, *, alpha=0.2, beta=0.5: (alpha * x + beta).clamp(0, 1),
    "AveragePool": _average_pool,
}


class OnnxGraph(nn.Module):
    """A single-input, single-output ONNX graph as a module whose weights are frozen buffers.
    `drop_final_softmax` ends the graph at the logits, for a numerically sound log-softmax."""

    def __init__(self, path: str | Path, drop_final_softmax: bool = False):
        super().__init__()
        import onnx  # only where a graph is really loaded
        from onnx import numpy_helper

        graph = onnx.load(str(path)).graph
        constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.nodes: list[tuple[str, list[str], str, dict]] = []
        for node in graph.node:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "Constant":
                constants[node.output[0]] = numpy_helper.to_array(attrs["value"])
            elif node.op_type in OPS:
                self.nodes.append((node.op_type, list(node.input), node.output[0], attrs))
            else:
                raise ValueError(f"{path}: ONNX op {node.op_type} is not supported")
        self.output = graph.output[0].name
        if drop_final_softmax and self.nodes and self.nodes[-1][0] == "Softmax":
            self.output = self.nodes.pop()[1][0]
        self.input = graph.input[0].name
        self._buffers_of = {}
        for i, (name, array) in enumerate(constants.items()):
            self.register_buffer(f"c{i}", torch.from_numpy(array.copy()), persistent=False)
            self._buffers_of[name] = f"c{i}"

    def forward(self, x: Tensor) -> Tensor:
        values = {self.input: x}

        def value(name: str):
            if not name:
                return None  # an omitted optional input
            return values[name] if name in values else getattr(self, self._buffers_of[name])

        for op, inputs, output, attrs in self.nodes:
            args = [value(name) for name in inputs]
            while args and args[-1] is None:
                args.pop()
            values[output] = OPS[op](*args, **attrs)
        return values[self.output]
