"""Entropy models of the latent symbols, all behind :class:`~.base.LatentCoder`.

The manifest's ``"entropy_model"`` names the coder; :data:`LATENT_CODERS` maps names to coder classes, so a new
coder is one class and one entry here. Every probability comes from integers (:mod:`.tables`), so decoders on all
machines agree bit for bit.
"""

from .base import LatentCoder
from .context import ContextCoder
from .elic import ElicCoder
from .factorized import FactorizedCoder
from .hyperprior import HyperpriorCoder
from .tables import EntropyTables
from .temporal import TemporalCoder

LATENT_CODERS: dict[str, type[LatentCoder]] = {
    c.name: c for c in (FactorizedCoder, HyperpriorCoder, ContextCoder, TemporalCoder, ElicCoder)
}

__all__ = ["LATENT_CODERS", "ContextCoder", "ElicCoder", "EntropyTables", "FactorizedCoder", "HyperpriorCoder", "LatentCoder",
           "TemporalCoder"]
