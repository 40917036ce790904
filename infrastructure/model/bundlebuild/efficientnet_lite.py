"""EfficientNet-Lite0 as an MXNet symbol, with weights mapped from the PyTorch state dict.

Architecture facts (from efficientnet-lite-pytorch 0.1.0): TensorFlow 'SAME' padding
fixed for a 224x224 input, batch-norm epsilon 1e-3, ReLU6, no squeeze-excite, stem
32 and head 1280 channels not scaled.

'SAME' padding is asymmetric for stride 2 (the extra row/column goes bottom/right).
Rather than an explicit ``pad`` op, which the oneDNN subgraph pass does not fuse and
which forces a layout reorder, such a convolution gets a kernel one larger with a
zero first row/column and symmetric padding: the same sums, one fused oneDNN
primitive (``tests`` check the equivalence against an explicit pad).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import mxnet as mx
import numpy as np
import numpy.typing as npt

BN_EPS = 1e-3
IMAGE_SIZE = 224
NUM_CLASSES = 1000
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


@dataclass(frozen=True)
class Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int


# efficientnet_lite_builder.py, lite0: width 1.0, depth 1.0.
LITE0_STAGES = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) for a static input size."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def widened_kernel(kernel: int, before: int, after: int) -> tuple[int, int]:
    """Kernel size and symmetric pad equivalent to an asymmetric (before, after) pad."""
    if after == before:
        return kernel, before
    if after == before + 1:
        return kernel + 1, after
    raise ValueError(f"cannot express padding ({before}, {after}) symmetrically")


class _Builder:
    """Accumulates the symbol and remembers, per MXNet weight, how to derive it."""

    def __init__(self, explicit_pad: bool) -> None:
        self.explicit_pad = explicit_pad
        # mxnet arg name -> (torch name, kernel widening to apply or 0)
        self.sources: dict[str, tuple[str, int]] = {}

    def conv_bn(
        self,
        x: mx.sym.Symbol,
        torch_conv: str,
        torch_bn: str,
        size: int,
        channels: int,
        kernel: int,
        stride: int,
        groups: int,
        act: bool,
    ) -> mx.sym.Symbol:
        name = _mx_name(torch_conv)
        before, after = same_padding(size, kernel, stride)
        if self.explicit_pad and (before or after):
            x = mx.sym.pad(
                x, mode="constant", pad_width=(0, 0, 0, 0, before, after, before, after), name=f"{name}_pad"
            )
            mx_kernel, pad = kernel, 0
        else:
            mx_kernel, pad = widened_kernel(kernel, before, after)
        x = mx.sym.Convolution(
            x,
            num_filter=channels,
            kernel=(mx_kernel, mx_kernel),
            stride=(stride, stride),
            pad=(pad, pad),
            num_group=groups,
            no_bias=True,
            name=name,
        )
        self.sources[f"{name}_weight"] = (f"{torch_conv}.weight", mx_kernel - kernel)
        bn = _mx_name(torch_bn)
        x = mx.sym.BatchNorm(x, eps=BN_EPS, fix_gamma=False, use_global_stats=True, name=bn)
        for mx_suffix, torch_suffix in (
            ("gamma", "weight"),
            ("beta", "bias"),
            ("moving_mean", "running_mean"),
            ("moving_var", "running_var"),
        ):
            self.sources[f"{bn}_{mx_suffix}"] = (f"{torch_bn}.{torch_suffix}", 0)
        if act:
            x = mx.sym.clip(x, a_min=0.0, a_max=6.0, name=f"{bn}_relu6")
        return x


def _mx_name(torch_module: str) -> str:
    return torch_module.replace("._", "_").lstrip("_").replace(".", "_")


def build_symbol(explicit_pad: bool = False) -> tuple[mx.sym.Symbol, dict[str, tuple[str, int]]]:
    """Return the logits symbol (input ``data``, NCHW float32) and its weight sources."""
    b = _Builder(explicit_pad)
    size = IMAGE_SIZE
    x = mx.sym.var("data")
    x = b.conv_bn(x, "_conv_stem", "_bn0", size, STEM_CHANNELS, 3, 2, 1, act=True)
    size = math.ceil(size / 2)
    index = 0
    for stage in LITE0_STAGES:
        for repeat in range(stage.repeats):
            in_ch = stage.in_channels if repeat == 0 else stage.out_channels
            stride = stage.stride if repeat == 0 else 1
            prefix = f"_blocks.{index}"
            inputs = x
            hidden = in_ch * stage.expand
            if stage.expand != 1:
                x = b.conv_bn(x, f"{prefix}._expand_conv", f"{prefix}._bn0", size, hidden, 1, 1, 1, act=True)
            x = b.conv_bn(
                x,
                f"{prefix}._depthwise_conv",
                f"{prefix}._bn1",
                size,
                hidden,
                stage.kernel,
                stride,
                hidden,
                act=True,
            )
            size = math.ceil(size / stride)
            x = b.conv_bn(
                x, f"{prefix}._project_conv", f"{prefix}._bn2", size, stage.out_channels, 1, 1, 1, act=False
            )
            if stride == 1 and in_ch == stage.out_channels:
                x = mx.sym.elemwise_add(x, inputs, name=f"blocks_{index}_add")
            index += 1
    x = b.conv_bn(x, "_conv_head", "_bn1", size, HEAD_CHANNELS, 1, 1, 1, act=True)
    x = mx.sym.Pooling(x, global_pool=True, pool_type="avg", kernel=(1, 1), name="avg_pool")
    x = mx.sym.Flatten(x, name="flatten")
    x = mx.sym.FullyConnected(x, num_hidden=NUM_CLASSES, name="fc")
    b.sources["fc_weight"] = ("_fc.weight", 0)
    b.sources["fc_bias"] = ("_fc.bias", 0)
    return x, b.sources


def _widen(weight: npt.NDArray[np.float32], extra: int) -> npt.NDArray[np.float32]:
    # A zero first row/column shifts the window by one: see the module docstring.
    if extra == 0:
        return weight
    out = np.zeros((*weight.shape[:2], weight.shape[2] + extra, weight.shape[3] + extra), weight.dtype)
    out[:, :, extra:, extra:] = weight
    return out


def map_weights(
    symbol: mx.sym.Symbol, sources: dict[str, tuple[str, int]], state: dict[str, npt.NDArray[np.float32]]
) -> tuple[dict[str, npt.NDArray[np.float32]], dict[str, npt.NDArray[np.float32]]]:
    """Split the torch state dict into MXNet (arg, aux) params; every weight must be used."""
    expected = set(symbol.list_arguments()) - {"data"} | set(symbol.list_auxiliary_states())
    if expected != set(sources):
        raise ValueError(f"symbol/source mismatch: {sorted(expected ^ set(sources))}")
    used = {torch_name for torch_name, _ in sources.values()}
    unused = {k for k in state if k not in used and not k.endswith("num_batches_tracked")}
    missing = used - set(state)
    if unused or missing:
        raise ValueError(f"unmapped weights: unused={sorted(unused)} missing={sorted(missing)}")
    aux_names = set(symbol.list_auxiliary_states())
    args: dict[str, npt.NDArray[np.float32]] = {}
    aux: dict[str, npt.NDArray[np.float32]] = {}
    for mx_name, (torch_name, extra) in sources.items():
        value = _widen(np.ascontiguousarray(state[torch_name], dtype=np.float32), extra)
        (aux if mx_name in aux_names else args)[mx_name] = value
    return args, aux


def check_shapes(symbol: mx.sym.Symbol, args: dict[str, Any], aux: dict[str, Any]) -> None:
    """Fail unless every mapped weight has the shape the symbol infers for it."""
    arg_shapes, _, aux_shapes = symbol.infer_shape(data=(1, 3, IMAGE_SIZE, IMAGE_SIZE))
    inferred = dict(zip(symbol.list_arguments(), arg_shapes, strict=True)) | dict(
        zip(symbol.list_auxiliary_states(), aux_shapes, strict=True)
    )
    for name, value in (args | aux).items():
        if tuple(inferred[name]) != tuple(value.shape):
            raise ValueError(f"{name}: weight shape {value.shape} != symbol shape {inferred[name]}")
