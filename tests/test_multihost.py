"""Tests for ecomgpt_jax/multihost.py: a failure on some processes stops all of them.
Stubbed processes here; the real two-process runs are in test_train.py and test_eval.py."""

import pytest

from ecomgpt_jax import multihost


def test_one_process_needs_no_collective(monkeypatch):
    from jax.experimental import multihost_utils

    def no_gather(flag):
        raise AssertionError("a collective on one process")

    monkeypatch.setattr(multihost_utils, "process_allgather", no_gather)
    assert multihost.any_process_failed(False) == []
    assert multihost.any_process_failed(True) == [0]
    assert multihost.on_every_process(lambda: 7, ValueError) == 7


def test_a_set_up_failure_on_any_process_stops_every_process(monkeypatch):
    """Two or three stubbed processes (the real two-process runs: test_eval.py): what each
    raises given the others' answers to the all-gather."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    assert multihost.on_every_process(lambda: 7, ValueError) == 7  # one process: no gather
    monkeypatch.setattr(jax, "process_count", lambda: 3)
    sent = []

    def gather(others):
        def fake(flag):
            sent.append(int(flag))
            return np.array([flag, *others], np.int32)  # this process is process 0

        monkeypatch.setattr(multihost_utils, "process_allgather", fake)

    gather([0, 0])
    assert multihost.on_every_process(lambda: 7, ValueError) == 7
    gather([1, 0])
    with pytest.raises(ValueError) as info:
        multihost.on_every_process(lambda: 7, ValueError)
    assert str(info.value) == "process 1 stopped in set-up (its error says why); stopping too"
    gather([1, 1])
    with pytest.raises(ValueError, match=r"^processes 1, 2 stopped in set-up \(their error"):
        multihost.on_every_process(lambda: 7, ValueError)
    own = OSError("disk")  # this process's own failure, of any type, is what it raises

    def fail():
        raise own

    with pytest.raises(OSError) as info:
        multihost.on_every_process(fail, ValueError)
    assert info.value is own
    assert sent == [0, 0, 0, 1]  # every call took part in the gather, failed or not


def test_stopped_together_says_when_a_handler_may_enter_a_collective(monkeypatch):
    """A save after a failure: on one process always; on several only for an error that
    on_every_process raised (every process raises one at the same point)."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    assert multihost.stopped_together(ValueError("one process"))
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    assert not multihost.stopped_together(ValueError("this process alone"))
    for others in (0, 1):  # this process failed; the other one failed, or did not
        monkeypatch.setattr(
            multihost_utils, "process_allgather", lambda f, o=others: np.array([f, o])
        )
        with pytest.raises(OSError) as info:
            multihost.on_every_process(lambda: (_ for _ in ()).throw(OSError("disk")), ValueError)
        assert multihost.stopped_together(info.value)
    with pytest.raises(ValueError) as info:  # the other process failed, this one did not
        multihost.on_every_process(lambda: 7, ValueError)
    assert multihost.stopped_together(info.value)
