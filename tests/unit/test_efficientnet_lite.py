import mxnet as mx
import numpy as np
import pytest

from bundlebuild.efficientnet_lite import _Builder, _widen, same_padding, widened_kernel


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [
        (224, 3, 2, (0, 1)),
        (112, 3, 1, (1, 1)),
        (56, 5, 2, (1, 2)),
        (28, 3, 2, (0, 1)),
        (14, 5, 1, (2, 2)),
        (7, 1, 1, (0, 0)),
    ],
)
def test_tf_same_padding_puts_the_extra_row_bottom_right(
    size: int, kernel: int, stride: int, expected: tuple[int, int]
) -> None:
    assert same_padding(size, kernel, stride) == expected


def test_widened_kernel_rejects_paddings_it_cannot_express() -> None:
    assert widened_kernel(3, 0, 1) == (4, 1)
    with pytest.raises(ValueError):
        widened_kernel(3, 0, 2)


def _conv(explicit_pad: bool, weight: np.ndarray, x: np.ndarray, stride: int) -> np.ndarray:
    builder = _Builder(explicit_pad)
    channels, _, kernel, _ = weight.shape
    groups = x.shape[1] if weight.shape[1] == 1 else 1
    sym = builder.conv_bn(
        mx.sym.var("data"), "_c", "_bn", x.shape[2], channels, kernel, stride, groups, act=False
    )
    params = {
        "c_weight": _widen(weight, builder.sources["c_weight"][1]),
        "bn_gamma": np.ones(channels),
        "bn_beta": np.zeros(channels),
    }
    aux = {"bn_moving_mean": np.zeros(channels), "bn_moving_var": np.ones(channels)}
    exe = sym.bind(
        mx.cpu(),
        args={k: mx.nd.array(v) for k, v in params.items()} | {"data": mx.nd.array(x)},
        aux_states={k: mx.nd.array(v) for k, v in aux.items()},
        grad_req="null",
    )
    return exe.forward(is_train=False)[0].asnumpy()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "depthwise"),
    [(224, 3, 2, False), (56, 5, 2, True), (28, 3, 2, True), (14, 5, 1, True)],
)
def test_widened_kernels_compute_exactly_what_explicit_padding_computes(
    size: int, kernel: int, stride: int, depthwise: bool
) -> None:
    rng = np.random.default_rng(0)
    channels = 8
    x = rng.normal(0, 1, (2, channels, size, size)).astype(np.float32)
    weight = rng.normal(0, 1, (channels, 1 if depthwise else channels, kernel, kernel)).astype(np.float32)
    explicit = _conv(True, weight, x, stride)
    widened = _conv(False, weight, x, stride)
    assert explicit.shape == (2, channels, -(-size // stride), -(-size // stride))
    np.testing.assert_allclose(widened, explicit, rtol=1e-4, atol=1e-4)
