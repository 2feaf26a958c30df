#!/usr/bin/env bash
# One command for the GPU machine, from the repository root (it sees only the repository and carried paths):
#
#   bash scripts/gpu_burst.sh [MINUTES] [more burst options]
#
# Needs runs/burst-data.npz (git-ignored, made here by scripts/pack_training_data.py; carry it) and torch with
# CUDA; nothing of the codec runtime. Continues tec-fp-2's weights (checkpoints/tec-fp-2/checkpoint.pt; BURST_INIT picks another, e.g.
# checkpoints/tec-fp-3/checkpoint.pt, the default's) for MINUTES (default 8) and writes checkpoint.pt, log.jsonl and
# burst.log to $OUT (or runs/burst without $OUT). The whole command takes MINUTES plus about half a minute
# (start-up, the last validation and save): give the call that much and more.
# A run directory that already holds a checkpoint is resumed instead. Extra options go to the trainer, e.g.
# --init '' --channels 96 for a fresh model, --augment none, --batch 64.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${1:-8}"
shift $(( $# > 0 ? 1 : 0 ))
DATA="${BURST_DATA:-runs/burst-data.npz}"
INIT="${BURST_INIT:-checkpoints/tec-fp-2/checkpoint.pt}"
RUN="${OUT:-runs/burst}"
PY="$(command -v python3 || command -v python)"
mkdir -p "$RUN"
if [ ! -f "$DATA" ]; then
    echo "error: $DATA is missing; make it with scripts/pack_training_data.py and carry it" >&2
    exit 2
fi
export PYTHONUNBUFFERED=1
{
    echo "gpu_burst: $(date -u +%FT%TZ) minutes=$MINUTES data=$DATA ($(du -h "$DATA" | cut -f1)) init=$INIT out=$RUN"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
    "$PY" -c 'import torch, numpy; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "numpy", numpy.__version__)'
    "$PY" scripts/burst.py --data "$DATA" --out "$RUN" --init "$INIT" --minutes "$MINUTES" --device auto "$@"
    echo "gpu_burst: files in $RUN:"
    ls -l "$RUN"
    for f in "$RUN"/*; do
        if [ "$(stat -c %s "$f")" -gt $((16 * 1024 * 1024)) ]; then
            echo "warning: $f is over 16 MiB and will not come back from the device machine"
        fi
    done
} 2>&1 | tee -a "$RUN/burst.log"
