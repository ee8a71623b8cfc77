"""The names of an .onnx file's graph inputs and outputs and its opset, read without loading it.

An .onnx file is a protobuf ``ModelProto``; its weights sit inside the ``graph`` field, so this
walks the fields and seeks past every payload it does not need (weights, nodes) instead of
parsing hundreds of megabytes. It also tells a file that is not an ONNX model at all, in one line.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from smallfit.errors import SmallfitError

# field numbers from onnx.proto
_MODEL_IR_VERSION, _MODEL_GRAPH, _MODEL_OPSET = 1, 7, 8
_GRAPH_NODE, _GRAPH_INPUT, _GRAPH_OUTPUT = 1, 11, 12
_NODE_OP_TYPE = 4
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


@dataclass(frozen=True)
class GraphIO:
    """What the backend needs to know before loading a model."""

    inputs: list[str]
    outputs: list[str]
    opset: int | None  # the default (ai.onnx) domain's version
    ir_version: int
    op_types: frozenset[str]  # of the main graph's nodes

    @property
    def dynamic_quantization(self) -> bool:
        """Activations quantized at run time, with one scale per tensor of a graph run (so a
        row's result depends on the other rows and positions run with it)."""
        return "DynamicQuantizeLinear" in self.op_types


class _NotOnnx(Exception):
    pass


def _varint(fh: BinaryIO) -> int:
    shift = result = 0
    while True:
        byte = fh.read(1)
        if not byte:
            raise _NotOnnx("truncated")
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise _NotOnnx("varint too long")


def _fields(fh: BinaryIO, end: int) -> tuple[int, int, int]:
    """The next field's number, wire type and value (a varint) or payload length (the rest)."""
    tag = _varint(fh)
    field, wire = tag >> 3, tag & 7
    if field == 0 or wire not in (_VARINT, _I64, _LEN, _I32):
        raise _NotOnnx(f"bad field tag {tag}")
    if wire == _VARINT:
        return field, wire, _varint(fh)
    if wire == _LEN:
        size = _varint(fh)
        if fh.tell() + size > end:
            raise _NotOnnx("field runs past its end")
        return field, wire, size
    return field, wire, 8 if wire == _I64 else 4


def _skip(fh: BinaryIO, wire: int, value: int) -> None:
    if wire != _VARINT:
        fh.seek(value, io.SEEK_CUR)


def _message(fh: BinaryIO, size: int) -> dict[int, list[bytes | int]]:
    """A small submessage's fields (values as bytes or ints)."""
    end = fh.tell() + size
    found: dict[int, list[bytes | int]] = {}
    while fh.tell() < end:
        field, wire, value = _fields(fh, end)
        found.setdefault(field, []).append(fh.read(value) if wire in (_LEN, _I64, _I32) else value)
    return found


def _op_type(fh: BinaryIO, size: int) -> str:
    end = fh.tell() + size
    op = ""
    while fh.tell() < end:
        field, wire, value = _fields(fh, end)
        if field == _NODE_OP_TYPE and wire == _LEN:
            op = fh.read(value).decode("utf-8", "replace")
        else:
            _skip(fh, wire, value)
    return op


def read_graph(path: Path) -> GraphIO:
    """Inputs, outputs and opset of an .onnx file; a SmallfitError if it is not an ONNX model."""
    try:
        with open(path, "rb") as raw:
            fh = io.BufferedReader(raw, buffer_size=1 << 16)
            end = path.stat().st_size
            return _read_model(fh, end)
    except _NotOnnx as exc:
        raise SmallfitError(f"{path} is not an ONNX model ({exc}); pass an .onnx file exported by smallfit, "
                            "torch.onnx or optimum") from None
    except OSError as exc:
        raise SmallfitError(f"cannot read {path}: {exc.strerror or exc}") from None


def _read_model(fh: BinaryIO, end: int) -> GraphIO:
    ir_version, opset = None, None
    inputs: list[str] = []
    outputs: list[str] = []
    op_types: set[str] = set()
    graph_seen = False
    while fh.tell() < end:
        field, wire, value = _fields(fh, end)
        if field == _MODEL_IR_VERSION and wire == _VARINT:
            ir_version = value
        elif field == _MODEL_OPSET and wire == _LEN:
            op = _message(fh, value)
            domain = op.get(1, [b""])[0]
            if domain in (b"", b"ai.onnx") and isinstance(op.get(2, [None])[0], int):
                opset = int(op[2][0])
        elif field == _MODEL_GRAPH and wire == _LEN:
            graph_seen = True
            graph_end = fh.tell() + value
            while fh.tell() < graph_end:
                g_field, g_wire, g_value = _fields(fh, graph_end)
                if g_field in (_GRAPH_INPUT, _GRAPH_OUTPUT) and g_wire == _LEN:
                    name = _message(fh, g_value).get(1, [b""])[0]
                    names = inputs if g_field == _GRAPH_INPUT else outputs
                    names.append(name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name))
                elif g_field == _GRAPH_NODE and g_wire == _LEN:
                    op_types.add(_op_type(fh, g_value))
                else:
                    _skip(fh, g_wire, g_value)
        else:
            _skip(fh, wire, value)
    if ir_version is None or not 1 <= ir_version <= 64 or not graph_seen or not outputs:
        raise _NotOnnx("no ir_version, graph or outputs")
    return GraphIO(inputs, outputs, opset, ir_version, frozenset(op_types))
