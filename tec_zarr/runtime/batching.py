"""Stacking images of several chunks into onnxruntime calls: fewer, larger calls, the same outputs.

A job is ``(graph, x)`` with ``x`` a (B, ...) array; :func:`run_stacked` returns each job's output as if its graph had
run on ``x`` alone.
"""

from __future__ import annotations

import numpy as np

from .onnx import Graph

# Images per onnxruntime call when chunks are encoded or decoded together; larger stacks are split. Bounds memory:
# a 12x256x256 float32 input is 3 MB and the decoder's widest activations about 64x128x128 float32 = 4 MB per image,
# so one call holds a few tens of MB.
MAX_BATCH_IMAGES = 8


def stacks_exactly(graph: Graph) -> bool:
    """Whether a graph's outputs for an image are the same bits alone and inside a stack of images.

    Measured with onnxruntime 1.32 on CPU (intra-op threads 1, 2 and 4; the bundled sample at 4x4 to 260x260,
    batches of 2, 3 and 8 at several positions): encoder and decoder outputs were bit-identical every time
    (the CPU kernels loop over the batch axis). GPU libraries may pick kernels by batch size,
    and that is unverified, so there the encoder keeps one call per chunk (the bitstream must not depend on
    how chunks were batched); decoded pixels may differ by float rounding between machines anyway.
    """
    return graph.cpu_only()


def run_stacked(jobs: list[tuple[Graph, np.ndarray]], *, exact: bool) -> list[np.ndarray]:
    """Run each job's graph on its (B, ...) input, stacking inputs of one graph and shape into calls of at most
    MAX_BATCH_IMAGES images. ``exact``: only where stacking changes no bit (else one call per job)."""
    outputs: list[list[np.ndarray]] = [[] for _ in jobs]
    groups: dict[tuple, list[int]] = {}
    for i, (graph, x) in enumerate(jobs):
        if exact and not stacks_exactly(graph):
            outputs[i].append(graph.run(x))
        else:
            groups.setdefault((graph.sha256, x.shape[1:], x.dtype.str, graph.stack_key(x)), []).append(i)
    for members in groups.values():
        pending: list[tuple[int, int, int]] = []  # (job, first image, end) of the next call
        count = 0
        for i in members:
            n, start = len(jobs[i][1]), 0
            while start < n:
                take = min(n - start, MAX_BATCH_IMAGES - count)
                pending.append((i, start, start + take))
                count, start = count + take, start + take
                if count == MAX_BATCH_IMAGES:
                    _run_call(jobs, pending, outputs)
                    pending, count = [], 0
        if pending:
            _run_call(jobs, pending, outputs)
    return [o[0] if len(o) == 1 else np.concatenate(o) for o in outputs]


def _run_call(jobs, pending: list[tuple[int, int, int]], outputs: list[list[np.ndarray]]) -> None:
    """One onnxruntime call on images ``start:end`` of each pending job; each job's slice of the output."""
    graph = jobs[pending[0][0]][0]
    parts = [jobs[i][1][start:end] for i, start, end in pending]
    y = graph.run(parts[0] if len(parts) == 1 else np.concatenate(parts))
    offset = 0
    for i, start, end in pending:
        outputs[i].append(y[offset : offset + end - start])
        offset += end - start
