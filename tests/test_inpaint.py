"""``tec_zarr.inpaint`` and ``tec inpaint``: clear pixels untouched, masked pixels closer to the truth than trivial
fills on a real crop, dtypes, the package's errors for bad input, a Zarr round trip through the command."""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import xarray as xr

from tec_zarr import cli
from tec_zarr.bands import S2_L2A_BANDS
from tec_zarr.cli.failures import CommandError
from tec_zarr.cli.inpaint import add_parser, cmd_inpaint
from tec_zarr.errors import InvalidInputError, TecZarrError
from tec_zarr.inpainting import METHODS, inpaint

SIZE = 64


@pytest.fixture(scope="module")
def crop(cube) -> np.ndarray:
    """Dates 0 and 1 (both clear) of the bundled place, top-left 64 x 64 (uint16)."""
    return np.ascontiguousarray(cube[:2, :, :SIZE, :SIZE])


@pytest.fixture(scope="module")
def clouds() -> np.ndarray:
    """Two blobs on date 1, 13 % of it; date 0 clear."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    mask = np.zeros((2, SIZE, SIZE), bool)
    mask[1] = ((yy - 20) ** 2 + (xx - 22) ** 2 < 12**2) | ((yy - 48) ** 2 + (xx - 46) ** 2 < 7**2)
    return mask


def _mse(a, b, where) -> float:
    return float(np.mean((a.astype(np.float64)[:, where] - b.astype(np.float64)[:, where]) ** 2))


@pytest.mark.parametrize("method", METHODS)
def test_clear_pixels_exact_and_masked_pixels_closer_than_trivial_fills(crop, clouds, method):
    out = inpaint(crop, clouds, method=method)
    assert out.dtype == crop.dtype and out.shape == crop.shape
    clear = ~clouds[:, None].repeat(12, axis=1)
    assert np.array_equal(out[clear], crop[clear])
    hole = clouds[1]
    assert (out[1][:, hole] != crop[1][:, hole]).mean() > 0.9  # predicted, not copied from the (hidden) truth
    truth = crop[1]
    previous = crop[0]  # the previous date as it is
    band_means = np.broadcast_to(truth[:, ~hole].mean(axis=1)[:, None, None], truth.shape)
    err = _mse(out[1], truth, hole)
    assert err < 0.5 * _mse(previous, truth, hole)
    assert err < 0.5 * _mse(band_means, truth, hole)


def test_the_hybrid_uses_the_codec_route(crop, clouds):
    """The default mixes the latent and pixel routes: it differs from each alone."""
    hybrid, latent, pixel = (inpaint(crop, clouds, method=m)[1][:, clouds[1]] for m in ("hybrid", "latent", "pixel"))
    assert not np.array_equal(hybrid, latent) and not np.array_equal(hybrid, pixel)
    mean = 0.5 * (latent.astype(np.float64) + pixel)
    assert np.abs(hybrid - mean).max() <= 1.0  # rounding of each route to DN


@pytest.mark.parametrize("dtype, scale, lowest", [("uint16", 1.0, 1), ("int16", 1.0, -999), ("float32", 1e4, -999),
                                                  ("float32", 1.0, -999)])
def test_filled_values_are_valid_reflectance(dtype, scale, lowest):
    """Predictions far below any reflectance (dark water and shadow next to clouds) are written as the lowest valid
    DN (1 in uint16; 1 - 1000 where data with the +1000 offset taken off go negative), and a prediction of 0 as 1:
    never 0, Sentinel-2's NO_DATA and the codec's default nodata, which would read back as missing. Before, uint16
    fills held 0 at such places."""
    from tec_zarr.inpainting import _Filler
    from tec_zarr.models import load_model

    model = load_model("tec-fp")
    filler = _Filler(model, "latent", scale)
    x = np.zeros((12, 2, 2), np.float32)  # the mean: a plain value, kept
    x[:, 0, 0] = -500.0  # far below every band's mean
    x[:, 1, 0] = -(filler.mean / filler.std)[:, 0, 0]  # reflectance 0
    out = filler.units(x, np.dtype(dtype)).astype(np.float64) * scale  # in DN
    np.testing.assert_allclose(out[:, 0, 0], lowest, rtol=1e-3)
    assert (out[:, 1, 0] != 0).all() and (np.abs(out[:, 1, 0]) <= 1.5).all()
    assert (out[:, 1, 1] > 100).all()


@pytest.mark.parametrize("dtype", ["int16", "float32", ">u2"])
def test_dtypes(crop, clouds, dtype):
    data = crop.astype(np.float32) / 1e4 if dtype == "float32" else crop.astype(dtype)
    if dtype == "float32":
        data[1][:, clouds[1]] = np.nan  # masked pixels may hold anything
    out = inpaint(data, clouds)
    assert out.dtype == np.dtype(dtype).newbyteorder("=")
    clear = ~clouds[:, None].repeat(12, axis=1)
    assert np.array_equal(out[clear], data[clear])
    assert np.isfinite(out.astype(np.float64)).all()
    reference = inpaint(crop, clouds)
    scale = 1e4 if dtype == "float32" else 1
    assert np.abs(out.astype(np.float64) * scale - reference).max() <= 2.0


def test_any_size_first_date_cloudy_and_one_date(cube):
    data = np.ascontiguousarray(cube[:3, :, :37, :53])
    mask = np.zeros((3, 37, 53), bool)
    mask[0, 5:20, 10:30] = True  # the first date: filled from the date after it
    mask[2, 20:, 40:] = True
    out = inpaint(data, mask)
    assert np.array_equal(out[:, :, ~mask.any(axis=0)], data[:, :, ~mask.any(axis=0)])
    for t in (0, 2):
        assert _mse(out[t], data[t], mask[t]) < _mse(data[1], data[t], mask[t])
    single = inpaint(data[:1], mask[:1])  # spatial context only
    assert single.shape == data[:1].shape
    assert np.array_equal(single[0][:, ~mask[0]], data[0][:, ~mask[0]])


def test_a_date_masked_whole_takes_the_reference(crop):
    mask = np.zeros((2, SIZE, SIZE), bool)
    mask[1] = True
    out = inpaint(crop, mask)
    assert _mse(out[1], crop[1], mask[1]) < 2 * _mse(crop[0], crop[1], mask[1])


@pytest.mark.parametrize("cube_of, mask_of, match", [
    (lambda c: c[0], lambda m: m, "Expected a cube of shape"),
    (lambda c: c[:, :11], lambda m: m, "Expected a cube of shape"),
    (lambda c: c.astype(np.float64), lambda m: m, "Expected a uint16, int16 or float32 cube"),
    (lambda c: c.tolist(), lambda m: m, "Expected a numpy array cube"),
    (lambda c: c, lambda m: m[:, :-1], "Expected a mask of shape"),
    (lambda c: c, lambda m: m.astype(np.uint8), "Expected a bool mask"),
    (lambda c: c, lambda m: np.ones_like(m), "Got a mask covering the whole cube"),
    (lambda c: np.where(np.arange(SIZE) == 3, np.float32(np.nan), c.astype(np.float32)), lambda m: m,
     "Expected finite values at the clear pixels"),
])
def test_bad_input_raises_the_package_errors(crop, clouds, cube_of, mask_of, match):
    with pytest.raises(InvalidInputError, match=match) as info:
        inpaint(cube_of(crop), mask_of(clouds))
    assert " instead" in str(info.value)


def test_bad_method_and_model(crop, clouds):
    with pytest.raises(InvalidInputError, match="Expected a method in"):
        inpaint(crop, clouds, method="median")
    with pytest.raises(TecZarrError):
        inpaint(crop, clouds, model="no-such-model")


def test_inpaint_runs_with_torch_blocked():
    script = textwrap.dedent("""
        import sys

        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")

        sys.meta_path.insert(0, BlockTorch())
        import numpy as np
        import tec_zarr.cli.inpaint
        from tec_zarr import sample
        from tec_zarr.inpainting import inpaint

        cube = np.ascontiguousarray(sample.load_array()[:2, :, :32, :32])
        mask = np.zeros((2, 32, 32), bool)
        mask[1, 8:20, 8:20] = True
        assert inpaint(cube, mask).shape == cube.shape
        print("TORCH", "torch" in sys.modules)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "TORCH False" in res.stdout


