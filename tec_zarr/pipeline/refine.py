"""The encoder's symbol search (``refine=N``): a chunk's latent symbols chosen for rate and distortion, not only
rounded.

The analysis transform was trained to do well on average over its training images; rounding its output is one
choice of symbols among the many the decoder reads, and on a chunk unlike those images (other places, sensors,
resampling) often not the best one. The search weighs, for every symbol, a step of one down or up by the change of
the objective the model was trained for, ``lambda[q] * MSE + bits per pixel``:

* distortion: the first-order change from the synthesis' gradient (:mod:`tec_zarr.runtime.synthesis_gradient`)
  of the decoded chunk's error (over its valid elements, replicated bands as the decoder projects them onto their
  blocks, in reflectance, as the model trained), and the second-order term of each channel's impulse response;
* rate: the model's own tables at the chunk's side information (:meth:`LatentCoder.code_lengths`).

Each round moves the symbols that gain on half of the positions and channels (alternating parity: neighbours'
moves interact through the synthesis and the context model), then measures again. The decoder is unchanged: a
refined chunk is an ordinary chunk of its model, which every tec_zarr that reads the model decodes. The caller
keeps the searched symbols only where the chunk's real bytes and decoded pixels score better
(:func:`objective`), so a search can cost encoding time but never the objective.
"""

from __future__ import annotations

import numpy as np

from ..errors import RefinementUnsupportedError
from ..models import Model
from ..replication import project
from ..runtime.synthesis_gradient import SynthesisGradient
from .prepare import PreparedChunk

IMPULSE_SPACING = 8  # latents between the impulses measuring a channel's response (the synthesis reaches ~2)
_gradients: dict[str, SynthesisGradient] = {}  # by graph sha256; read-only once built
_curvatures: dict[tuple[str, int], np.ndarray] = {}  # by (graph sha256, quality)


def rate_distortion_lambda(model: Model, quality: int) -> float:
    lambdas = model.card.manifest.get("config", {}).get("lambdas")
    if not isinstance(lambdas, list) or len(lambdas) != model.qualities:
        raise RefinementUnsupportedError(f"Expected model {model.name} to state the rate-distortion trade-off of each "
                                         "quality (config.lambdas). Got none instead: use refine=0.")
    return float(lambdas[quality])


def check_refinable(model: Model) -> None:
    """Refuse a model the search cannot refine at some quality (:class:`RefinementUnsupportedError`), before any
    chunk is written."""
    if not model.coder.refinable:
        raise RefinementUnsupportedError(f"Expected a model whose entropy model the symbol search (refine=) knows. Got "
                                         f"{model.name}, whose {model.coder.name!r} entropy model it does not, "
                                         "instead: use refine=0.")
    for q in range(model.qualities):
        rate_distortion_lambda(model, q)
        _gradient(model.decoder_for(q))


def _gradient(graph) -> SynthesisGradient:
    found = _gradients.get(graph.sha256)
    return found if found is not None else _gradients.setdefault(graph.sha256, SynthesisGradient.from_graph(graph.data))


def search(model: Model, chunk: PreparedChunk, y: np.ndarray, symbols: np.ndarray, quality: int,
           rounds: int) -> np.ndarray:
    """int32 symbols from ``rounds`` rounds of the search, starting from ``symbols`` (the rounded ``y``)."""
    graph = model.decoder_for(quality)
    gradient = _gradient(graph)
    distortion = _Distortion(model, chunk, quality)
    inv_gain = model.inv_gain[quality][None, :, None, None]
    curvature = distortion.lam * _curvature(model, graph, quality)[None, :, None, None] / distortion.elements
    s = np.asarray(symbols, np.int64).copy()
    b, m, h, w = s.shape
    parity = (np.arange(h)[:, None] + np.arange(w)[None, :])[None, None] + np.arange(m)[None, :, None, None]
    frozen = None if chunk.skip is None else chunk.skip[:, None]
    for r in range(rounds):
        y_hat = (s * inv_gain).astype(np.float32)
        error_grad = distortion.error_gradient(graph.run(y_hat))
        slope = gradient.vjp(y_hat, error_grad) * inv_gain  # d objective / d symbol
        bits = model.coder.code_lengths(y, s, quality, skip=chunk.skip)
        best, step = np.zeros(s.shape), np.zeros(s.shape, np.int64)
        for i, d in ((0, -1), (2, 1)):  # SEARCH_STEPS: one down, one up
            with np.errstate(invalid="ignore"):  # inf - inf (a symbol already escaping) is nan: never better
                gain = slope * d + 0.5 * curvature + (bits[i] - bits[1]) / distortion.pixels
            better = gain < best
            best[better], step[better] = gain[better], d
        move = (step != 0) & ((parity + r) % 2 == 0)
        if frozen is not None:
            move &= ~frozen
        if not move.any():
            break
        s += np.where(move, step, 0)
    return s.astype(np.int32)


