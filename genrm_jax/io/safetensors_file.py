"""A streaming reader for the safetensors format.

The `safetensors` package memory-maps whole files; a loader that reads each tensor straight into its slot of
the (stacked) parameter array keeps resident memory at one copy of the weights, which a 70B user needs.
The format: 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, bytes.
"""
from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


class SafetensorsError(ValueError):
    pass


class TensorInfo:
    __slots__ = ("path", "name", "dtype", "shape", "start", "end")

    def __init__(self, path, name, dtype, shape, start, end):
        self.path, self.name, self.dtype, self.shape, self.start, self.end = path, name, dtype, shape, start, end


def read_header(path: str) -> dict[str, TensorInfo]:
    """Parses and validates a file's header; a truncated or corrupt file raises SafetensorsError."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise SafetensorsError(f"{path}: truncated safetensors file (header says {n} bytes, file has {size})")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise SafetensorsError(f"{path}: corrupt safetensors header: {e}") from None
    base = 8 + n
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta.get("dtype") not in DTYPES:
            raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {meta.get('dtype')!r}")
        start, end = meta["data_offsets"]
        shape = tuple(meta["shape"])
        dtype = np.dtype(DTYPES[meta["dtype"]])
        if end - start != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise SafetensorsError(f"{path}: tensor {name!r} byte range does not match shape {shape}")
        if base + end > size:
            raise SafetensorsError(
                f"{path}: truncated safetensors file: tensor {name!r} ends at byte {base + end}, file has {size}")
        out[name] = TensorInfo(path, name, dtype, shape, base + start, base + end)
    return out


def read_tensor(info: TensorInfo, out: np.ndarray | None = None) -> np.ndarray:
    """Reads one tensor with plain file reads (no mmap: nothing stays resident but the result)."""
    if out is None:
        buf = np.empty(info.shape, info.dtype)
    elif out.dtype != info.dtype or not out.flags.c_contiguous or out.size != int(np.prod(info.shape)):
        raise ValueError(f"cannot read {info.name!r} ({info.dtype}, {info.shape}) into a {out.dtype} {out.shape} "
                         "array that is not C-contiguous or of another size")
    else:
        buf = out.reshape(info.shape)
    with open(info.path, "rb") as f:
        f.seek(info.start)
        got = f.readinto(memoryview(buf.reshape(-1).view(np.uint8)))
    if got != info.end - info.start:
        raise SafetensorsError(f"{info.path}: short read for tensor {info.name!r}")
    return buf


def tensor_view(info: TensorInfo) -> np.ndarray:
    """A read-only memory map of one tensor: slicing it reads only the pages the slice touches (a host loading
    its shards of a model it cannot hold whole)."""
    return np.memmap(info.path, dtype=info.dtype, mode="r", offset=info.start, shape=info.shape)
