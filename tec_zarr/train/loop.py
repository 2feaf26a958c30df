"""What every trainer shares: the step loop, its JSON log, atomic checkpoints, the learning-rate steps, pausing.

A trainer has ``args`` (steps, log_every, val_every; optional save_every_s, val_every_s and deadline), ``out``
(the run directory), ``step``, and the methods ``train_step() -> dict``, ``summarize(records) -> dict``,
``validate() -> list`` and ``checkpoint() -> dict``; optionally ``validate_more() -> dict``, whose entries are
logged beside ``validation``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

# Set to a file's path to pause training while that file exists (e.g. while a timed benchmark runs beside it).
PAUSE_FILE_VARIABLE = "TEC_ZARR_PAUSE_FILE"


def wait_while_paused() -> None:
    pause = os.environ.get(PAUSE_FILE_VARIABLE)
    while pause and Path(pause).exists():
        time.sleep(2.0)


# What only resuming the same run needs (optimizer moments, sampler and RNG states): a committed checkpoint leaves
# these out, and training continues from its weights with a new optimizer.
RUN_STATE_KEYS = ("opt", "opt_transform", "opt_entropy", "sampler", "rng", "torch_rng")


def keep_checkpoint(checkpoint: Path, folder: Path) -> None:
    """A slim copy of ``checkpoint`` (weights, config, step; no :data:`RUN_STATE_KEYS`) and its run's log in
    ``folder``: what gets committed under ``checkpoints/``."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v for k, v in ckpt.items() if k not in RUN_STATE_KEYS}, folder / "checkpoint.pt")
    log = Path(checkpoint).parent / "log.jsonl"
    if log.exists():
        shutil.copyfile(log, folder / "log.jsonl")


def optimizer_to(optimizer: torch.optim.Optimizer, device) -> None:
    """Move an optimizer's state loaded from a CPU checkpoint to its parameters' ``device`` (Adam's moments; its
    step counters stay where they are)."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and key != "step":
                state[key] = value.to(device)


def step_scale(step: int, steps: int, first_drop: float) -> float:
    """Learning-rate factor: 1 until ``first_drop`` of the steps, 0.3 until 90 %, then 0.1."""
    frac = step / max(steps, 1)
    return 1.0 if frac < first_drop else (0.3 if frac < 0.9 else 0.1)


def per_quality(records: list[dict], digits: dict[str, int]) -> dict[int, dict[str, float]]:
    """Mean of each key in ``digits`` per quality ``q`` over the steps' records, rounded to its digits."""
    q = np.concatenate([r["q"] for r in records])
    values = {key: np.concatenate([r[key] for r in records]) for key in digits}
    return {int(k): {key: round(float(v[q == k].mean()), digits[key]) for key, v in values.items()} for k in np.unique(q)}


def _replace(checkpoint: dict, path: Path) -> None:
    """``path`` replaced atomically: a run killed while saving keeps the previous file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def save_checkpoint(checkpoint: dict, out: Path) -> None:
    """``out/checkpoint.pt``, replaced atomically: a run killed while saving keeps its previous checkpoint."""
    _replace(checkpoint, out / "checkpoint.pt")


def save_best(checkpoint: dict, out: Path, score: float) -> None:
    """``out/best.pt`` (replaced atomically, like the checkpoint) and ``out/best.json``: the step and score of the
    best validation so far, which a resumed run reads back so it keeps the better of both."""
    _replace(checkpoint, out / "best.pt")
    (out / "best.json").write_text(json.dumps({"step": checkpoint["step"], "score": score}) + "\n")


def best_score(out: Path) -> float | None:
    path = out / "best.json"
    return float(json.loads(path.read_text())["score"]) if path.exists() else None


def run(trainer) -> None:
    """Train to ``args.steps``: log every ``log_every`` steps, validate and save every ``val_every`` steps and at
    the end, and also save every ``save_every_s`` seconds where the trainer has that argument. Where the trainer's
    args have them, also validate every ``val_every_s`` seconds, and stop (validated and saved) once the clock
    passes ``deadline`` (a ``time.time()`` value), after at least one step, so that every run makes progress.
    Trainers with a ``validation_score`` (lower is better) also keep the best validated checkpoint (``best.pt``):
    a rate-only entropy model's validation can get worse as it trains on, and the best is the one to export."""
    args, out = trainer.args, trainer.out
    score_of = getattr(trainer, "validation_score", None)
    best = best_score(out) if score_of is not None else None
    save_every_s = getattr(args, "save_every_s", None)
    val_every_s = getattr(args, "val_every_s", None)
    deadline = getattr(args, "deadline", None)
    records: list[dict] = []
    t0 = last_save = last_val = time.time()
    validated_at = None
    first = trainer.step

    def save() -> None:
        nonlocal last_save
        save_checkpoint(trainer.checkpoint(), out)
        last_save = time.time()

    with (out / "log.jsonl").open("a") as log:

        def write(record: dict) -> None:
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(json.dumps(record), flush=True)

        def validate_and_save() -> None:
            nonlocal last_val, validated_at, best
            record = {"step": trainer.step, "validation": trainer.validate()}
            if hasattr(trainer, "validate_more"):
                record.update(trainer.validate_more())
            write(record)
            save()
            last_val, validated_at = time.time(), trainer.step
            score = None if score_of is None else score_of(record["validation"])
            if score is not None and (best is None or score < best):
                best = score
                save_best(trainer.checkpoint(), out, best)

        while trainer.step < args.steps:
            if deadline is not None and trainer.step > first and time.time() >= deadline:
                if validated_at != trainer.step:
                    validate_and_save()
                break
            wait_while_paused()
            records.append(trainer.train_step())
            trainer.step += 1
            if trainer.step % args.log_every == 0:
                write({"step": trainer.step, "seconds": round(time.time() - t0, 1), **trainer.summarize(records)})
                records.clear()
            if (trainer.step % args.val_every == 0 or trainer.step == args.steps
                    or (val_every_s and time.time() - last_val > val_every_s)):
                validate_and_save()
            elif save_every_s and time.time() - last_save > save_every_s:
                save()
    save()


def main(trainer_class, args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    run(trainer_class(args))
    return 0
