"""Read a PyTorch legacy (pre-1.6, non-zip) ``.pth`` state dict without PyTorch.

The legacy format is a run of pickles: magic number, protocol version, system
info, the state dict (tensors refer to storages through persistent ids), the list
of storage keys; then each storage as an 8-byte little-endian element count
followed by its raw little-endian bytes. Only the handful of globals such a file
needs are resolved; anything else is refused, so a hostile file cannot run code.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import numpy.typing as npt

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class UnsupportedCheckpointError(ValueError):
    """The file is not a legacy PyTorch checkpoint this reader accepts."""


@dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype[Any]


@dataclass
class _TensorRef:
    key: str
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(
    storage_key: str, offset: int, shape: tuple[int, ...], stride: tuple[int, ...], *_unused: Any
) -> _TensorRef:
    return _TensorRef(storage_key, offset, tuple(shape), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file)
        self.storages: dict[str, tuple[np.dtype[Any], int]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) in {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")}:
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise UnsupportedCheckpointError(f"refusing pickle global {module}.{name}")

    def persistent_load(self, pid: Any) -> str:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsupportedCheckpointError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise UnsupportedCheckpointError(f"unexpected storage type {storage_type!r}")
        self.storages[str(key)] = (storage_type.dtype, int(numel))
        return str(key)


def _load_plain(stream: IO[bytes]) -> Any:
    # The header pickles hold only ints and dicts: no globals are allowed at all.
    return _RestrictedUnpickler(stream).load()


def load_legacy_state_dict(data: bytes) -> OrderedDict[str, npt.NDArray[Any]]:
    """Decode a legacy ``.pth`` state dict into name -> float/int numpy arrays (copies)."""
    stream = io.BytesIO(data)
    try:
        magic = _load_plain(stream)
        if magic != LEGACY_MAGIC:
            raise UnsupportedCheckpointError("not a legacy PyTorch checkpoint (bad magic number)")
        protocol = _load_plain(stream)
        if protocol != LEGACY_PROTOCOL:
            raise UnsupportedCheckpointError(f"unsupported legacy protocol {protocol!r}")
        sys_info = _load_plain(stream)
        if not (isinstance(sys_info, dict) and sys_info.get("little_endian", False)):
            raise UnsupportedCheckpointError("only little-endian checkpoints are supported")
        unpickler = _RestrictedUnpickler(stream)
        state = unpickler.load()
        storage_keys = _load_plain(stream)
    except (pickle.UnpicklingError, EOFError) as exc:
        raise UnsupportedCheckpointError(f"corrupt checkpoint: {exc}") from exc
    if not isinstance(state, dict):
        raise UnsupportedCheckpointError("checkpoint does not hold a state dict")

    buffers: dict[str, npt.NDArray[Any]] = {}
    for key in storage_keys:
        dtype, numel = unpickler.storages[str(key)]
        (count,) = struct.unpack("<q", stream.read(8))
        if count != numel:
            raise UnsupportedCheckpointError(f"storage {key}: {count} elements, expected {numel}")
        raw = stream.read(count * dtype.itemsize)
        if len(raw) != count * dtype.itemsize:
            raise UnsupportedCheckpointError(f"storage {key} is truncated")
        buffers[str(key)] = np.frombuffer(raw, dtype=dtype)

    tensors: OrderedDict[str, npt.NDArray[Any]] = OrderedDict()
    for name, ref in state.items():
        if not isinstance(ref, _TensorRef):
            raise UnsupportedCheckpointError(f"entry {name!r} is not a tensor")
        base = buffers[ref.key]
        strides = tuple(s * base.itemsize for s in ref.stride)
        view = np.lib.stride_tricks.as_strided(base[ref.offset :], shape=ref.shape, strides=strides)
        tensors[name] = np.array(view, dtype=base.dtype.newbyteorder("="))
    return tensors
