"""Tests for ecomgpt_jax/preemption.py: SIGTERM and Ctrl-C ask for a save and stop; the
multi-host agreement; the handlers from before come back."""

import os
import signal
import time

import pytest

from ecomgpt_jax import partitioning as P
from ecomgpt_jax import preemption


def test_preemption_guard_sets_flag_on_sigterm_and_restores_handler():
    before = signal.getsignal(signal.SIGTERM)
    guard = preemption.PreemptionGuard()
    assert not guard.should_stop()
    os.kill(os.getpid(), signal.SIGTERM)
    assert guard.should_stop()
    guard.close()
    assert signal.getsignal(signal.SIGTERM) == before


def test_preemption_guard_across_hosts_agrees_one_check_later():
    """The multi-host path (forced here on one process's 8 devices): each check reads the
    all-reduce the previous check started, so a request is acted on one check later, the
    same on every host, without waiting on the step just dispatched."""
    guard = preemption.PreemptionGuard(P.make_mesh(P.MeshConfig((2, 2, 2))), collective=True)
    try:
        assert [guard.should_stop() for _ in range(3)] == [False, False, False]
        guard.requested = preemption.PreemptionGuard.TERM  # SIGTERM during a step
        assert not guard.should_stop()  # this check starts the reduction carrying it
        assert guard.should_stop() and guard.requested == preemption.PreemptionGuard.TERM
    finally:
        guard.close()
    meshless = preemption.PreemptionGuard(collective=True)
    try:
        with pytest.raises(ValueError, match="needs the mesh"):
            meshless.should_stop()
    finally:
        meshless.close()  # its signal handlers must not outlive the test


def test_first_ctrl_c_is_a_preemption_second_aborts_and_handlers_come_back(capfd):
    before_int, before_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    guard = preemption.PreemptionGuard()
    try:
        assert not guard.should_stop()
        os.kill(os.getpid(), signal.SIGINT)
        assert guard.should_stop() and guard.interrupted
        assert capfd.readouterr().err == (
            "\ninterrupt: saving a checkpoint after this step (Ctrl-C again: stop now, "
            "without saving)\n"
        )
        with pytest.raises(KeyboardInterrupt):  # the handler from before: abort now
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    finally:
        guard.close()
    assert signal.getsignal(signal.SIGINT) is before_int
    assert signal.getsignal(signal.SIGTERM) is before_term
    # A SIGINT ignored by the caller (nohup, `cmd &` in a script) stays ignored.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        guard = preemption.PreemptionGuard()
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        guard.close()
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before_int)


def test_a_failure_stops_like_a_signal_and_wins_over_one():
    """`fail`: this process cannot go on (a log it cannot write, data it cannot read).
    One process stops at the next check; several, one check later (the pipelined
    all-reduce), every host then knowing that one failed."""
    guard = preemption.PreemptionGuard()
    try:
        assert guard.lag == 0 and not guard.should_stop()
        os.kill(os.getpid(), signal.SIGTERM)
        first, second = OSError("disk full"), ValueError("damaged record")
        guard.fail("writing the logs", first)
        guard.fail("reading data", second)  # the first failure is the one kept
        os.kill(os.getpid(), signal.SIGTERM)  # later signals do not hide the failure
        os.kill(os.getpid(), signal.SIGINT)
        assert guard.should_stop() and guard.failed and not guard.interrupted
        assert guard.failure == ("writing the logs", first)
    finally:
        guard.close()
    guard = preemption.PreemptionGuard(P.make_mesh(P.MeshConfig((2, 2, 2))), collective=True)
    try:
        assert guard.lag == 1 and not guard.should_stop() and guard.failure is None
        guard.fail("reading data", ValueError("damaged record"))
        assert not guard.should_stop()  # this check starts the reduction carrying it
        assert guard.should_stop() and guard.failed
    finally:
        guard.close()


def test_a_waiting_check_answers_what_was_asked_before_it():
    """should_stop(wait=True), after an evaluation: on several hosts it reads its own
    reduction (and the previous one's, not yet read), so a request made since the last
    check stops every host now; the next plain check starts a new pipeline."""
    guard = preemption.PreemptionGuard(P.make_mesh(P.MeshConfig((2, 2, 2))), collective=True)
    try:
        assert [guard.should_stop(), guard.should_stop(wait=True)] == [False, False]
        guard.requested = preemption.PreemptionGuard.TERM
        assert guard.should_stop(wait=True)
        guard.requested = 0  # the agreed answer: read once, then the pipeline is empty
        assert not guard.should_stop() and not guard.should_stop()
        guard.requested = preemption.PreemptionGuard.TERM
        guard.should_stop()  # the pipelined check starts the reduction carrying it...
        guard.requested = 0
        assert guard.should_stop(wait=True)  # ...which a waiting check reads too
    finally:
        guard.close()
