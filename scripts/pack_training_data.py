"""Pack the burst trainer's data into one ``.npz`` that can travel to a machine without shared/data.

``python scripts/pack_training_data.py --data ../shared/data --out runs/burst-data.npz``

Holds, as uint16 DN (coded losslessly by ``tec_zarr.train.pack``): every training image whole (all places
except the validation places of ``tec_zarr.train.data``, and without the 100 m desert tile), the validation
images' 256x256 crops, and ``--ood-crops`` of the desert
tile's sixteen 256x256 grid crops for out-of-source validation. ``runs/`` is git-ignored.

The device machine takes the tracked files, the untracked files git does not ignore and the carried paths, 64 MiB
in all. The script adds them up; if the pack does not fit, it packs again with the training images rounded to
multiples of 2, 4, then 8 DN (at most 4 DN of error, about 1 % of the squared error the highest quality keeps) and
says so.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tec_zarr.train import data, pack  # noqa: E402

TRAVEL_LIMIT = 64 * 2**20  # the device tool's limit on what travels
MARGIN = 1 * 2**20  # room for files added to the tree after packing
# Training DN steps tried in turn until the pack fits: the tracked tree (checkpoints, models) grows over time.
FALLBACK_STEPS = (1, 2, 4, 8)


def tree_bytes(exclude: Path) -> int | None:
    """Bytes of the files that travel with a device call, except ``exclude``; None outside a git checkout."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    total = 0
    for name in {n for n in listed.decode().split("\0") if n}:
        path = REPO / name
        if path.is_file() and path.resolve() != exclude.resolve():
            total += path.stat().st_size
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="shared Sentinel-2 data folder")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "burst-data.npz")
    p.add_argument("--ood-crops", type=int, default=4, help="desert crops to keep, evenly spread over the 16")
    p.add_argument("--train-step", type=int, default=0, help="round training DN to this step (0: lossless, "
                   "or steps of 2, 4, then 8 DN where it does not fit)")
    args = p.parse_args(argv)

    size = 256
    train, val = data.split(data.load_images(args.data))
    train = [im for im in train if im.place != data.OUT_OF_SOURCE_PLACE]
    ood = data.out_of_source_crops(args.data, size)
    if len(ood) and args.ood_crops < len(ood):
        ood = ood[sorted({round(i * (len(ood) - 1) / max(args.ood_crops - 1, 1)) for i in range(args.ood_crops)})]
    entries = data.packed_entries(train, val, ood, size)
    tree = tree_bytes(args.out)
    room = None if tree is None else TRAVEL_LIMIT - MARGIN - tree

    for step in ([args.train_step] if args.train_step else FALLBACK_STEPS):
        pack.write(args.out, entries, train_step=step)
        got = args.out.stat().st_size
        print(f"{args.out}: {got / 2**20:.2f} MiB (training DN step {step}); {len(train)} training images, "
              f"{len(val)} validation crops, {len(ood)} desert crops")
        if room is None or got <= room:
            break
    if room is not None:
        print(f"travels with {tree / 2**20:.2f} MiB of repository files: {(tree + got) / 2**20:.2f} of 64 MiB")
        if got > room:
            print("error: too large to travel to the device machine; pass fewer --ood-crops or --train-step 16",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
