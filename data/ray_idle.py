"""Ray Data's scheduling loop waits for the consumer, rather than spins, while it has nothing to do.

Ray Data (2.60) runs an execution's scheduling loop on a thread of the process that iterates it: a trainer's, for a
rank's stream. The loop's one blocking call is ``ray.wait`` on its running tasks (up to 0.1 s). It does not block
when no task runs (the reads are ahead, their blocks wait for the consumer), nor when a task's next output is ready
but the output budget holds it back (``ray.wait`` returns at once). Then the loop goes round again immediately,
re-deriving resource usage and setting Prometheus gauges, on the trainer's cores and under its GIL. In the demo's
stage 1 with ``stream.op_reservation: false`` that thread took as many CPU samples as the training thread (py-spy),
and two epochs took 245–274 s against 152–153 s; with 2 substreams, 206–210 s (docs/INVESTIGATIONS.md, "Ray Data's
idle scheduling loop").

:func:`install` wraps ``StreamingExecutor._scheduling_loop_step`` for the executions whose DataContext sets
:data:`IDLE_WAIT_KEY` (``stream.idle_wait_s``; :func:`data.stream.ray_dataset` sets it). After a step that changed
nothing (no input taken, task submitted, output generated, task ended or output taken), the loop waits until the
consumer takes an output or releases prefetched blocks, or until ``idle_wait_s`` has passed since the step began. A
step whose ``ray.wait`` already waited its 0.1 s waits no more; otherwise a task's end is noticed within
``idle_wait_s``, which is capped at Ray's own 0.1 s. Executions without the key run Ray's loop unchanged.
"""
from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)

IDLE_WAIT_KEY = "avdet.stream.idle_wait_s"
_LOCK = threading.Lock()
_installed = False


def _taken(executor) -> threading.Event:
    """The execution's "an output was taken" event (``dict.setdefault`` is atomic, so the loop's thread and the
    consumer's agree on one)."""
    return executor.__dict__.setdefault("_avdet_output_taken", threading.Event())


_COUNTERS = ("num_inputs_received", "num_tasks_submitted", "num_task_outputs_generated", "num_tasks_finished",
             "num_tasks_failed", "num_outputs_taken")


def _progress(topology) -> tuple:
    """What a scheduling step that did something changes: each operator's inputs received, tasks submitted,
    outputs generated, tasks ended, and outputs taken."""
    return tuple(getattr(op.metrics, c, 0) for op in topology for c in _COUNTERS)


def install() -> bool:
    """Wrap Ray Data's scheduling step and output iterator in this process (idempotent). False, with a warning, if
    this Ray lacks what it wraps: the loop then spins as Ray's does."""
    try:
        from ray.data._internal.execution.streaming_executor import StreamingExecutor, _ClosingIterator
        step, get_next = StreamingExecutor._scheduling_loop_step, _ClosingIterator.get_next
        consumer_bytes = StreamingExecutor.set_external_consumer_bytes
    except (ImportError, AttributeError) as e:
        log.warning("stream.idle_wait_s: this Ray Data has no %s; its scheduling loop spins while idle", e)
        return False
    global _installed
    with _LOCK:
        if _installed:
            return True

        def _scheduling_loop_step(self, topology):
            wait = self._data_context.get_config(IDLE_WAIT_KEY, 0.0)
            if not wait:
                return step(self, topology)
            taken = _taken(self)
            taken.clear()                       # a take from here on ends the wait below
            before, t0 = _progress(topology), time.perf_counter()
            go_on = step(self, topology)
            if go_on and _progress(topology) == before:
                taken.wait(max(0.0, wait - (time.perf_counter() - t0)))
            return go_on

        def _get_next(self, output_split_idx=None):
            try:
                return get_next(self, output_split_idx)
            finally:
                _taken(self._executor).set()

        def _set_external_consumer_bytes(self, num_bytes):
            consumer_bytes(self, num_bytes)
            _taken(self).set()                  # the consumer released blocks: the budget may allow a read now

        StreamingExecutor.set_external_consumer_bytes = _set_external_consumer_bytes
        StreamingExecutor._scheduling_loop_step = _scheduling_loop_step
        _ClosingIterator.get_next = _get_next
        _installed = True
    return True
