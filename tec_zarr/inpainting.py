"""Zero-shot cloud inpainting: masked pixels of a (T, 12, H, W) cube predicted from the dates around them through the
codec's analysis and synthesis transforms; clear pixels come back exactly.

No network is trained for it. Per date, with a *reference* date already complete (the order is below):

1. **Latent route (the codec).** The analysis transform of the target date (its masked pixels first filled ring by
   ring from their clear neighbours, :func:`~tec_zarr.pipeline.prepare.fill_missing`, as the encoder fills nodata)
   and of the reference gives latents ``y_t`` and ``y_r`` (192 channels at 1/4 resolution). On the latent
   positions whose 4 x 4 block and the 8 blocks around it hold no masked pixel, one linear map ``y_t = W y_r + b``
   over all channels (192 x 192 and 192) is fitted by ridge regression shrunk toward ``W = I, b = 0``. At the
   positions whose block holds a masked pixel the latents become ``W y_r + b`` plus the map's residual averaged
   over the clear positions within 8 latents (weighted, shrunk toward 0 where few are clear), and the synthesis
   transform turns the latents back into pixels.
2. **Pixel route.** A ridge-regularized linear map from the reference's 3 x 3 neighbourhood in all 12 bands (108
   values) to the target's 12 bands, fitted on the target's clear pixels (shrunk toward the reference itself).
3. ``method="hybrid"`` (the default) fills masked pixels with the mean of the two routes, ``"latent"`` with the
   latent route alone, ``"pixel"`` with the pixel route alone (no codec model at all). The default is a hybrid:
   half of each masked value comes from plain pixel regression, not from the codec. ``benchmarks/inpaint.py``
   measures all three.

Order: the *anchor* is the date with the fewest masked pixels (the earliest of equals). Later dates take the
completed date before them as reference, earlier dates the completed date after them, so clouds of one date are
filled from the nearest date already filled. The anchor, where it has masked pixels, takes the next clearest date
(its own masked pixels filled spatially, as above) as reference. A cube of one date is filled from spatial context
alone: the filled image through the analysis and synthesis transforms. The transforms are those of ``model``
(tec-ctx and tec-tt share tec-fp's), run unquantized; the entropy models are not used.

Memory: the input and output cubes plus a few copies of one date; the regressions accumulate their sums in row
blocks. Nothing here imports torch.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidInputError, UnknownModelError
from .models import Model, load_model
from .dn_offset import SENTINEL2_DN_OFFSET
from .parsing import parse_dn_offset, parse_float_scale
from .pipeline.prepare import DN_PER_REFLECTANCE, SUPPORTED_DTYPES, fill_missing, pad, saturated_elements, union

METHODS = ("hybrid", "latent", "pixel")
DEFAULT_MODEL = "tec-ctx"
# Ridge strength, per fitted sample, toward the identity map; PRIOR_SAMPLES more samples' worth toward it, so a date
# with (almost) no clear pixel keeps the reference's values. Chosen on the held-out places (benchmarks/inpaint.py).
LATENT_RIDGE = 1e-3
PIXEL_RIDGE = 1e-2
PRIOR_SAMPLES = 64
RESIDUAL_REACH = 4  # latents: two box passes of radius 4 spread the residual over about 8 latents
ROWS_PER_BLOCK = 8192  # samples per block when the regressions accumulate their sums or predict


def parse_method(method: str) -> str:
    if method not in METHODS:
        raise InvalidInputError(f"Expected a method in {METHODS}. Got {method!r} instead.")
    return method


def parse_cube(cube, mask, bands: int) -> tuple[np.ndarray, np.ndarray]:
    """The cube (T, bands, H, W) of a supported dtype and its bool mask (T, H, W), or an InvalidInputError."""
    if not isinstance(cube, np.ndarray):
        raise InvalidInputError(f"Expected a numpy array cube. Got {type(cube).__name__} instead.")
    if np.dtype(cube.dtype).newbyteorder("=") not in SUPPORTED_DTYPES:
        raise InvalidInputError(f"Expected a uint16, int16 or float32 cube. Got {cube.dtype} instead.")
    if cube.ndim != 4 or cube.shape[1] != bands or 0 in cube.shape:
        raise InvalidInputError(f"Expected a cube of shape (T, {bands}, H, W) with bands on axis 1. Got shape "
                                f"{cube.shape} instead.")
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
        got = mask.dtype if isinstance(mask, np.ndarray) else type(mask).__name__
        raise InvalidInputError(f"Expected a bool mask (True = cloud or missing). Got {got} instead.")
    expected = (cube.shape[0], *cube.shape[2:])
    if mask.shape != expected:
        raise InvalidInputError(f"Expected a mask of shape {expected} (T, H, W). Got {mask.shape} instead.")
    if mask.all():
        raise InvalidInputError("Expected a clear pixel in some date. Got a mask covering the whole cube instead.")
    if cube.dtype.kind == "f" and not np.isfinite(cube[~mask[:, None].repeat(bands, axis=1)]).all():
        raise InvalidInputError("Expected finite values at the clear pixels. Got NaN or infinity there instead: "
                                "mask them.")
    return cube.astype(cube.dtype.newbyteorder("="), copy=False), mask


def inpaint(cube: np.ndarray, mask: np.ndarray, *, model: str | Model = DEFAULT_MODEL, method: str = "hybrid",
            float_scale: float = 1e4, dn_offset: int = 0) -> np.ndarray:
    """A copy of ``cube`` (T, 12, H, W; uint16, int16 DN or float32 x ``float_scale`` = DN) whose pixels under
    ``mask`` (bool, T, H, W; True = cloud or missing) are predicted from the other dates and the clear pixels
    around them (see the module's description); the other pixels are the input's, bit for bit. ``dn_offset``: the
    DN of reflectance 0 (Sentinel-2 from processing baseline 04.00 on: 1000)."""
    if isinstance(model, str):
        model = load_model(model)
    if model.latent_channels <= 0 or model.multiple % model.latent_stride:
        raise UnknownModelError(f"Expected a model with a latent grid. Got {model.name} instead.")
    method = parse_method(method)
    cube, mask = parse_cube(cube, mask, len(model.bands))
    scale = parse_float_scale(float_scale) if cube.dtype.kind == "f" else 1.0
    offset = parse_dn_offset(dn_offset)
    out = cube.copy()
    counts = mask.reshape(mask.shape[0], -1).sum(axis=1)
    anchor = int(np.argmin(counts))
    filler = _Filler(model, method, scale, offset)
    if mask.shape[0] == 1:
        out[0] = filler.spatial(cube[0], mask[0], out.dtype)
        return out
    others = [t for t in np.argsort(counts, kind="stable") if t != anchor]
    done = {anchor: filler.date(cube[anchor], mask[anchor], cube[others[0]], mask[others[0]], out.dtype)}
    out[anchor] = done[anchor]
    for t in [*range(anchor + 1, cube.shape[0]), *range(anchor - 1, -1, -1)]:
        ref = t - 1 if t > anchor else t + 1
        out[t] = filler.date(cube[t], mask[t], out[ref], None, out.dtype)
    return out


class _Filler:
    """One model's transforms and one method, applied date by date."""

    def __init__(self, model: Model, method: str, scale: float, offset: int = 0):
        self.model, self.method, self.scale = model, method, scale
        # data DN = reflectance x 10000 + offset: the offset is a shift of the model's mean
        self.mean = (model.mean + np.float32(offset / DN_PER_REFLECTANCE))[:, None, None]
        self.std = model.std[:, None, None]

    def normalized(self, image: np.ndarray, missing: np.ndarray | None) -> np.ndarray:
        """The image as the transforms take it, its ``missing`` pixels and saturated elements (DN 65535, no
        reflectance) filled from their surroundings."""
        x = image.astype(np.float32) * np.float32(self.scale / DN_PER_REFLECTANCE)
        x = np.where(np.isfinite(x), x, np.float32(0))
        x = (x - self.mean) / self.std
        unusable = saturated_elements(image[None], None, self.scale)
        if missing is not None:
            unusable = union(unusable, np.broadcast_to(missing, x.shape)[None])
        if unusable is not None and unusable.any():
            fill_missing(x[None], unusable.copy())
        return x.astype(np.float32)

    def units(self, x: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """Filled values in data units, never 0 (Sentinel-2's NO_DATA and the codec's default nodata: the pixel would
        read back as missing) nor below the lowest valid DN: 1 in uint16, 1 - 1000 in signed and float data (DN with
        the +1000 offset taken off reach that far)."""
        values = (x * self.std + self.mean) * np.float32(DN_PER_REFLECTANCE / self.scale)
        lowest = (1 if dtype.kind == "u" else 1 - SENTINEL2_DN_OFFSET) / self.scale
        if dtype.kind == "f":
            out = np.clip(values, np.float32(lowest), np.finfo(dtype).max).astype(dtype)
        else:
            out = np.clip(np.rint(values), int(lowest), np.iinfo(dtype).max).astype(dtype)
        out[out == 0] = np.asarray(1 / self.scale).astype(dtype)  # one DN up, off NO_DATA
        return out

    def analysis(self, x: np.ndarray) -> np.ndarray:
        padded, _ = pad(x[None], self.model.multiple)
        return self.model.encoder.run(padded)[0]

    def synthesis(self, y: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        # Unquantized latents: the synthesis of the highest quality inverts the analysis most closely.
        decoder = self.model.decoder_for(self.model.qualities - 1)
        return decoder.run(np.ascontiguousarray(y[None], dtype=np.float32))[0][:, : shape[0], : shape[1]]

    def spatial(self, image: np.ndarray, missing: np.ndarray, dtype: np.dtype) -> np.ndarray:
        x = self.normalized(image, missing)
        filled = self.synthesis(self.analysis(x), missing.shape)
        return np.where(missing[None], self.units(filled, dtype), image)

    def date(self, image: np.ndarray, missing: np.ndarray, reference: np.ndarray, reference_missing: np.ndarray | None,
             dtype: np.dtype) -> np.ndarray:
        """``image`` with its ``missing`` pixels predicted from the (complete, or spatially filled where
        ``reference_missing``) ``reference``."""
        if not missing.any():
            return image
        target = self.normalized(image, missing)
        ref = self.normalized(reference, reference_missing)
        if self.method == "pixel":
            filled = pixel_route(target, ref, missing)
        elif self.method == "latent":
            filled = self.latent_route(target, ref, missing)
        else:
            filled = 0.5 * (self.latent_route(target, ref, missing) + pixel_route(target, ref, missing))
        return np.where(missing[None], self.units(filled, dtype), image)

    def latent_route(self, target: np.ndarray, ref: np.ndarray, missing: np.ndarray) -> np.ndarray:
        y_t, y_r = self.analysis(target), self.analysis(ref)
        stride = self.model.latent_stride
        touched = latent_blocks(missing, y_t.shape[1:], stride)
        clear = ~grow(touched)
        c = y_t.shape[0]
        features = y_r.reshape(c, -1)
        weights = ridge(features, y_t.reshape(c, -1), clear.reshape(-1), LATENT_RIDGE, np.eye(c))
        predicted = affine(features, weights).reshape(y_t.shape)
        predicted += local_mean((y_t - predicted) * clear, clear, RESIDUAL_REACH)
        return self.synthesis(np.where(touched[None], predicted, y_t), missing.shape)


def pixel_route(target: np.ndarray, ref: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """The target's bands from a linear map of the reference's 3 x 3 neighbourhoods, fitted on clear pixels."""
    bands, h, w = ref.shape
    padded = np.pad(ref, ((0, 0), (1, 1), (1, 1)), mode="edge")
    taps = [padded[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    features = np.concatenate(taps).reshape(9 * bands, -1)
    prior = np.zeros((9 * bands, bands))
    prior[4 * bands : 5 * bands] = np.eye(bands)  # the centre tap: the reference itself
    weights = ridge(features, target.reshape(bands, -1), ~missing.reshape(-1), PIXEL_RIDGE, prior)
    return affine(features, weights).reshape(bands, h, w)


def ridge(x: np.ndarray, y: np.ndarray, fit: np.ndarray, strength: float, prior: np.ndarray) -> np.ndarray:
    """(F + 1, C) weights (last row: the offset) of ``y ~ W^T x + b`` for ``x`` (F, N) and ``y`` (C, N) over the
    samples where ``fit`` (N,), minimizing the squared error plus ``strength * (n + PRIOR_SAMPLES) * |W -
    prior|^2`` (n fitted samples; b shrunk toward 0 with a millionth of that), so few samples give the prior map."""
    f, n = x.shape
    gram = np.zeros((f + 1, f + 1))
    cross = np.zeros((f + 1, y.shape[0]))
    for start in range(0, n, ROWS_PER_BLOCK):
        part = slice(start, start + ROWS_PER_BLOCK)
        w = fit[part].astype(np.float64)
        xs = np.concatenate([x[:, part], np.ones((1, w.size), x.dtype)]).astype(np.float64)
        weighted = xs * w
        gram += weighted @ xs.T
        cross += weighted @ y[:, part].astype(np.float64).T
    penalty = strength * (int(fit.sum()) + PRIOR_SAMPLES) * np.r_[np.ones(f), 1e-6]
    target = np.concatenate([prior, np.zeros((1, y.shape[0]))])
    return np.linalg.solve(gram + np.diag(penalty), cross + penalty[:, None] * target)


def affine(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``W^T x + b`` of (F, N) samples, in blocks: (C, N) float32."""
    out = np.empty((weights.shape[1], x.shape[1]), np.float32)
    for start in range(0, x.shape[1], ROWS_PER_BLOCK):
        part = slice(start, start + ROWS_PER_BLOCK)
        out[:, part] = weights[:-1].T @ x[:, part].astype(np.float64) + weights[-1][:, None]
    return out


def latent_blocks(missing: np.ndarray, latent: tuple[int, int], stride: int) -> np.ndarray:
    """(h, w) True where a latent's ``stride`` x ``stride`` block holds a masked pixel (edge padding counts as
    clear)."""
    h, w = latent
    padded = np.zeros((h * stride, w * stride), bool)
    padded[: missing.shape[0], : missing.shape[1]] = missing
    return padded.reshape(h, stride, w, stride).any(axis=(1, 3))


def grow(mask: np.ndarray) -> np.ndarray:
    """``mask`` and its 8 neighbours."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    return np.logical_or.reduce([padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)])


def box_sum(x: np.ndarray, radius: int) -> np.ndarray:
    """Sums over (2 radius + 1)^2 windows on the last two axes, zero outside."""
    for axis in (-1, -2):
        moved = np.moveaxis(x, axis, -1)
        widths = [(0, 0)] * (moved.ndim - 1) + [(radius + 1, radius)]
        sums = np.cumsum(np.pad(moved, widths), axis=-1)
        x = np.moveaxis(sums[..., 2 * radius + 1 :] - sums[..., : -2 * radius - 1], -1, axis)
    return x


def local_mean(values: np.ndarray, weight: np.ndarray, radius: int) -> np.ndarray:
    """Weighted window mean (two box passes) of ``values`` (zero where ``weight`` is 0), shrunk toward 0 by half a
    full window's weight, so it fades where few weighted positions are near."""
    w = weight.astype(np.float32)
    num = box_sum(box_sum(values.astype(np.float32), radius), radius)
    den = box_sum(box_sum(w, radius), radius)
    full = float((2 * radius + 1) ** 4)
    return num / (den + 0.5 * full)
