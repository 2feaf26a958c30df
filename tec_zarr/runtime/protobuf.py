"""The few protocol-buffer operations the runtime needs on ONNX graphs, without the onnx package.

An ONNX model is a protobuf message; reading and re-emitting its fields is all :mod:`.gathered` needs (drop two
initializers, declare them as inputs, let an input's channel axis vary). Fields are kept as they were read
(number, wire type, bytes), so everything not edited is re-emitted byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import WeightsIntegrityError

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5

# ONNX field numbers (onnx/onnx.proto3)
MODEL_GRAPH = 7
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_INPUT = 1, 5, 11
NODE_INPUT, NODE_OP_TYPE = 1, 4
TENSOR_DIMS, TENSOR_DATA_TYPE, TENSOR_NAME, TENSOR_RAW_DATA = 1, 2, 8, 9
VALUE_NAME, VALUE_TYPE = 1, 2
TYPE_TENSOR = 1
TENSOR_TYPE_ELEM, TENSOR_TYPE_SHAPE = 1, 2
SHAPE_DIM = 1
DIM_VALUE, DIM_PARAM = 1, 2
FLOAT = 1  # TensorProto.DataType


@dataclass(frozen=True)
class Field:
    number: int
    wire: int
    value: int | bytes  # varints as int, everything else as its bytes


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """An unsigned 64-bit varint (int64 fields holding negative values read as their two's complement)."""
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63 or (shift == 63 and buf[pos] > 1):
            raise WeightsIntegrityError("Expected a well-formed ONNX protobuf. Got a truncated or overlong varint.")
        byte = buf[pos]
        result |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return result, pos
        shift += 7


def encode_varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # negative int64 as ten bytes, as protobuf writes them
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def fields(buf: bytes) -> list[Field]:
    """A message's fields in order."""
    out, pos = [], 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            value, pos = _varint(buf, pos)
        elif wire == LENGTH:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + n], pos + n
            if len(value) != n:
                raise WeightsIntegrityError("Expected a well-formed ONNX protobuf. Got a truncated field instead.")
        elif wire in (FIXED64, FIXED32):
            n = 8 if wire == FIXED64 else 4
            value, pos = buf[pos : pos + n], pos + n
            if len(value) != n:
                raise WeightsIntegrityError("Expected a well-formed ONNX protobuf. Got a truncated field instead.")
        else:
            raise WeightsIntegrityError(f"Expected protobuf wire types 0, 1, 2, 5. Got {wire} instead.")
        out.append(Field(number, wire, value))
    return out


def emit(items: list[Field]) -> bytes:
    parts = []
    for f in items:
        parts.append(encode_varint((f.number << 3) | f.wire))
        if f.wire == VARINT:
            parts.append(encode_varint(f.value))
        elif f.wire == LENGTH:
            parts += [encode_varint(len(f.value)), f.value]
        else:
            parts.append(f.value)
    return b"".join(parts)


def length_field(number: int, value: bytes) -> Field:
    return Field(number, LENGTH, value)


def strings(items: list[Field], number: int) -> list[str]:
    return [f.value.decode() for f in items if f.number == number and f.wire == LENGTH]


def messages(items: list[Field], number: int) -> list[list[Field]]:
    """The fields of each embedded message ``number``; a field of that number that is not one is refused."""
    out = []
    for f in items:
        if f.number == number:
            if f.wire != LENGTH:
                raise WeightsIntegrityError(f"Expected field {number} to be a message. Got wire type {f.wire} instead.")
            out.append(fields(f.value))
    return out


def tensor(message: bytes) -> tuple[str, np.ndarray]:
    """(name, float32 array) of a TensorProto stored as raw little-endian float32."""
    items = fields(message)
    names = strings(items, TENSOR_NAME)
    dims = []
    for f in items:
        if f.number == TENSOR_DIMS and f.wire == VARINT:
            dims.append(f.value)
        elif f.number == TENSOR_DIMS and f.wire == LENGTH:  # packed
            pos = 0
            while pos < len(f.value):
                d, pos = _varint(f.value, pos)
                dims.append(d)
    types = [f.value for f in items if f.number == TENSOR_DATA_TYPE]
    raw = [f.value for f in items if f.number == TENSOR_RAW_DATA]
    if len(names) != 1 or types != [FLOAT] or len(raw) != 1:
        raise WeightsIntegrityError("Expected a named float32 tensor with raw data. Got another tensor instead.")
    count = 1
    for d in dims:  # Python integers: a hostile product must not wrap
        count *= d
    if len(raw[0]) != 4 * count:
        raise WeightsIntegrityError(f"Expected {4 * count} bytes for tensor {names[0]}. Got {len(raw[0])} instead.")
    return names[0], np.frombuffer(raw[0], "<f4").reshape(dims).astype(np.float32)


def tensor_value_info(name: str, dims: list[int | str]) -> bytes:
    """A ValueInfoProto for a float tensor: ints are fixed sizes, strings named (varying) ones."""
    shape = emit([length_field(SHAPE_DIM, emit([Field(DIM_VALUE, VARINT, d)] if isinstance(d, int)
                                                 else [length_field(DIM_PARAM, d.encode())])) for d in dims])
    tensor_type = emit([Field(TENSOR_TYPE_ELEM, VARINT, FLOAT), length_field(TENSOR_TYPE_SHAPE, shape)])
    return emit([length_field(VALUE_NAME, name.encode()), length_field(VALUE_TYPE, emit([length_field(TYPE_TENSOR,
                                                                                                     tensor_type)]))])


def graph_inputs(model: bytes) -> list[str]:
    """The names of an ONNX model's graph inputs that are not initializers (the tensors a caller must feed)."""
    graphs = messages(fields(model), MODEL_GRAPH)
    if len(graphs) != 1:
        raise WeightsIntegrityError(f"Expected an ONNX model with one graph. Got {len(graphs)} instead.")
    stored = {name for t in messages(graphs[0], GRAPH_INITIALIZER) for name in strings(t, TENSOR_NAME)}
    return [name for v in messages(graphs[0], GRAPH_INPUT) for name in strings(v, VALUE_NAME) if name not in stored]
