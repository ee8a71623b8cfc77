"""A GGUF file's header, read without any ML library: enough to tell before a model loads that a
file is GGUF, that its header parses, and that its tensor data fits inside the file (a truncated
download is caught here, not as a crash inside llama.cpp).

The layout is GGUF versions 2 and 3 (little-endian): magic ``GGUF``, version (u32), tensor count
(u64), metadata count (u64), the metadata key/value pairs, then per tensor its name, dimensions,
ggml type and offset into the data section, which starts at the next multiple of
``general.alignment`` (default 32) after the header.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from smallfit.errors import SmallfitError

MAGIC = b"GGUF"
# ggml type id -> (elements per block, bytes per block), as ggml defines them.
TYPE_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 36),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82),
    23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2),
    34: (256, 54), 35: (256, 66), 39: (32, 17),
}
# metadata value type -> struct format of a scalar (8: string, 9: array)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_MAX_COUNT = 1 << 24  # no real file has this many tensors, keys or array items: a corrupt header


@dataclass(frozen=True)
class GGUFHeader:
    """What the header says: version, tensor count, bytes the tensor data needs, and where it starts."""

    version: int
    n_tensors: int
    data_offset: int
    data_bytes: int | None  # None when a tensor has a type this reader does not know
    architecture: str | None


def read_header(path: Path) -> GGUFHeader:
    """Parse the header of ``path``; a :class:`SmallfitError` names what is wrong."""
    try:
        with path.open("rb") as fh:
            return _parse(fh, path)
    except OSError as exc:
        raise SmallfitError(f"cannot read {path}: {exc.strerror}") from None
    except (struct.error, UnicodeDecodeError, _Corrupt) as exc:
        raise SmallfitError(f"{path} is not a readable GGUF file (its header is damaged or cut short: {exc}); "
                            "download it again") from None


def check_gguf(path: Path) -> GGUFHeader:
    """Check that ``path`` is a complete GGUF file: magic, header, and tensor data inside the file."""
    if not path.is_file():
        raise SmallfitError(f"model file not found: {path}; check the path")
    header = read_header(path)
    size = path.stat().st_size
    if header.data_bytes is not None and header.data_offset + header.data_bytes > size:
        need = header.data_offset + header.data_bytes
        raise SmallfitError(f"{path} is truncated: its tensors need {need:,} bytes but the file has {size:,} "
                            "(an interrupted download?); download it again")
    return header


class _Corrupt(ValueError):
    pass


def _read(fh: BinaryIO, fmt: str) -> int | float | bool:
    size = struct.calcsize(fmt)
    data = fh.read(size)
    if len(data) != size:
        raise _Corrupt("unexpected end of file")
    value: int | float | bool = struct.unpack(fmt, data)[0]
    return value


def _count(fh: BinaryIO) -> int:
    n = int(_read(fh, "<Q"))
    if n > _MAX_COUNT:
        raise _Corrupt(f"implausible count {n}")
    return n


def _string(fh: BinaryIO) -> str:
    n = _count(fh)
    data = fh.read(n)
    if len(data) != n:
        raise _Corrupt("unexpected end of file")
    return data.decode("utf-8")


def _value(fh: BinaryIO, vtype: int) -> object:
    if vtype in _SCALARS:
        return _read(fh, _SCALARS[vtype])
    if vtype == 8:
        return _string(fh)
    if vtype == 9:
        item_type, n = int(_read(fh, "<I")), _count(fh)
        if item_type in _SCALARS:  # skip numeric arrays without reading them item by item
            fh.seek(struct.calcsize(_SCALARS[item_type]) * n, 1)
            return None
        for _ in range(n):
            _value(fh, item_type)
        return None
    raise _Corrupt(f"unknown metadata type {vtype}")


def _parse(fh: BinaryIO, path: Path) -> GGUFHeader:
    magic = fh.read(4)
    if magic != MAGIC:
        raise SmallfitError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); "
                            "pass a .gguf model file")
    version = int(_read(fh, "<I"))
    if version not in (2, 3):
        raise _Corrupt(f"unsupported GGUF version {version}")
    n_tensors, n_kv = _count(fh), _count(fh)
    alignment, arch = 32, None
    for _ in range(n_kv):
        key, vtype = _string(fh), int(_read(fh, "<I"))
        value = _value(fh, vtype)
        if key == "general.alignment" and isinstance(value, int) and value > 0:
            alignment = value
        elif key == "general.architecture" and isinstance(value, str):
            arch = value
    end: int | None = 0
    for _ in range(n_tensors):
        _string(fh)
        n_dims = int(_read(fh, "<I"))
        if n_dims > 8:
            raise _Corrupt(f"a tensor with {n_dims} dimensions")
        elements = 1
        for _ in range(n_dims):
            elements *= int(_read(fh, "<Q"))
        ggml_type, offset = int(_read(fh, "<I")), int(_read(fh, "<Q"))
        block = TYPE_SIZES.get(ggml_type)
        if block is None or end is None:
            end = None
            continue
        end = max(end, offset + elements // block[0] * block[1])
    data_offset = -(-fh.tell() // alignment) * alignment
    return GGUFHeader(version, n_tensors, data_offset, end, arch)
