"""How a synthesis graph's pixels move with its latent input: the gradient the encoder's symbol search needs.

:mod:`tec_zarr.pipeline.refine` asks, for every symbol, which way a step of one changes the decoded pixels' error.
That is the synthesis' vector-Jacobian product, computed here in numpy from the weights of the verified graph
(read by name from its initializers, :mod:`.protobuf`), for the transforms of the GDN family every shipped TEC-FP
model decodes through::

    y_hat ──ConvTranspose 5x5/2──▶ a ──IGDN: a * sqrt(beta + gamma a**2)──▶ ──ConvTranspose 5x5/2──▶ (+) ──▶ x_hat
      └─────────────────────────── linear path: ConvTranspose 4x4/4 ─────────────────────────────────────┘

Float32 and approximate by design (no bit depends on it): the search checks what it keeps against the real
decoder and the real coder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import RefinementUnsupportedError
from ..integer.layers import KERNEL, STRIDE, deconv, deconv_matrix
from . import protobuf as pb

# Initializer names of the GDN family's synthesis, as the exporter writes them (torch parameter names).
FIRST, FIRST_BIAS = "model.g_s.0.weight", "model.g_s.0.bias"
BETA_SQRT, GAMMA_SQRT = "model.g_s.1.beta_sqrt", "model.g_s.1.gamma_sqrt"
LAST, LAST_BIAS = "model.g_s.2.weight", "model.g_s.2.bias"
LINEAR = "model.s_lin.weight"
BETA_MIN = 1e-6  # the IGDN's floor on beta (train.layers.GDN); gamma's entries are floored at 0
ROWS_PER_BLOCK = 16


@dataclass(frozen=True, eq=False)
class SynthesisGradient:
    """The GDN-family synthesis in float32 numpy, channels last, for its vector-Jacobian product."""

    first: np.ndarray  # (M, 25 * C) columns (ky, kx, c)
    first_bias: np.ndarray
    beta: np.ndarray  # (C,)
    gamma: np.ndarray  # (C, C): norm_i = sqrt(beta_i + sum_j gamma[i, j] a_j**2)
    last: np.ndarray  # (C, 25 * bands)
    linear: np.ndarray | None  # (M, block, block, bands)

    @classmethod
    def from_graph(cls, model_bytes: bytes) -> SynthesisGradient:
        weights = initializers(model_bytes, (FIRST, FIRST_BIAS, BETA_SQRT, GAMMA_SQRT, LAST, LAST_BIAS, LINEAR))
        needed = (FIRST, FIRST_BIAS, BETA_SQRT, GAMMA_SQRT, LAST, LAST_BIAS)
        missing = [n for n in needed if n not in weights]
        if missing or weights[FIRST].shape[2:] != (KERNEL, KERNEL) or weights[LAST].shape[2:] != (KERNEL, KERNEL):
            raise RefinementUnsupportedError(
                "Expected a synthesis of two 5 x 5 transposed convolutions around an IGDN (the TEC-FP family's), whose "
                f"gradient the symbol search (refine=) knows. Got a graph without {len(missing) or 'those'} of its "
                "layers instead (a light synthesis): use refine=0 with this model.")
        linear = weights.get(LINEAR)
        return cls(
            first=deconv_matrix(weights[FIRST].astype(np.float32)),
            first_bias=weights[FIRST_BIAS].astype(np.float32),
            beta=np.maximum(weights[BETA_SQRT], np.sqrt(BETA_MIN)).astype(np.float32) ** 2,
            gamma=np.maximum(weights[GAMMA_SQRT], 0).astype(np.float32) ** 2,
            last=deconv_matrix(weights[LAST].astype(np.float32)),
            linear=None if linear is None else np.ascontiguousarray(np.transpose(linear, (0, 2, 3, 1)), np.float32),
        )

    @property
    def channels(self) -> int:
        return self.first_bias.shape[0]

    def vjp(self, y_hat: np.ndarray, grad: np.ndarray) -> np.ndarray:
        """d<grad, synthesis(y_hat)> / d y_hat: ``y_hat`` (B, M, h, w), ``grad`` (B, bands, 4h, 4w) -> (B, M, h, w)."""
        r = np.ascontiguousarray(np.moveaxis(y_hat, 1, -1), np.float32)
        g = np.ascontiguousarray(np.moveaxis(grad, 1, -1), np.float32)
        a = deconv(r, self.first, self.first_bias, ROWS_PER_BLOCK, np.matmul).astype(np.float32)
        norm = np.sqrt(self.beta + (a * a) @ self.gamma.T)
        g_h = deconv_transpose(g, self.last, self.channels)  # d / d(IGDN output)
        # IGDN h_i = a_i n_i, n_i = sqrt(beta_i + sum_j gamma_ij a_j**2): dh_i/da_k = delta_ik n_i + a_i gamma_ik a_k / n_i
        g_a = g_h * norm + a * ((g_h * a / norm) @ self.gamma)
        out = deconv_transpose(g_a, self.first, r.shape[-1])
        if self.linear is not None:
            b, h, w, bands = g.shape
            k = self.linear.shape[1]
            blocks = g.reshape(b, h // k, k, w // k, k, bands)
            out += np.einsum("biyjxo,myxo->bijm", blocks, self.linear, optimize=True)
        return np.moveaxis(out, -1, 1)


def deconv_transpose(g: np.ndarray, w: np.ndarray, cin: int) -> np.ndarray:
    """The adjoint of :func:`~tec_zarr.integer.layers.deconv` (ConvTranspose 5x5, stride 2, padding 2, output
    padding 1) with ``w`` (Cin, 25 * Cout): (B, 2h, 2w, Cout) -> (B, h, w, Cin). ``out[2i + ky - 2] += in[i] w[ky]``
    makes ``d in[i] = sum_ky d out[2i + ky - 2] w[ky]``: a stride-2 correlation over the padded gradient."""
    b, h2, w2, cout = g.shape
    h, w_ = h2 // STRIDE, w2 // STRIDE
    pad = KERNEL // 2
    padded = np.zeros((b, h2 + 2 * pad, w2 + 2 * pad, cout), np.float32)
    padded[:, pad : pad + h2, pad : pad + w2] = g
    patches = np.concatenate([padded[:, ky : ky + STRIDE * h : STRIDE, kx : kx + STRIDE * w_ : STRIDE]
                              for ky in range(KERNEL) for kx in range(KERNEL)], axis=-1)
    return (patches.reshape(-1, KERNEL * KERNEL * cout) @ w.T).reshape(b, h, w_, cin)


def initializers(model_bytes: bytes, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The float32 initializers of an ONNX model that are among ``names``, by name."""
    graphs = pb.messages(pb.fields(model_bytes), pb.MODEL_GRAPH)
    if len(graphs) != 1:
        raise RefinementUnsupportedError(f"Expected an ONNX model with one graph. Got {len(graphs)} instead.")
    out = {}
    for f in graphs[0]:
        if f.number == pb.GRAPH_INITIALIZER and f.wire == pb.LENGTH:
            if set(pb.strings(pb.fields(f.value), pb.TENSOR_NAME)) & set(names):
                name, array = pb.tensor(f.value)
                out[name] = array
    return out
