"""Synthesis graphs run on the latent channels that are not all zero.

At the rates users store, most of a chunk's latent channels quantize to 0 everywhere (tec-fp at its default
quality: about half of 192; at the lowest: 20). The synthesis' layers that read the latents directly (a transposed
convolution and the linear block path: three quarters of its multiply-adds) then add exact zeros for those
channels. :func:`gathered` derives, from a verified graph's own bytes, a variant whose latent input and those layers'
weights have a varying channel count, and runs it on the nonzero channels only. The variant computes the same sums
without the zero terms: equal to the full graph's outputs up to float rounding (most often bit for bit; the tests
bound it), and the same for a chunk however it is batched.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ..errors import WeightsIntegrityError
from . import protobuf as pb
from . import onnx
from .onnx import Graph

CHANNELS = "K"  # the variant's name for the varying channel count
DIRECT_OPS = ("ConvTranspose",)


@dataclass(frozen=True, eq=False)
class GatheredGraph:
    """A graph with one latent input (B, M, h, w) that runs on its nonzero channels. Same interface as
    :class:`~.onnx.Graph` (``sha256`` names the full graph, whose outputs it reproduces)."""

    full: Graph
    variant_sha256: str
    variant: bytes = field(repr=False)
    weights: dict[str, np.ndarray] = field(repr=False)  # name -> (M, ...) of the layers reading the latents

    @property
    def sha256(self) -> str:
        return self.full.sha256

    @property
    def input_name(self) -> str:
        return self.full.input_name

    @property
    def data(self) -> bytes:
        return self.full.data

    def run(self, x: np.ndarray) -> np.ndarray:
        active = np.flatnonzero(x.any(axis=(0, 2, 3)))
        if len(active) == x.shape[1]:
            return self.full.run(x)
        if len(active) == 0:
            active = np.zeros(1, np.int64)  # one zero channel: the variant needs some
        feeds = {self.input_name: np.ascontiguousarray(x[:, active])}
        feeds.update({name: np.ascontiguousarray(w[active]) for name, w in self.weights.items()})
        return onnx.run(self.variant_sha256, self.variant, feeds)

    def cpu_only(self) -> bool:
        return self.full.cpu_only()

    def stack_key(self, x: np.ndarray) -> bytes:
        """Inputs stack into one call only with the same nonzero channels, so that a chunk's pixels never depend
        on which other chunks it was decoded with (sums over other channel sets may round differently)."""
        return np.packbits(x.any(axis=(0, 2, 3))).tobytes()


def gathered(graph: Graph) -> Graph | GatheredGraph:
    """``graph`` running on nonzero latent channels, where every node reading its input is a plain ConvTranspose
    (group 1) with weights stored in the graph and read by that node alone; ``graph`` itself otherwise, and for
    bytes this reader cannot follow."""
    try:
        variant, weights = _variant(graph.data, graph.input_name)
    except (WeightsIntegrityError, UnicodeDecodeError, ValueError, IndexError, TypeError):
        return graph
    if not weights:
        return graph
    for w in weights.values():
        w.setflags(write=False)  # shared by every thread decoding with this model
    return GatheredGraph(graph, hashlib.sha256(variant).hexdigest(), variant, weights)


NODE_ATTRIBUTE, ATTRIBUTE_NAME, ATTRIBUTE_INT = 5, 1, 3


def _group(node: list[pb.Field]) -> int:
    for attribute in pb.messages(node, NODE_ATTRIBUTE):
        if pb.strings(attribute, ATTRIBUTE_NAME) == ["group"]:
            return int(next((f.value for f in attribute if f.number == ATTRIBUTE_INT), 1))
    return 1


def _variant(model: bytes, input_name: str) -> tuple[bytes, dict[str, np.ndarray]]:
    """The model with the weights of the nodes reading ``input_name`` made inputs of (K, ...) and that input's
    channel axis named K; and those weights. ({} where the graph is not of that shape.)"""
    top = pb.fields(model)
    graphs = pb.messages(top, pb.MODEL_GRAPH)
    if len(graphs) != 1:
        return model, {}
    items = graphs[0]
    nodes = pb.messages(items, pb.GRAPH_NODE)
    graph_inputs = [pb.strings(v, pb.VALUE_NAME) for v in pb.messages(items, pb.GRAPH_INPUT)]
    readers, reads = [], {}
    for node in nodes:
        inputs = pb.strings(node, pb.NODE_INPUT)
        for name in inputs:
            reads[name] = reads.get(name, 0) + 1
        if input_name in inputs:
            if (pb.strings(node, pb.NODE_OP_TYPE)[:1] != list(DIRECT_OPS) or inputs[0] != input_name
                    or len(inputs) < 2 or _group(node) != 1):
                return model, {}  # something else reads the latents: keep the full graph
            readers.append(inputs[1])
    if not readers or any(reads[w] != 1 or [w] in graph_inputs for w in readers):
        return model, {}  # a weight shared with another node, or already an input, must stay as it is
    tensors = {}
    for message in pb.messages(items, pb.GRAPH_INITIALIZER):
        if any(n in readers for n in pb.strings(message, pb.TENSOR_NAME)):
            name, array = pb.tensor(pb.emit(message))
            tensors[name] = array
    if set(readers) != set(tensors) or len({t.shape[0] for t in tensors.values()}) != 1:
        return model, {}
    rebuilt = []
    for f in items:
        if f.number == pb.GRAPH_INITIALIZER and _names_one_of(f.value, readers):
            continue
        if f.number == pb.GRAPH_INPUT and pb.strings(pb.fields(f.value), pb.VALUE_NAME) == [input_name]:
            f = pb.length_field(pb.GRAPH_INPUT, _vary_channels(f.value))
        rebuilt.append(f)
    for name, w in tensors.items():
        rebuilt.append(pb.length_field(pb.GRAPH_INPUT, pb.tensor_value_info(name, [CHANNELS, *w.shape[1:]])))
    new_top = [pb.length_field(pb.MODEL_GRAPH, pb.emit(rebuilt)) if f.number == pb.MODEL_GRAPH else f for f in top]
    return pb.emit(new_top), tensors


def _names_one_of(tensor_message: bytes, names: list[str]) -> bool:
    return any(n in names for n in pb.strings(pb.fields(tensor_message), pb.TENSOR_NAME))


def _vary_channels(value_info: bytes) -> bytes:
    """A ValueInfoProto of a 4-d tensor with axis 1 named :data:`CHANNELS` instead of fixed."""
    info = pb.fields(value_info)
    (type_field,) = [f for f in info if f.number == pb.VALUE_TYPE]
    (tensor_field,) = [f for f in pb.fields(type_field.value) if f.number == pb.TYPE_TENSOR]
    tensor_type = pb.fields(tensor_field.value)
    (shape_field,) = [f for f in tensor_type if f.number == pb.TENSOR_TYPE_SHAPE]
    dims = [f for f in pb.fields(shape_field.value) if f.number == pb.SHAPE_DIM]
    if len(dims) != 4:
        raise WeightsIntegrityError("Expected a 4-d latent input.")
    dims[1] = pb.length_field(pb.SHAPE_DIM, pb.emit([pb.length_field(pb.DIM_PARAM, CHANNELS.encode())]))
    shape = pb.emit(dims)
    tensor_type = [pb.length_field(pb.TENSOR_TYPE_SHAPE, shape) if f.number == pb.TENSOR_TYPE_SHAPE else f
                   for f in tensor_type]
    type_proto = [pb.length_field(pb.TYPE_TENSOR, pb.emit(tensor_type)) if f.number == pb.TYPE_TENSOR else f
                  for f in pb.fields(type_field.value)]
    return pb.emit([pb.length_field(pb.VALUE_TYPE, pb.emit(type_proto)) if f.number == pb.VALUE_TYPE else f
                    for f in info])
