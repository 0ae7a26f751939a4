"""Where only some processes of a multi-host job can fail (a process-0-only write, a
per-host read) before a collective the others enter: every process says whether it
failed, so that all stop together with one line each.

Otherwise the others would go on to the collective (a jitted computation over the global
mesh, an orbax save or restore, `multihost_utils`) and wait there for the process that
stopped, until a coordination timeout ends them with a trace (tens of seconds on CPU,
minutes on a pod, accelerator time on real hosts).

One process (jax.process_count() == 1) costs nothing: no collective. Library code (no
gin, no flags); jax is imported when called, so that importing this costs nothing either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def any_process_failed(failed: bool) -> list[int]:
    """The indices of the processes whose `failed` is true, on every process.

    Several processes: an all-gather of one int each, so every process must call it at
    the same point of the job. One process: [0] or [], without a collective.
    """
    import jax

    if jax.process_count() == 1:
        return [0] if failed else []
    import numpy as np
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.int32(bool(failed)))
    return [i for i, flag in enumerate(np.ravel(flags)) if flag]


def on_every_process(work: Callable[[], T], error: type[Exception], during: str = "in set-up") -> T:
    """`work()` where a failure on any process stops every process.

    A process whose `work` raised raises its own error (Ctrl-C, not an Exception, stops
    it at once); the others raise `error` naming the ones that failed, e.g. "process 0
    stopped in set-up (its error says why); stopping too" (`during`: "in set-up").
    """
    failure = None
    try:
        result = work()
    except Exception as e:
        failure = e
    stop_together(failure, any_process_failed(failure is not None), error, during)
    return result


def stop_together(
    failure: Exception | None, stopped: list[int], error: type[Exception], during: str
) -> None:
    """Raises this process's `failure`, or else `error` naming the processes that
    `stopped` (`any_process_failed`'s answer; none: returns)."""
    if failure is not None:
        failure._on_every_process = True  # see stopped_together
        raise failure
    if stopped:
        who, whose = (
            (f"process {stopped[0]}", "its")
            if len(stopped) == 1
            else (f"processes {', '.join(map(str, stopped))}", "their")
        )
        other = error(f"{who} stopped {during} ({whose} error says why); stopping too")
        other._on_every_process = True
        raise other


def stopped_together(error: BaseException) -> bool:
    """Whether every process raises `error` (or its own) at this same point: one process,
    or an error of `on_every_process`. Only then may a handler enter a collective, such
    as saving a checkpoint; otherwise the processes that did not raise are elsewhere."""
    import jax

    return jax.process_count() == 1 or getattr(error, "_on_every_process", False)


class ReadAhead:
    """An iterator of batches (with the `position` InputIterator keeps: batches produced)
    read `depth` batches ahead, so that a read that fails on one host is known before
    the steps that need it: the loop calls `read_ahead` after dispatching a step (the
    reading overlaps the step on the device) and tells every host of an error it returns
    (PreemptionGuard.fail), while the batches already read carry every host to the step
    where all agree to stop. With the guard's pipelined check, one check late, that takes
    depth 2 on several hosts; depth 1 reads the next batch during the step on one.

    `position` counts the batches handed out, not those read ahead, and `limit` caps
    the batches read (the steps left): a batch no step uses is neither read nor
    failed on.
    """

    def __init__(self, batches, depth: int, limit: int):
        self._batches = batches
        self._depth = depth
        self._left = limit
        self._ready: list = []
        self.error: Exception | None = None

    @property
    def position(self) -> int:
        return int(self._batches.position) - len(self._ready)

    def read_ahead(self) -> Exception | None:
        """Reads until `depth` batches wait or `limit` is reached; an error is kept (in
        `error`, and returned the first time), and ends reading ahead."""
        while self.error is None and len(self._ready) < self._depth and self._left > 0:
            try:
                self._ready.append(next(self._batches))
            except Exception as e:
                self.error = e
                return e
            self._left -= 1
        return None

    def __iter__(self):
        return self

    def __next__(self):
        """The oldest batch read ahead; without one, the error that stopped reading, or
        a read now."""
        if self._ready:
            return self._ready.pop(0)
        if self.error is not None:
            raise self.error
        self._left -= 1
        return next(self._batches)
