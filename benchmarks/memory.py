"""Memory one chunk takes to encode and to decode, per model and chunk side: what each dask thread (or zarr
thread) needs on top of the models.

Each case runs in a fresh process: the models are loaded and one small chunk is coded first (so onnxruntime's
sessions and the package are counted in the base), then the peak resident set size is read before and after
encoding (or decoding) one 12-band uint16 chunk of the bundled sample, tiled to the side. The table gives the peak
over the base, and that over the chunk's own size. Writes benchmarks/results/memory.json and the README's
``memory`` table. Chunks larger than 1024 a side are coded in parts of at most 1024 x 1024
(``tec_zarr.pipeline.encode.PART_SIDE``), one part at a time: the 2048 rows show what that bounds.

    python benchmarks/memory.py [--sides 256 512 1024 2048]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import argument_parser, machine, publish  # noqa: E402

MODELS = ("tec-fp", "tec-hp", "tec-ctx", "tec-tt")
SIDES = (256, 512, 1024, 2048)
QUALITY = 2

# One case, in the child process: prints {"base": MB, "peak": MB} of ru_maxrss around one encode or decode.
CASE = r"""
import json, resource, sys
import numpy as np
from tec_zarr import pipeline, sample

model, side, mode, quality, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
image = sample.load_array()[1]
reps = -(-side // image.shape[-1])
image = np.ascontiguousarray(np.tile(image, (1, reps, reps))[:, :side, :side])
small = np.ascontiguousarray(image[:, :64, :64])
pipeline.decode_chunk(pipeline.encode_chunk(small, model=model, quality=quality, nodata=None))  # sessions loaded
chunk = open(path, "rb").read() if mode == "decode" else None
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
base = rss()
if mode == "encode":
    open(path, "wb").write(pipeline.encode_chunk(image, model=model, quality=quality, nodata=None))
else:
    pipeline.decode_chunk(chunk, expected_shape=image.shape)  # as zarr format 3 decodes: told the shape
print(json.dumps({"base": base, "peak": rss()}))
"""


def measure(model: str, side: int, mode: str, path: Path) -> dict:
    """Peak RSS over the base (MB) of one encode (which writes the chunk to ``path``) or decode (of ``path``), each
    in a fresh process."""
    out = subprocess.run([sys.executable, "-c", CASE, model, str(side), mode, str(QUALITY), str(path)],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{model} {side} {mode} failed:\n{out.stderr}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return {"base_mb": got["base"], "peak_mb": got["peak"], "over_base_mb": got["peak"] - got["base"]}


def main(argv=None) -> int:
    p = argument_parser(__doc__, HERE / "results" / "memory.json")
    p.add_argument("--sides", type=int, nargs="+", default=list(SIDES))
    p.add_argument("--table", action="store_true", help="only print (and put in the README) the table of --out")
    args = p.parse_args(argv)
    if args.table:
        results = json.loads(args.out.read_text())
    else:
        results = {"machine": machine(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "quality": QUALITY, "cases": {}}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "chunk.bin"
            for model in MODELS:
                for side in args.sides:  # encode first: it writes the chunk the decode reads
                    results["cases"][f"{model} {side}"] = {mode: measure(model, side, mode, path)
                                                           for mode in ("encode", "decode")}
                    print(model, side, results["cases"][f"{model} {side}"], flush=True)
    publish("memory", results, args.out, table(results), readme=not args.no_readme)
    return 0


def table(results: dict) -> str:
    lines = ["| model | chunk (12 bands, uint16) | chunk MB | encode: peak over the base, MB (x chunk) | decode, MB (x chunk) |",
             "|---|---|---:|---:|---:|"]
    for key, case in results["cases"].items():
        model, side = key.rsplit(" ", 1)
        chunk_mb = 12 * int(side) ** 2 * 2 / 2**20
        cells = [f"{case[m]['over_base_mb']:.0f} ({case[m]['over_base_mb'] / chunk_mb:.0f}x)" for m in ("encode", "decode")]
        lines.append(f"| {model} | {side} x {side} | {chunk_mb:.1f} | " + " | ".join(cells) + " |")
    base = max(c["encode"]["base_mb"] for c in results["cases"].values())
    lines += ["", f"Quality {results['quality']}. Chunks above 1024 a side are coded in parts of at most 1024 x 1024, one "
              "at a time (chunk format version 5). The base (the interpreter, the package and one model's onnxruntime "
              f"sessions) is at most {base:.0f} MB. Measured {results['date']} on {results['machine']}."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
