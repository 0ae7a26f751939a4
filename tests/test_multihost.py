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


def test_stop_together_raises_the_own_failure_or_names_the_others():
    own = OSError("disk full")
    with pytest.raises(OSError) as info:
        multihost.stop_together(own, [0, 1], ValueError, "at step 3")
    assert info.value is own and multihost.stopped_together(info.value)
    with pytest.raises(ValueError) as info:
        multihost.stop_together(None, [1], ValueError, "at step 3")
    assert str(info.value) == "process 1 stopped at step 3 (its error says why); stopping too"
    multihost.stop_together(None, [], ValueError, "at step 3")  # none failed: returns


class Counting:
    """Batches 1, 2, ... with InputIterator's `position`; read number `fail_at` raises."""

    def __init__(self, fail_at=None):
        self.position, self.fail_at = 0, fail_at

    def __next__(self):
        if self.position + 1 == self.fail_at:
            raise ValueError("damaged record")
        self.position += 1
        return self.position


def test_read_ahead_hands_out_in_order_and_counts_only_what_it_handed_out():
    ahead = multihost.ReadAhead(Counting(), depth=2, limit=3)
    assert ahead.read_ahead() is None and ahead.position == 0  # 1, 2 read, none used
    assert next(ahead) == 1 and ahead.position == 1
    assert ahead.read_ahead() is None and ahead._batches.position == 3
    assert ahead.read_ahead() is None and ahead._batches.position == 3  # limit: 3 batches
    assert [next(ahead), next(ahead)] == [2, 3] and ahead.position == 3


def test_read_ahead_keeps_a_read_error_until_the_batches_before_it_are_used():
    ahead = multihost.ReadAhead(Counting(fail_at=3), depth=2, limit=10)
    assert ahead.read_ahead() is None
    assert next(ahead) == 1
    error = ahead.read_ahead()  # read 3 fails
    assert str(error) == "damaged record" and ahead.error is error
    assert ahead.read_ahead() is None  # returned once; reading ahead has stopped
    assert next(ahead) == 2 and ahead.position == 2
    with pytest.raises(ValueError) as info:
        next(ahead)
    assert info.value is error and ahead.position == 2