# -- tec inpaint -------------------------------------------------------------------------------------------------


def _wired() -> bool:
    try:
        cli.commands.build_parser().parse_args(["inpaint", "a.zarr", "b.zarr", "--mask", "m.npy"])
    except SystemExit:
        return False
    return True


def _run(argv: list[str]) -> int:
    """``tec inpaint ...`` through the real entry point where it is wired, else through the module's own parser."""
    if _wired():
        return cli.main(["inpaint", *argv])
    parser = argparse.ArgumentParser(prog="tec")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return cmd_inpaint(parser.parse_args(["inpaint", *argv]))


@pytest.fixture()
def store(tmp_path, crop):
    data = crop[:, :, :40, :40]
    ds = xr.Dataset({"reflectance": (("time", "band", "y", "x"), data)},
                    coords={"band": list(S2_L2A_BANDS), "time": np.array(["2020-05-24", "2020-08-27"], "datetime64[ns]")})
    path = tmp_path / "cube.zarr"
    ds.to_zarr(path, zarr_format=3, consolidated=False)
    return path, data


def test_cli_round_trip_with_a_mask_and_an_scl_band(tmp_path, store, capsys):
    path, data = store
    mask = np.zeros((2, 40, 40), bool)
    mask[1, 10:25, 12:30] = True
    np.save(tmp_path / "clouds.npy", mask)
    out = tmp_path / "filled.zarr"
    assert _run([str(path), str(out), "--mask", str(tmp_path / "clouds.npy")]) == 0
    assert "filled 270 of 3200 pixels" in capsys.readouterr().out
    filled = xr.open_zarr(out)["reflectance"].values
    assert filled.dtype == data.dtype
    assert np.array_equal(filled, inpaint(data, mask))
    scl = np.where(mask, 9, 4).astype(np.uint8)  # 9: high-probability cloud, 4: vegetation
    xr.Dataset({"scl": (("time", "y", "x"), scl)}).to_zarr(tmp_path / "scl.zarr", zarr_format=3, consolidated=False)
    out2 = tmp_path / "filled2.zarr"
    assert _run([str(path), str(out2), "--mask-scl", str(tmp_path / "scl.zarr"), "--quiet"]) == 0
    assert np.array_equal(xr.open_zarr(out2)["reflectance"].values, filled)
    assert not list(tmp_path.glob("*.tmp-*"))  # written atomically: no temporary left


