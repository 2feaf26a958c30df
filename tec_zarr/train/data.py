"""Real Sentinel-2 training data from ``../shared/data`` (see its README), split by place.

Every image becomes float32 reflectance (DN / 10000) in the L2A band order of :data:`tec_zarr.bands.S2_L2A_BANDS`.
L1C scenes drop B10. Whole places are held out for validation, so validation measures generalisation, not recall.

The same images also travel as one packed ``.npz`` (:mod:`tec_zarr.train.pack`): ``load_images`` takes either,
and the packed form needs neither rasterio nor the shared folder (a GPU machine sees only the repository).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEASONAL = "s2l2a_ssl4eo_seasonal"
# Two whole places (4 dates each) never seen in training: suburban California and the Dominican Republic.
VALIDATION_PLACES = ("0173706", "0181476")
L1C_B10 = 10  # index of B10 in the 13-band L1C order
# The 100 m desert tile: a source unlike the seasonal set, so the burst trainer keeps it out of training and
# validates on it instead (the shipped tec-fp did train on it).
OUT_OF_SOURCE_PLACE = "29RKH"
OUT_OF_SOURCE_DIR = "s2l2a_tile_100m_riotilerpds"


@dataclass
class Image:
    name: str
    place: str
    reflectance: np.ndarray  # (12, H, W) float32


def _read_tif(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        return src.read()


def load_images(root: Path) -> list[Image]:
    """Every image of the shared folder ``root``, or the training and validation images of a packed ``.npz``."""
    root = Path(root)
    if root.suffix == ".npz":
        return [im for im, _ in _read_packed(root, ("train", "val"))]
    if not (root / SEASONAL).is_dir():
        raise FileNotFoundError(f"Expected the shared Sentinel-2 data under {root}. Got no {SEASONAL}/ there instead.")
    images: list[Image] = []
    for path in sorted((root / SEASONAL).glob("ssl4eos12_val_*.tif")):
        place = path.stem.split("_")[2]
        images.append(Image(path.stem, place, _read_tif(path).astype(np.float32) / 1e4))
    for path in sorted((root / "s2l1c_ssl4eo_examples").glob("*_13band_10m.tif")):
        dn = np.delete(_read_tif(path), L1C_B10, axis=0)
        images.append(Image(path.stem, path.stem.split("_")[-3], dn.astype(np.float32) / 1e4))
    npz = root / "s2l1c_cloudy_s2cloudless" / "s2cloudless_test_scene_l1c.npz"
    if npz.exists():
        dn = np.delete(np.load(npz)["bands"], L1C_B10, axis=0)
        images.append(Image("s2cloudless_scene", "s2cloudless", dn.astype(np.float32) / 1e4))
    for path in sorted((root / OUT_OF_SOURCE_DIR).glob("*_12band_100m.tif")):
        images.append(Image(path.stem, OUT_OF_SOURCE_PLACE, _read_tif(path).astype(np.float32) / 1e4))
    return images


def out_of_source_crops(root: Path, size: int = 256) -> np.ndarray:
    """The desert tile as non-overlapping ``size`` squares (N, 12, size, size) float32 reflectance.

    From a packed ``.npz`` the crops it holds; from the shared folder a grid from the tile's top-left corner.
    Empty (0, 12, size, size) when the source has no such tile.
    """
    root = Path(root)
    if root.suffix == ".npz":
        crops = [im.reflectance for im, _ in _read_packed(root, ("ood",))]
    else:
        crops = []
        for path in sorted((root / OUT_OF_SOURCE_DIR).glob("*_12band_100m.tif")):
            crops += list(grid_crops(_read_tif(path).astype(np.float32) / 1e4, size))
    return np.stack(crops).astype(np.float32) if crops else np.zeros((0, 12, size, size), np.float32)


def grid_crops(image: np.ndarray, size: int) -> np.ndarray:
    """Non-overlapping ``size`` squares of (bands, H, W), row by row from the top-left corner."""
    rows, cols = image.shape[1] // size, image.shape[2] // size
    return np.stack([image[:, i * size : (i + 1) * size, j * size : (j + 1) * size]
                     for i in range(rows) for j in range(cols)])


def packed_entries(train: list[Image], val: list[Image], ood: np.ndarray, size: int = 256) -> list:
    """What :func:`tec_zarr.train.pack.write` stores: the training images whole, the validation images as their
    ``validation_crops`` and the out-of-source crops ``ood`` (N, 12, size, size), all as uint16 DN."""
    from .pack import Entry

    def dn(refl: np.ndarray) -> np.ndarray:
        d = np.rint(np.asarray(refl, np.float64) * 1e4)
        if d.min() < 0 or d.max() > 65535:
            raise ValueError(f"Expected DN in [0, 65535] for uint16 packing. Got [{d.min()}, {d.max()}] instead.")
        return d.astype(np.uint16)

    entries = [Entry(im.name, im.place, "train", dn(im.reflectance)) for im in train]
    entries += [Entry(im.name, im.place, "val", dn(c)) for im, c in zip(val, validation_crops(val, size))]
    entries += [Entry(f"{OUT_OF_SOURCE_PLACE}_crop{i:02d}", OUT_OF_SOURCE_PLACE, "ood", dn(c))
                for i, c in enumerate(ood)]
    return entries


def _read_packed(path: Path, roles: tuple[str, ...]) -> list[tuple[Image, str]]:
    from . import pack

    return [(Image(e.name, e.place, e.dn.astype(np.float32) / 1e4), e.role) for e in pack.read(path, roles)]


def split(images: list[Image]) -> tuple[list[Image], list[Image]]:
    train = [im for im in images if im.place not in VALIDATION_PLACES]
    val = [im for im in images if im.place in VALIDATION_PLACES]
    return train, val


def band_statistics(images: list[Image]) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation of reflectance over all training pixels (each image weighted by area)."""
    stacked = np.concatenate([im.reflectance.reshape(im.reflectance.shape[0], -1) for im in images], axis=1)
    return stacked.mean(axis=1).astype(np.float32), stacked.std(axis=1).astype(np.float32)


