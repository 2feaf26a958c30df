"""Reduced-precision graphs (fp16, int8) against the shipped fp32 ones: what they cost in dB and what they gain in speed.

The issue's rule: a quantized or fp16 variant ships only where it costs <= 0.05 dB at every quality and runs
faster. The entropy path is integer tables either way (bit-exact by construction), so only the transforms change.
Variants are built here from the shipped graphs, never stored in the package:

* fp16: every weight and activation in float16 (onnxconverter-common, inputs and outputs kept float32);
* int8: static QDQ quantization, per-channel int8 weights and uint8 activations, calibrated on the bundled sample
  (place 0173706 is a validation place; the measurement below uses place 0181476 only, so calibration and test
  images never overlap).

Each variant encodes and decodes the test images at every quality, single-threaded, in one process with the fp32
reference; the table gives its PSNR and bpp minus fp32's and its speed as a ratio to fp32's.

    python benchmarks/precision.py [--data ../shared/data] [--no-readme]
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import argument_parser, machine, publish  # noqa: E402

from tec_zarr import metrics  # noqa: E402
from tec_zarr.entropy import factorized as entropy  # noqa: E402
from tec_zarr.pipeline.prepare import normalize  # noqa: E402
from tec_zarr.models import load_model  # noqa: E402

MAX_COST_DB = 0.05
MIN_SPEEDUP = 1.1  # below this, timing noise on a shared machine could make a slower graph look faster


def test_images(root: Path) -> np.ndarray:
    from tec_zarr.train import data

    chosen = [im for im in data.split(data.load_images(root))[1] if "0181476" in im.name]
    return np.rint(data.validation_crops(chosen) * 1e4).astype(np.uint16)


def calibration_inputs(model, quality_count: int) -> tuple[list[dict], list[dict]]:
    """Encoder and decoder inputs from the bundled sample (place 0173706), every quality."""
    from tec_zarr.sample import load_array

    sample = load_array()[:, :, :256, :256]
    enc_inputs, dec_inputs = [], []
    reference = _session(model.encoder.data)
    for image in sample:
        x, _ = normalize(image[None], model, None, 1.0)
        enc_inputs.append({"x": x})
        y = reference.run(None, {"x": x})[0]
        for q in range(quality_count):
            symbols = np.rint(y * model.gain[q][None, :, None, None])
            dec_inputs.append({"y_hat": (symbols * model.inv_gain[q][None, :, None, None]).astype(np.float32)})
    return enc_inputs, dec_inputs


def _session(graph: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(graph, sess_options=options, providers=["CPUExecutionProvider"])


def fp16(graph: bytes) -> bytes:
    import onnx
    from onnxconverter_common import float16

    return float16.convert_float_to_float16(onnx.load_from_string(graph), keep_io_types=True).SerializeToString()


def int8(graph: bytes, inputs: list[dict]) -> bytes:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(inputs)

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(graph)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv", "ConvTranspose"])
        return out.read_bytes()


def _coded(model, encoder, decoder, image: np.ndarray, quality: int) -> tuple[bytes, np.ndarray, float, float]:
    """The codec's lossy path (as tec_zarr.pipeline runs it) with the given sessions: payload, decoded DN, seconds."""
    gain, inv_gain = model.gain[quality][None, :, None, None], model.inv_gain[quality][None, :, None, None]
    t0 = time.perf_counter()
    x, _ = normalize(image[None], model, None, 1.0)
    symbols = np.rint(encoder.run(None, {"x": x})[0] * gain).astype(np.int32)
    payload = entropy.encode(symbols, quality, model.coder.tables)
    t1 = time.perf_counter()
    decoded = entropy.decode(payload, quality, symbols.shape, model.coder.tables)
    x_hat = decoder.run(None, {"y_hat": (decoded * inv_gain).astype(np.float32)})[0][0]
    dn = np.clip(np.rint((x_hat * model.std[:, None, None] + model.mean[:, None, None]) * 1e4), 0, 65535)
    return payload, dn.astype(np.uint16), t1 - t0, time.perf_counter() - t1


