import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from bundlebuild.build import WEIGHTS
from bundlebuild.registry import read_pinned
from bundlebuild.torch_legacy import LEGACY_MAGIC, UnsupportedCheckpointError, load_legacy_state_dict


def test_reads_the_real_efficientnet_checkpoint(wheels_dir: Path) -> None:
    state = load_legacy_state_dict(read_pinned(WEIGHTS, wheels_dir))
    assert len(state) == 296
    assert sum(v.size for v in state.values()) == 4_694_073
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_conv_stem.weight"].dtype == np.float32
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    # Real trained weights, not zeros: BN running variances are non-negative and varied.
    var = state["_bn0.running_var"]
    assert (var >= 0).all() and var.std() > 0


def _legacy_file(header_objects: list[object], body: bytes) -> bytes:
    out = io.BytesIO()
    for obj in header_objects:
        pickle.dump(obj, out, protocol=2)
    out.write(body)
    return out.getvalue()


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("echo pwned",))


def test_refuses_foreign_pickle_globals() -> None:
    data = _legacy_file([LEGACY_MAGIC, 1001, {"little_endian": True}, _Evil()], b"")
    with pytest.raises(UnsupportedCheckpointError, match="refusing pickle global"):
        load_legacy_state_dict(data)


def test_refuses_wrong_magic_and_zip_format() -> None:
    with pytest.raises(UnsupportedCheckpointError, match="magic"):
        load_legacy_state_dict(_legacy_file([12345], b""))
    with pytest.raises(UnsupportedCheckpointError):
        load_legacy_state_dict(b"PK\x03\x04 new zip-format checkpoint")


def test_truncated_storage_is_reported(wheels_dir: Path) -> None:
    data = read_pinned(WEIGHTS, wheels_dir)
    with pytest.raises(UnsupportedCheckpointError, match=r"truncated|corrupt|unpack"):
        load_legacy_state_dict(data[: len(data) - 1000])


def test_strided_views_and_offsets_are_honoured() -> None:
    # Hand-made file: one storage of 6 floats, two tensors viewing it (offset, transposed stride).
    from collections import OrderedDict

    class _Storage:  # pickled as the global torch.FloatStorage
        __module__ = "torch"
        __qualname__ = "FloatStorage"

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            return ("storage", _Storage, "k0", "cpu", 6, None) if obj == "STORAGE" else None

    def rebuild(*args: object) -> None: ...

    rebuild.__module__, rebuild.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    state = OrderedDict(
        a=(rebuild, ("STORAGE", 1, (2, 2), (2, 1), False, OrderedDict())),
        t=(rebuild, ("STORAGE", 0, (3, 2), (1, 3), False, OrderedDict())),
    )

    class _Reduce:
        def __init__(self, fn: object, args: object) -> None:
            self.fn, self.args = fn, args

        def __reduce__(self) -> tuple[object, object]:
            return (self.fn, self.args)

    import sys

    sys.modules.setdefault("torch", type(sys)("torch"))
    sys.modules.setdefault("torch._utils", type(sys)("torch._utils"))
    sys.modules["torch"].FloatStorage = _Storage  # type: ignore[attr-defined]
    sys.modules["torch._utils"]._rebuild_tensor_v2 = rebuild  # type: ignore[attr-defined]
    try:
        out = io.BytesIO()
        for obj in (LEGACY_MAGIC, 1001, {"little_endian": True}):
            pickle.dump(obj, out, protocol=2)
        _Pickler(out, protocol=2).dump(OrderedDict((k, _Reduce(*v)) for k, v in state.items()))
        pickle.dump(["k0"], out, protocol=2)
        out.write(struct.pack("<q", 6) + np.arange(6, dtype="<f4").tobytes())
    finally:
        del sys.modules["torch"], sys.modules["torch._utils"]
    tensors = load_legacy_state_dict(out.getvalue())
    assert tensors["a"].tolist() == [[1, 2], [3, 4]]
    assert tensors["t"].tolist() == [[0, 3], [1, 4], [2, 5]]