def test_cli_errors(tmp_path, store):
    path, _ = store
    np.save(tmp_path / "small.npy", np.zeros((2, 30, 40), bool))
    with pytest.raises(CommandError, match=r"Expected a mask of shape \(2, 40, 40\)"):
        cmd_or_main(tmp_path, [str(path), str(tmp_path / "o.zarr"), "--mask", str(tmp_path / "small.npy")])
    (tmp_path / "o.zarr").mkdir()
    with pytest.raises(CommandError, match="pass --overwrite"):
        cmd_or_main(tmp_path, [str(path), str(tmp_path / "o.zarr"), "--mask", str(tmp_path / "small.npy")])
    with pytest.raises(CommandError, match="--scl-classes"):
        cmd_or_main(tmp_path, [str(path), str(tmp_path / "p.zarr"), "--mask-scl", str(tmp_path / "small.npy"),
                               "--scl-classes", "cloud"])


def cmd_or_main(tmp_path, argv):
    parser = argparse.ArgumentParser(prog="tec")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return cmd_inpaint(parser.parse_args(["inpaint", *argv]))


@pytest.mark.skipif(not _wired(), reason="tec inpaint is not in tec_zarr.cli.commands.build_parser yet")
def test_cli_error_is_one_line(tmp_path, store, capsys):
    path, _ = store
    assert cli.main(["inpaint", str(path), str(tmp_path / "o.zarr"), "--mask", str(tmp_path / "none.npy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tec: error: Expected a readable")


def test_a_model_with_per_quality_graphs_fills_through_its_highest_quality_synthesis(crop, clouds):
    """Unquantized latents take the synthesis of the highest quality: for tec-fp-2-half, tec-fp-2's own graph, so
    both fill the same values (same encoder, same synthesis), and not those of its light graph."""
    ours, base = (inpaint(crop, clouds, model=m, method="latent") for m in ("tec-fp-2-half", "tec-fp-2"))
    np.testing.assert_array_equal(ours, base)
