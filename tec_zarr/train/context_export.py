"""Export a context checkpoint (``python -m tec_zarr.train.context``) as a shipped model beside its base model.

``python -m tec_zarr.train.context_export runs/ctx/checkpoint.pt --name tec-ctx --data ../shared/data``

The folder gets the base model's graphs and tables byte for byte (same symbols, same pixels), the hyper-analysis
graph and ``hyperprior.npz`` built as :mod:`tec_zarr.train.hyper_export` builds them, and ``context.npz``: the
group networks quantized to integers here once in float64 (see :mod:`tec_zarr.entropy.context`). Activation scales come
from calibration latents of the training places, weights get the most bits that keep every sum exact.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

from ..entropy import context, hyperprior
from ..integer.layers import CLIP_BITS, conv_matrix
from ..integer.synthesis import scale_exponent
from . import hyper_export
from .context import ContextConfig, ContextPrior
from .hyper import HyperConfig
from .hyper_export import integer_penalty, measure, write_model


# Trained means sit close to rounding boundaries (the rounded mean's gradient passes straight through), and gains up
# to 15 magnify the mean's fixed-point step: at 2**-12 one mean in 70 rounded the other way at q4 (+2 % bits).
MEAN_BITS = 20


def load_checkpoint(path: Path) -> tuple[ContextPrior, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    net = ContextPrior(ContextConfig.from_dict(ckpt["context"]), HyperConfig.from_dict(ckpt["config"]),
                       ckpt["model"]["hyper.gain"].numpy(), ckpt["order"])
    net.load_state_dict(ckpt["model"])
    return net.eval(), ckpt


def _matrix(conv: torch.nn.Conv2d) -> np.ndarray:
    """1x1 conv weight (Cout, Cin, 1, 1) -> (Cin, Cout), float64."""
    return conv.weight.detach().double().numpy()[:, :, 0, 0].T.copy()


def _spatial_matrix(conv: torch.nn.Conv2d) -> np.ndarray:
    w = conv.weight.detach().double().numpy()  # (H, c, 5, 5), cross-correlation taps
    return np.stack([w[:, :, dy + 2, dx + 2].T for dy, dx in context.SPATIAL_TAPS])


def build_context(net: ContextPrior, calibration: np.ndarray) -> context.ContextModel:
    """Quantize the group networks; layer scales from the peaks seen on ``calibration`` at every quality."""
    qualities = net.hyper.cfg.qualities
    record = [dict() for _ in net.contexts]
    with torch.no_grad():
        y = torch.from_numpy(np.ascontiguousarray(calibration, np.float32))
        for q in range(qualities):
            net(y, torch.full((y.shape[0],), q, dtype=torch.int64), noise=False, record=record)
    input_exp = scale_exponent(max(r["input"] for r in record), hyperprior.CALIBRATION_BITS)
    clip = 2.0**CLIP_BITS
    networks = []
    for module, peaks in zip(net.contexts, record):
        hidden = module.hidden.weight.shape[0]
        channel_w = (conv_matrix(module.channel.weight.detach().double().numpy())
                     if module.channel is not None else np.zeros((9, 0, hidden)))
        first = (_matrix(module.hyper), channel_w, _spatial_matrix(module.spatial))
        layers = [(first, module.hyper.bias), ((_matrix(module.hidden),), module.hidden.bias),
                  ((_matrix(module.out),), module.out.bias)]
        scales = [input_exp, scale_exponent(peaks["h1"], hyperprior.CALIBRATION_BITS),
                  scale_exponent(peaks["h2"], hyperprior.CALIBRATION_BITS), hyperprior.LOG_BITS]
        quantized, shifts = [], []
        for i, (ws, bias) in enumerate(layers):
            bias = bias.detach().double().numpy()
            colsum = sum(np.abs(w).reshape(-1, w.shape[-1]).sum(0) for w in ws).max()
            wexp = min(scale_exponent(colsum * clip + np.abs(bias).max() * 2.0 ** scales[i], 51), 40)
            quantized.append(([np.rint(w * 2.0**wexp) for w in ws], np.rint(bias * 2.0 ** (wexp + scales[i]))))
            if i + 1 < len(layers):
                # A hidden layer silent on all the calibration data (ReLUs training switched off: peak 0) has no
                # scale to measure; it keeps its accumulator's (shift 0), never a finer one, which no live layer
                # reaches: the models exported before this line are unchanged by it.
                scales[i + 1] = min(scales[i + 1], wexp + scales[i])
            shifts.append(wexp + scales[i] - scales[i + 1])
        (hw, cw, sw), b1 = quantized[0]
        networks.append(context.GroupNetwork(
            hyper_w=hw, channel_w=cw, spatial_w=sw, b1=b1, hidden_w=quantized[1][0][0], b2=quantized[1][1],
            out_w=quantized[2][0][0], b3=quantized[2][1], shifts=tuple(shifts)))
    order = net.order.numpy().astype(np.int64)
    gain = net.hyper.gain.detach().double().numpy()[:, order]
    y_in = np.rint(2.0 ** (input_exp + hyperprior.INPUT_EXTRA_BITS) / np.where(gain == 0, math.inf, gain))
    return context.ContextModel(order=order, groups=tuple(net.cfg.groups), input_exp=input_exp,
                                y_in=y_in.astype(np.int64), networks=tuple(networks))


def export(checkpoint: Path, name: str, version: str, out_dir: Path | None, run_dir: Path | None,
           data_root: Path | None, calibration_crops: int = 64) -> Path:
    net, ckpt = load_checkpoint(checkpoint)
    folder, run_dir = write_model(
        net.hyper, ckpt, checkpoint, name, version, out_dir, run_dir, calibration_crops=calibration_crops,
        mean_bits=MEAN_BITS, more_files=lambda calibration: {context.FILENAME: build_context(net, calibration).to_npz()},
        manifest={"architecture": "ELIC-style context entropy model on {base}'s frozen transforms and gains (same "
                                  "symbols and pixels): hyperprior (float h_a on the encoder side, integer h_s) plus "
                                  f"uneven channel groups {list(net.cfg.groups)} with channel context and a "
                                  "checkerboard spatial context, all decoder-side networks in integer arithmetic, "
                                  "integer Gaussian scale tables",
                  "entropy_model": context.ENTROPY_MODEL, "context": net.cfg.to_dict()},
        training={"context_steps": int(ckpt["step"]),
                  "started_from": ckpt.get("started_from", "checkpoints/tec-hp (hyperprior, then trained jointly "
                                                           "with the context networks)")})
    if (run_dir / "val_latents.npy").exists():
        integer_penalty(net, folder, np.load(run_dir / "val_latents.npy"))
    if data_root is not None:
        measure(folder, data_root, ckpt["latents"]["base"])
    return folder


def main(argv: list[str] | None = None) -> int:
    return hyper_export.command_line(argv, "python -m tec_zarr.train.context_export", __doc__, "tec-ctx", export)


if __name__ == "__main__":
    sys.exit(main())
