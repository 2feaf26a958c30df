from __future__ import annotations

import numpy as np
import pytest

from tec_zarr import sample


@pytest.fixture(scope="session")
def cube() -> np.ndarray:
    """The bundled real sample, uint16 (4, 12, 264, 264): a place no model was trained on."""
    return sample.load_array()


@pytest.fixture(scope="session")
def image(cube) -> np.ndarray:
    """One clear date, (12, 264, 264)."""
    return np.ascontiguousarray(cube[1])
