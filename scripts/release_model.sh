#!/usr/bin/env bash
# Ship a trained checkpoint as the package's model, then regenerate everything that depends on its weights.
#   scripts/release_model.sh runs/tec-fp/checkpoint.pt tec-fp [version]
# Exports ONNX graphs, integer tables and the integer synthesis with measured RD in the manifest; commits the
# checkpoint and log under checkpoints/ so that training can resume; rewrites the golden fixtures (the model
# digest changed); runs the tests and the RD benchmark, which regenerates the README table.
set -euo pipefail
cd "$(dirname "$0")/.."
ckpt=$1 name=$2 version=${3:-1}
py=.venv/bin/python
$py -m tec_zarr.train.export "$ckpt" --name "$name" --version "$version" --data ../shared/data
mkdir -p "checkpoints/$name"
cp "$ckpt" "checkpoints/$name/checkpoint.pt"
cp "$(dirname "$ckpt")/log.jsonl" "checkpoints/$name/log.jsonl"
TEC_ZARR_REGENERATE_GOLDEN=1 $py -m pytest -q tests/test_codec.py tests/test_bounded.py -k golden
$py -m pytest -q
$py benchmarks/rd.py