def objective(model: Model, chunk: PreparedChunk, symbols: np.ndarray, quality: int, nbytes: int) -> float:
    """``lambda[q] * MSE + bits per pixel`` of a chunk of ``nbytes`` coding ``symbols``, as the decoder reads it."""
    distortion = _Distortion(model, chunk, quality)
    y_hat = (symbols * model.inv_gain[quality][None, :, None, None]).astype(np.float32)
    return distortion.of(model.decoder_for(quality).run(y_hat)) + 8.0 * nbytes / distortion.pixels


class _Distortion:
    """A chunk's distortion in the model's training units: squared reflectance error (the normalized error times
    each band's std) over the valid elements, replicated bands projected onto their blocks, times lambda[q]."""

    def __init__(self, model: Model, chunk: PreparedChunk, quality: int):
        self.lam = rate_distortion_lambda(model, quality)
        self.chunk = chunk
        b, bands, h, w = chunk.images.shape
        self.shape = (h, w)
        self.weight = np.broadcast_to((model.std.astype(np.float32) ** 2)[None, :, None, None], (b, bands, h, w))
        if chunk.missing is not None:
            self.weight = self.weight * chunk.valid
        self.elements = b * bands * h * w
        self.pixels = b * h * w

    def _error(self, x_hat: np.ndarray) -> np.ndarray:
        h, w = self.shape
        e = x_hat[..., :h, :w].astype(np.float64) - self.chunk.normalized[..., :h, :w]
        return project(e, self.chunk.blocks) if self.chunk.blocks is not None else e

    def of(self, x_hat: np.ndarray) -> float:
        e = self._error(x_hat)
        return self.lam * float((self.weight * e * e).sum()) / self.elements

    def error_gradient(self, x_hat: np.ndarray) -> np.ndarray:
        """d distortion / d x_hat (lambda and the mean included), zero over the padding."""
        h, w = self.shape
        e = self.weight * self._error(x_hat)
        if self.chunk.blocks is not None:
            e = project(e, self.chunk.blocks)  # the projection is its own adjoint
        out = np.zeros(x_hat.shape, np.float32)
        out[..., :h, :w] = (2.0 * self.lam / self.elements) * e
        return out


def _curvature(model: Model, graph, quality: int) -> np.ndarray:
    """(M,): per channel, the squared reflectance change (summed over bands and pixels) of one symbol step: the
    second-order term of the distortion, from impulses through the synthesis on a small canvas."""
    key = (graph.sha256, quality)
    found = _curvatures.get(key)
    if found is not None:
        return found
    m = model.latent_channels
    side = 2 * IMPULSE_SPACING
    impulses = np.zeros((m, m, side, side), np.float32)
    at = slice(IMPULSE_SPACING // 2, side, IMPULSE_SPACING)
    for c in range(m):
        impulses[c, c, at, at] = model.inv_gain[quality][c]
    count = len(range(side)[at]) ** 2
    zero = graph.run(np.zeros((1, m, side, side), np.float32))
    energy = np.empty(m)
    std2 = (model.std.astype(np.float64) ** 2)[None, :, None, None]
    for c0 in range(0, m, 32):  # a few MB per call
        response = graph.run(impulses[c0 : c0 + 32]) - zero
        energy[c0 : c0 + 32] = (std2 * response.astype(np.float64) ** 2).sum(axis=(1, 2, 3)) / count
    return _curvatures.setdefault(key, 2.0 * energy)