def compare(model, reference, variant, images: np.ndarray, quality: int, repeats: int = 3) -> dict:
    """Reference and variant round trips, timed alternately (best of ``repeats``) so that load hits both alike."""
    out = {"reference": {"bpp": [], "psnr": [], "encode_s": 0.0, "decode_s": 0.0},
           "variant": {"bpp": [], "psnr": [], "encode_s": 0.0, "decode_s": 0.0}}
    for image in images:
        for key, sessions in (("reference", reference), ("variant", variant)):
            runs = [_coded(model, *sessions, image, quality) for _ in range(repeats)]
            payload, decoded = runs[0][:2]
            r = out[key]
            r["bpp"].append(metrics.bpp(len(payload), *image.shape[-2:]))
            r["psnr"].append(metrics.psnr(image, decoded))
            r["encode_s"] += min(run[2] for run in runs)
            r["decode_s"] += min(run[3] for run in runs)
    for r in out.values():
        r["bpp"], r["psnr"] = float(np.mean(r["bpp"])), float(np.mean(r["psnr"]))
    return out


def table(results: dict) -> str:
    rows = ["| variant | quality | ΔPSNR dB | Δbpp | encode speed / fp32 | decode speed / fp32 | within 0.05 dB |",
            "|---|---:|---:|---:|---:|---:|---|"]
    for name, variant in results["variants"].items():
        if "error" in variant:
            rows.append(f"| {name} | — | — | — | — | — | no: {variant['error']} |")
            continue
        for row in variant["qualities"]:
            rows.append(f"| {name} | q{row['quality']} | {row['d_psnr']:+.3f} | {row['d_bpp']:+.3f} | "
                        f"{row['encode_speedup']:.2f} | {row['decode_speedup']:.2f} | {'yes' if row['within_cost'] else 'no'} |")
    verdicts = [f"{name}: {'ships' if v.get('ships') else 'does not ship'}" for name, v in results["variants"].items()]
    rows.append(f"\nVerdict (≤ {MAX_COST_DB} dB at every quality and ≥ {MIN_SPEEDUP}× encode and decode): "
                + "; ".join(verdicts) + ".")
    rows.append(f"\nMeasured by `benchmarks/precision.py` on {results['machine']}, {results['date']}: "
                f"{results['images']} images of place 0181476 (never trained on), one thread, onnxruntime CPU. "
                "Speeds are best of 3, reference and variant timed alternately.")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argument_parser(__doc__, HERE / "results")
    p.add_argument("--model", default="tec-fp")
    args = p.parse_args(argv)

    model = load_model(args.model)
    if model.per_quality:
        raise SystemExit(f"Expected a model with one synthesis graph. Got {model.name}, which names one per quality "
                         "(decoders.json), instead: measure its base.")
    qualities = model.qualities
    images = test_images(args.data)
    enc_cal, dec_cal = calibration_inputs(model, qualities)
    reference = (_session(model.encoder.data), _session(model.decoder.data))
    builders = {"fp16": lambda g, cal: fp16(g), "int8 (QDQ, per-channel)": int8}
    results = {"machine": machine(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
               "images": len(images), "model": model.name, "variants": {}}
    for name, build in builders.items():
        try:
            sessions = (_session(build(model.encoder.data, enc_cal)), _session(build(model.decoder.data, dec_cal)))
        except Exception as e:  # a variant onnxruntime cannot build or run on this machine is a result, not a crash
            results["variants"][name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
            print(name, results["variants"][name], flush=True)
            continue
        rows = []
        for q in range(qualities):
            measured = compare(model, reference, sessions, images, q)
            ref, var = measured["reference"], measured["variant"]
            d_psnr = var["psnr"] - ref["psnr"]
            row = {"quality": q, "d_psnr": d_psnr, "d_bpp": var["bpp"] - ref["bpp"],
                   "encode_speedup": ref["encode_s"] / var["encode_s"], "decode_speedup": ref["decode_s"] / var["decode_s"],
                   "reference": ref, "variant": var}
            row["within_cost"] = bool(d_psnr >= -MAX_COST_DB)
            rows.append(row)
            print(f"{name} q{q}: dPSNR {d_psnr:+.3f} dB, dbpp {row['d_bpp']:+.3f}, enc x{row['encode_speedup']:.2f}, "
                  f"dec x{row['decode_speedup']:.2f}", flush=True)
        # One runtime choice for the whole model: it must hold at every quality and be clearly faster.
        ships = all(r["within_cost"] and r["encode_speedup"] >= MIN_SPEEDUP and r["decode_speedup"] >= MIN_SPEEDUP
                    for r in rows)
        results["variants"][name] = {"qualities": rows, "ships": ships}
    publish("precision", results, args.out / "precision.json", table(results), not args.no_readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
