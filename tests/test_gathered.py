"""The synthesis runs on the nonzero latent channels only (runtime.gathered): same outputs as the full graph, a
variant derived from the verified graph's own bytes, and the full graph wherever the derivation does not apply."""

from __future__ import annotations

import numpy as np
import pytest

from tec_zarr import pipeline
from tec_zarr.errors import WeightsIntegrityError
from tec_zarr.models import load_model
from tec_zarr.pipeline.decode import parse
from tec_zarr.runtime import Graph
from tec_zarr.runtime import protobuf as pb
from tec_zarr.runtime.gathered import GatheredGraph, gathered
from tec_zarr.sample import load_array


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.ascontiguousarray(load_array()[1][:, :96, :112])


@pytest.fixture(scope="module")
def decoder() -> GatheredGraph:
    graph = load_model("tec-fp").decoder
    assert isinstance(graph, GatheredGraph)
    return graph


def test_every_shipped_decoder_is_gathered():
    for name, weights in [*[(n, {"model.g_s.0.weight", "model.s_lin.weight"}) for n in ("tec-fp", "tec-hp", "tec-ctx")],
                          ("tec-fp-lite", {"project.weight", "s_lin.weight"}),
                          ("tec-fp-half", {"g_s.0.weight", "s_lin.weight"})]:
        d = load_model(name).decoder
        assert isinstance(d, GatheredGraph) and set(d.weights) == weights
        assert d.sha256 == load_model(name).card.files["decoder.onnx"]  # it stands for the verified graph


@pytest.mark.parametrize("quality", range(5))
def test_outputs_match_the_full_graph(decoder, image, quality):
    y = parse(pipeline.encode_chunk(image, model="tec-fp", quality=quality)).y_hat()
    active = int(y.any(axis=(0, 2, 3)).sum())
    assert active < y.shape[1]  # channels do drop out at every level (20 of 192 at q0, 161 at q4 on 256 x 256)
    full, fast = decoder.full.run(y), decoder.run(y)
    assert full.shape == fast.shape
    # the same sums without zero terms: bit for bit on the CPUs measured; never more than float rounding
    np.testing.assert_allclose(fast, full, rtol=0, atol=1e-4)


def test_no_active_channel_and_all_channels(decoder):
    zero = np.zeros((2, 192, 4, 6), np.float32)
    np.testing.assert_allclose(decoder.run(zero), decoder.full.run(zero), atol=1e-5)
    dense = np.random.default_rng(0).normal(0, 1, (1, 192, 4, 6)).astype(np.float32)
    np.testing.assert_array_equal(decoder.run(dense), decoder.full.run(dense))  # the full graph itself


def test_stacked_chunks_decode_as_alone(image):
    chunks = [pipeline.encode_chunk(image, model="tec-fp", quality=q) for q in (0, 3)]
    stacked = pipeline.decode_chunks(chunks)  # one call, the union of both chunks' channels
    for data, got in zip(chunks, stacked, strict=True):
        np.testing.assert_allclose(got.astype(np.float64), pipeline.decode_chunk(data), atol=1)


def test_protobuf_fields_reemit_byte_for_byte():
    data = load_model("tec-fp").decoder.data
    assert pb.emit(pb.fields(data)) == data
    for value in (0, 1, 127, 128, 300, 2**35, 2**63 - 1):
        assert pb.fields(pb.emit([pb.Field(3, pb.VARINT, value)])) == [pb.Field(3, pb.VARINT, value)]


def test_graphs_whose_input_feeds_other_layers_stay_whole():
    encoder = load_model("tec-fp").encoder  # its input feeds a Conv (and the linear path's Conv)
    assert gathered(encoder) is encoder


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_bytes_it_cannot_read_run_whole(damage):
    data = load_model("tec-fp").decoder.data
    bad = {"truncate": data[: len(data) // 3], "garbage": bytes(range(256)) * 8}[damage]
    graph = Graph.from_bytes(bad, "y_hat")
    assert gathered(graph) is graph


def _decoder_like(**change):
    """A small ONNX graph shaped like the synthesis' latent layers: y (1, 4, h, w) -> ConvTranspose(s) -> sum."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(4, 3, 5, 5)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(4, 3, 4, 4)).astype(np.float32), "w2")
    group = change.get("group", 1)
    if group != 1:  # depthwise: (Cin, Cout / group, k, k)
        w1 = numpy_helper.from_array(rng.normal(size=(4, 1, 5, 5)).astype(np.float32), "w1")
    second = change.get("second", "ConvTranspose")
    nodes = [
        helper.make_node("ConvTranspose", ["y", "w1"], ["a"], kernel_shape=[5, 5], strides=[4, 4], pads=[2, 2, 2, 2],
                         output_padding=[3, 3], group=group),
        helper.make_node("ConvTranspose", ["y", "w2"], ["b"], kernel_shape=[4, 4], strides=[4, 4])
        if second == "ConvTranspose" else helper.make_node("Relu", ["y"], ["r"]),
    ]
    outputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, None)]
    if second == "ConvTranspose":
        nodes.append(helper.make_node("Add", ["a", "b"], ["out"]))
        outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)]
    else:
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    if change.get("shared"):
        nodes.append(helper.make_node("Identity", ["w1"], ["w1_copy"]))
        outputs.append(helper.make_tensor_value_info("w1_copy", TensorProto.FLOAT, None))
    inputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3, 5])]
    if change.get("weights_as_inputs"):
        inputs.append(helper.make_tensor_value_info("w1", TensorProto.FLOAT, [4, 3, 5, 5]))
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=[w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return Graph.from_bytes(model.SerializeToString(), "y")


def test_a_graph_of_the_same_shape_is_gathered_and_agrees():
    graph = _decoder_like()
    fast = gathered(graph)
    assert isinstance(fast, GatheredGraph)
    y = np.zeros((1, 4, 3, 5), np.float32)
    y[:, 2] = np.random.default_rng(1).normal(size=(3, 5))
    np.testing.assert_allclose(fast.run(y), graph.run(y), atol=1e-5)


@pytest.mark.parametrize("change", [{"second": "Relu"}, {"group": 4}, {"shared": True}, {"weights_as_inputs": True}])
def test_other_readers_of_the_latents_keep_the_graph_whole(change):
    graph = _decoder_like(**change)
    assert gathered(graph) is graph


def test_tensor_reader_refuses_what_it_cannot_read():
    with pytest.raises(WeightsIntegrityError):
        pb.fields(b"\x0a\xff\xff")  # a length beyond the message
    with pytest.raises(WeightsIntegrityError):
        pb.fields(b"\x08" + b"\xff" * 9 + b"\x7f")  # a varint beyond 64 bits
    with pytest.raises(WeightsIntegrityError):
        pb.fields(b"\x0d\x01\x02")  # a fixed32 cut short
    with pytest.raises(WeightsIntegrityError):
        pb.tensor(pb.emit([pb.length_field(pb.TENSOR_NAME, b"w"), pb.Field(pb.TENSOR_DATA_TYPE, pb.VARINT, 7)]))
