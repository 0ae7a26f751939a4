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
    stopped = any_process_failed(failure is not None)
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
    return result


def stopped_together(error: BaseException) -> bool:
    """Whether every process raises `error` (or its own) at this same point: one process,
    or an error of `on_every_process`. Only then may a handler enter a collective, such
    as saving a checkpoint; otherwise the processes that did not raise are elsewhere."""
    import jax

    return jax.process_count() == 1 or getattr(error, "_on_every_process", False)