def block_klt(images: list[Image], mean: np.ndarray, std: np.ndarray, block: int, components: int) -> np.ndarray:
    """Principal axes of normalized (bands, block, block) blocks: (bands * block**2, components), largest first."""
    rows = []
    for im in images:
        x = (im.reflectance - mean[:, None, None]) / std[:, None, None]
        c, h, w = x.shape
        h, w = h // block * block, w // block * block
        b = x[:, :h, :w].reshape(c, h // block, block, w // block, block).transpose(1, 3, 0, 2, 4)
        rows.append(b.reshape(-1, c * block * block).astype(np.float64))
    stacked = np.concatenate(rows)
    _, vectors = np.linalg.eigh(stacked.T @ stacked / len(stacked))
    return np.ascontiguousarray(vectors[:, ::-1][:, :components]).astype(np.float32)


class CropSampler:
    """Random crops with flips and 90-degree rotations; images drawn with equal probability."""

    def __init__(self, images: list[Image], crop: int, seed: int):
        self.images = [im.reflectance for im in images if min(im.reflectance.shape[1:]) >= crop]
        self.crop = crop
        self.rng = np.random.default_rng(seed)

    def draw(self, size: int) -> list[tuple[int, int, int, int, bool]]:
        """Per crop (image index, top, left, quarter turns, flip), in the order the Generator draws them."""
        draws = []
        for _ in range(size):
            index = int(self.rng.integers(len(self.images)))
            img = self.images[index]
            y = int(self.rng.integers(img.shape[1] - self.crop + 1))
            x = int(self.rng.integers(img.shape[2] - self.crop + 1))
            draws.append((index, y, x, int(self.rng.integers(4)), bool(self.rng.integers(2))))
        return draws

    def batch(self, size: int) -> np.ndarray:
        out = np.empty((size, self.images[0].shape[0], self.crop, self.crop), np.float32)
        for i, (index, y, x, turns, flip) in enumerate(self.draw(size)):
            patch = np.rot90(self.images[index][:, y : y + self.crop, x : x + self.crop], k=turns, axes=(1, 2))
            out[i] = patch[:, :, ::-1] if flip else patch
        return out

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def restore(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def validation_crops(images: list[Image], size: int = 256) -> np.ndarray:
    """The top-left ``size`` square of each validation image (TerraCodec's own convention)."""
    return np.stack([im.reflectance[:, :size, :size] for im in images])
