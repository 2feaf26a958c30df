"""One interface for every way a model's latent symbols become bytes: the chunk pipeline never asks which."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from ..errors import RefinementUnsupportedError
from ..requantize import Thinning, doubled_middle
from .tables import EntropyTables


# The moves the encoder's symbol search (:mod:`tec_zarr.pipeline.refine`) weighs: one lower, as it is, one higher.
SEARCH_STEPS = (-1, 0, 1)


class LatentCoder(ABC):
    """Codes integer latent symbols ``y_q`` (B, M, h, w) of one quality level as a chunk's payload.

    A coder is built once per model from the model's verified files (``from_files``) and is then read-only, so
    threads share it. ``encode`` may use the encoder's float latents ``y`` to choose side information (which it
    stores); ``decode`` depends on the payload and the coder's integers only, so it is the same on every machine.
    """

    name: ClassVar[str]  # the manifest's "entropy_model"
    files: ClassVar[tuple[str, ...]] = ()  # model files it reads besides tables.npz
    # Whether encode, decode and recode take ``channels``, bool (M,): the latent channels coded (the others hold
    # only 0, are left out of the payload and cost no decoding time); None: all.
    skips_channels: ClassVar[bool] = False
    # Whether :meth:`code_lengths` says what the encoder's symbol search (refine=) needs.
    refinable: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def from_files(cls, files: Mapping[str, bytes], tables: EntropyTables) -> LatentCoder:
        """The coder from verified file bytes (``files`` holds at least :attr:`files`)."""

    @abstractmethod
    def encode(self, y: np.ndarray, symbols: np.ndarray, quality: int, *, skip: np.ndarray | None = None) -> bytes:
        """The payload for int32 ``symbols`` = round(``y`` * gain[quality]), both (B, M, h, w). ``skip`` (B, h, w):
        positions not coded (their symbols must be 0); coders that :attr:`skips_channels` also take ``channels``."""

    @abstractmethod
    def decode(self, payload: bytes, quality: int, shape: tuple[int, int, int, int], *,
               skip: np.ndarray | None = None, thinning: Thinning | None = None) -> np.ndarray:
        """int32 symbols of ``shape`` (B, M, h, w), 0 where ``skip``; ``thinning``: how a thinned chunk's symbols
        came about (coders that code such chunks their own way read it). Raises
        :class:`~tec_zarr.errors.CorruptChunkError`."""

    def code_lengths(self, y: np.ndarray, symbols: np.ndarray, quality: int, *,
                     skip: np.ndarray | None = None) -> np.ndarray:
        """float32 (len(SEARCH_STEPS), B, M, h, w): about how many bits each symbol would cost moved by each of
        :data:`SEARCH_STEPS`, every other symbol as given and the side information chosen from ``y`` as
        :meth:`encode` chooses it; inf where a table would need its escape. What the encoder's symbol search
        weighs; coders that cannot say raise :class:`~tec_zarr.errors.RefinementUnsupportedError`."""
        raise RefinementUnsupportedError(f"Expected a model whose entropy model the symbol search (refine=) knows. "
                                         f"Got the {self.name!r} entropy model instead: use refine=0.")

    def recode(self, payload: bytes, y: np.ndarray, symbols: np.ndarray, source: int, thinning: Thinning, *,
               skip: np.ndarray | None = None, channels: np.ndarray | None = None,
               source_summed: bool = False) -> tuple[bytes, bool]:
        """The payload for ``symbols`` at ``thinning.levels[-1]``, requantized from a chunk at quality ``source``
        whose payload was ``payload`` (``source_summed``: its header marks it runs summed), and whether the header
        must mark the new payload runs summed. ``y`` estimates the encoder's latents (the chunk's only record of
        them); coders with side information choose it from both (:meth:`HyperpriorCoder.recode`)."""
        return self.encode(y, symbols, thinning.levels[-1], skip=skip, **channel_argument(self, channels)), False

    def decode_thinned(self, payload: bytes, quality: int, shape: tuple[int, int, int, int], *,
                       skip: np.ndarray | None, thinning: Thinning, **channels) -> tuple[np.ndarray, np.ndarray]:
        """A thinned chunk's symbols (:meth:`decode`) and, float64 (B, M, h, w), twice the top-level value each
        decodes to: the middles of their runs (coders whose model knows better say so:
        :meth:`HyperpriorCoder.decode_thinned`). ``channels``: as :meth:`decode` takes them."""
        symbols = self.decode(payload, quality, shape, skip=skip, thinning=thinning, **channels)
        return symbols, doubled_middle(symbols, thinning.chain).astype(np.float64)


def channel_argument(coder: LatentCoder, channels: np.ndarray | None) -> dict:
    """``{"channels": channels}`` for a coder that skips channels, {} for one that codes them all (``channels``
    must then be None: such a coder's chunks never mark channels as not coded)."""
    if coder.skips_channels:
        return {"channels": channels}
    if channels is not None:
        raise ValueError(f"Expected every channel coded for the {coder.name} coder. Got a channel subset instead.")
    return {}
