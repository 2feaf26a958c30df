"""TEC inside dask.distributed worker processes: same bytes as one process, one session per worker and model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

distributed = pytest.importorskip("distributed")

from tec_zarr import sample, zarr_encoding  # noqa: E402


def _sessions_in_this_process() -> int:
    from tec_zarr.runtime import onnx

    return len(onnx._sessions)


def _chunk_files(store: Path, var: str) -> dict[str, bytes]:
    meta = {"zarr.json", ".zarray", ".zattrs"}
    root = store / var
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file() and f.name not in meta}


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                       silence_logs=50)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_distributed_round_trip_matches_single_process(client, tmp_path, zarr_format):
    ds = sample.load_dataset().isel(x=slice(0, 200), y=slice(0, 136))
    enc = zarr_encoding(ds, zarr_format=zarr_format, chunks={"time": 1, "y": 64, "x": 64})

    local = tmp_path / "local.zarr"  # numpy-backed: written in this process, no dask involved
    ds.to_zarr(local, zarr_format=zarr_format, encoding=enc, consolidated=False)

    remote = tmp_path / "remote.zarr"
    lazy = ds.chunk({"time": 1, "band": 12, "y": 64, "x": 64})
    lazy.to_zarr(remote, zarr_format=zarr_format, encoding=zarr_encoding(lazy, zarr_format=zarr_format,
                 chunks={"time": 1, "y": 64, "x": 64}), consolidated=False)

    assert _chunk_files(remote, "reflectance") == _chunk_files(local, "reflectance")
    back = xr.open_zarr(remote, consolidated=False)["reflectance"].compute()
    expected = xr.open_zarr(local, consolidated=False)["reflectance"].values
    np.testing.assert_array_equal(back.values, expected)

    # every worker that ran chunks built its sessions once: the encoder and the decoder of one model
    counts = client.run(_sessions_in_this_process)
    assert all(n <= 2 for n in counts.values()) and any(n > 0 for n in counts.values())


def test_store_written_by_workers_is_a_plain_zarr(client, tmp_path):
    ds = sample.load_dataset().isel(time=slice(0, 2), x=slice(0, 64), y=slice(0, 64))
    lazy = ds.chunk({"time": 1, "band": 12})
    path = tmp_path / "w.zarr"
    lazy.to_zarr(path, zarr_format=3, encoding=zarr_encoding(lazy, zarr_format=3), consolidated=False)
    arr = zarr.open_array(path / "reflectance", mode="r")
    assert arr.metadata.codecs[0].to_dict()["name"] == "tec_zarr.tec"


def _die_once(block, flag):
    """Kill this worker process the first time any task runs; dask must retry the task elsewhere."""
    import os

    if block.size and not os.path.exists(flag):  # size 0: dask probing the function in the client
        with open(flag, "w"):
            pass
        os._exit(1)
    return block


def test_worker_killed_mid_write_is_retried(client, tmp_path):
    import sys

    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ds = sample.load_dataset().isel(time=slice(0, 2), x=slice(0, 128), y=slice(0, 128))
    lazy = ds.chunk({"time": 1, "band": 12, "y": 64, "x": 64})
    flag = tmp_path / "killed-once"
    data = lazy["reflectance"].data.map_blocks(_die_once, flag=str(flag), meta=np.empty((0,) * 4, np.uint16))
    lazy["reflectance"] = lazy["reflectance"].copy(data=data)
    path = tmp_path / "retry.zarr"
    lazy.to_zarr(path, zarr_format=3, encoding=zarr_encoding(lazy, zarr_format=3, chunks={"time": 1, "y": 64, "x": 64}),
                 consolidated=False)
    assert flag.exists()  # a worker really died
    back = xr.open_zarr(path, consolidated=False)["reflectance"].values
    single = ds["reflectance"].values
    from tec_zarr import metrics

    assert back.shape == single.shape and metrics.mean_psnr(single, back) > 41.2  # measured 42.4 dB
