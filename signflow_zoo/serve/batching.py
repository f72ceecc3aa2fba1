"""Dynamic batching across streams: the sign ends of several streams as one model call.

A server that serves many signers with one model collects the signs that end within a short window
(``max_batch_wait_ms``) and runs them as one batch, as serving systems batch requests::

    pending = []  # (pipeline, PendingSign) of the streams whose sign ended in this window
    for pipe, payload in frames_of_this_window:
        out = pipe.process_frame_deferred(payload)
        if isinstance(out, PendingSign):
            pending.append((pipe, out))
    predictions = complete_batch(runner, pending)

Every pending sign has the same shape ([seq_len, 469]: the window is resampled to the model's length), so
a batch is a plain stack. The bench's capacity scenario (:mod:`signflow_zoo.bench.capacity`) measures what it
buys on each backend.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from signflow_zoo.backends.runner import Runner
from signflow_zoo.serve.pipeline import PendingSign, Prediction, SignFlowInferencePipeline


def infer_pending(runner: Runner, pending: Sequence[PendingSign]) -> tuple[np.ndarray, float]:
    """One model call on the stacked pending signs: their logits [len(pending), classes] and the call's ms."""
    x = np.stack([p.features for p in pending])
    m = np.stack([p.mask for p in pending])
    t0 = time.perf_counter()
    logits = np.asarray(runner.run(x, m))
    if getattr(runner, "asynchronous", False):
        runner.synchronize()
    return logits, (time.perf_counter() - t0) * 1e3


def complete_batch(runner: Runner, pending: Sequence[tuple[SignFlowInferencePipeline, PendingSign]]) -> list[Prediction]:
    """Run the pending signs of several streams as one batch and hand each stream its decision (in order)."""
    if not pending:
        return []
    logits, ms = infer_pending(runner, [p for _, p in pending])
    return [pipe.complete(p, logits[i], inference_ms=ms) for i, (pipe, p) in enumerate(pending)]


__all__ = ["infer_pending", "complete_batch"]
