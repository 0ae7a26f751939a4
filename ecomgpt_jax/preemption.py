"""Stopping a training run cleanly: SIGTERM (a preemption notice), a first Ctrl-C or a
failure on one host (`fail`: a log it cannot write, data it cannot read) asks the loop to
finish its step, save and stop, and every host of a multi-host run stops after the same
step.

    guard = PreemptionGuard(mesh)       # installs the handlers
    ... each step: if guard.should_stop(): save, break (guard.failed: then raise)
    guard.close()                       # the previous handlers back

Needs only jax and numpy.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

import jax
import numpy as np


class PreemptionGuard:
    """SIGTERM, a first Ctrl-C (SIGINT) or `fail` sets a flag; the loop finishes its step,
    saves and stops (after `fail`: then raises). A second Ctrl-C goes to the handler from
    before (KeyboardInterrupt: abort now, without saving). `close` puts the previous
    handlers back.

    With several processes (`collective`, default: when there are) every host must stop
    after the same step (checkpointing is collective), so the requests are max-ed over
    all devices of `mesh` by a small jitted all-reduce. It is pipelined: each check
    starts this step's reduction and reads the previous one's, whose value every host
    shares. Reading this step's would wait for the step just dispatched on every step
    (no async dispatch on multi-host runs); a request is acted on one step later
    (`lag`), or at once by a check told to wait (after an evaluation, say).
    """

    # Requests, by precedence: a failure anywhere is reported as one, then an interrupt.
    TERM, INT, FAILED = 1, 2, 3

    def __init__(self, mesh: jax.sharding.Mesh | None = None, collective: bool | None = None):
        self.requested = 0
        self.failure: tuple[str, Exception] | None = None  # this process's, see `fail`
        self._mesh = mesh
        self._collective = jax.process_count() > 1 if collective is None else collective
        self._pending: jax.Array | None = None
        self._reduce = None
        self._previous: dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            # An ignored SIGINT (nohup, `cmd &` in a script) stays ignored.
            if signum == signal.SIGINT and signal.getsignal(signum) == signal.SIG_IGN:
                continue
            # ValueError: not the main thread (e.g. inside a test runner thread).
            with contextlib.suppress(ValueError):
                self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        if signum != signal.SIGINT:
            self.requested = max(self.requested, self.TERM)
            return
        self.requested = max(self.requested, self.INT)
        self._restore(signal.SIGINT)  # the next Ctrl-C aborts at once
        # os.write to fd 2, not print: the loop may be inside a print to the same buffered
        # stream, and sys.stderr may be a stand-in without a file (notebooks, pytest).
        with contextlib.suppress(OSError):
            os.write(
                2,
                b"\ninterrupt: saving a checkpoint after this step (Ctrl-C again: stop now, "
                b"without saving)\n",
            )

    def _restore(self, signum) -> None:
        if signum in self._previous:
            previous = self._previous.pop(signum)
            # None: a handler installed outside Python, which cannot be put back.
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)

    @property
    def interrupted(self) -> bool:
        return self.requested == self.INT

    @property
    def lag(self) -> int:
        """How many checks after a request every host acts on it: 1 on several hosts
        (the pipelined all-reduce), 0 on one."""
        return int(self._collective)

    @property
    def failed(self) -> bool:
        """Whether a process called `fail` (after `should_stop` said so: on every host)."""
        return self.requested == self.FAILED

    def fail(self, what: str, error: Exception) -> None:
        """This process cannot go on: `what` failed ("reading data"), raising `error`
        (the first is kept in `failure`). Every host stops at the next agreed
        `should_stop`, one check later than here on several hosts, as for a signal; the
        step then saved must not need what failed here."""
        if self.failure is None:
            self.failure = (what, error)
        self.requested = self.FAILED

    def should_stop(self, wait: bool = False) -> bool:
        """Whether to stop now: one answer for all hosts, which all call it alike (`wait`
        too). wait: read this check's reduction, not the previous one's (on several hosts
        it waits for what is dispatched; cheap where the host waited anyway, e.g. after an
        evaluation), so that a request made since the last check is acted on now."""
        if not self._collective:
            return self.requested > 0
        started = self._start_reduce(self.requested)
        if wait:  # the previous check's answer too: it has not been read yet
            reductions, self._pending = [self._pending, started], None
        else:
            reductions, self._pending = [self._pending], started
        # Each: the max over all hosts of what they had requested by then.
        answers = [int(np.asarray(r)) for r in reductions if r is not None]
        if not answers:
            return False
        agreed = max(answers)
        self.requested = max(self.requested, agreed)
        return agreed > 0

    def _start_reduce(self, value: int) -> jax.Array:
        """Dispatches max(value over every device of the mesh); returns at once."""
        mesh = self._mesh
        if mesh is None:
            raise ValueError("PreemptionGuard(collective=True) needs the mesh")
        if self._reduce is None:  # built once: this runs every step
            flat = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names))
            replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            self._reduce = (flat, jax.jit(lambda flags: flags.max(), out_shardings=replicated))
        flat, reduce = self._reduce
        # Every local device carries this host's value, so the order of devices within
        # the flat axis does not matter.
        shards = [
            jax.device_put(np.full((1,), value, np.int32), d) for d in flat.addressable_devices
        ]
        return reduce(jax.make_array_from_single_device_arrays((mesh.size,), flat, shards))

    def close(self) -> None:
        for signum in list(self._previous):
            self._restore(signum)
