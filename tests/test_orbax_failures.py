"""Tests for orbax_failures: the one-line reasons and the quiet end of failed reads and
writes (the messages they make: test_checkpointing.py)."""

import asyncio
import gc
import logging
import sys
import types

import pytest

from ecomgpt_jax import orbax_failures


def test_a_late_read_after_a_failed_restore_stays_quiet(monkeypatch):
    """A read of a failed restore that ends after the drain reaches orbax's closed event
    loop: that error is ignored from then on (it printed a trace after the one-line
    error); every other unraisable still reaches the hook from before."""
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    monkeypatch.setattr(orbax_failures, "READ_DRAIN_S", 0.0)
    orbax_failures.drop_failed_reads()
    orbax_failures.drop_failed_reads()  # twice: still one filter in front of the hook

    def unraisable(error):
        return types.SimpleNamespace(exc_value=error, exc_type=type(error), object=None)

    sys.unraisablehook(unraisable(RuntimeError("Event loop is closed")))
    other = unraisable(RuntimeError("something else"))
    sys.unraisablehook(other)
    assert seen == [other]


def test_closed_loop_errors_are_ignored_once_wrapped():
    """A failed save's writes and a failed restore's reads end in orbax's closed loop
    (sys.unraisablehook): not news; anything else still reaches the hook."""
    seen = []
    closed, other = RuntimeError("Event loop is closed"), RuntimeError("other")
    hook = orbax_failures.closed_loop_ignored(lambda u: seen.append(u.exc_value))
    hook(types.SimpleNamespace(exc_value=closed))
    hook(types.SimpleNamespace(exc_value=other))
    assert seen == [other]
    assert orbax_failures.closed_loop_ignored(hook) is hook  # wrapped once


def test_a_write_reason_is_the_operating_systems():
    """tensorstore's write errors are long, with the reason last: the message keeps it."""
    error = ValueError(
        'RESOURCE_EXHAUSTED: Error writing "a/0.0" in OCDBT database at local file "/r/": '
        'Failed writing: "/r/d/4a": Failed to write 576489 bytes to file 7: No space left on '
        "device [os_error_code='28'] [tensorstore_spec='{}']"
    )
    assert orbax_failures.write_reason(error) == "No space left on device"
    assert (
        orbax_failures.write_reason(OSError(13, "Permission denied"))
        == "[Errno 13] Permission denied"
    )


def test_without_trace_keeps_orbax_errors_as_one_line():
    """A failing save logs an error with its trace from each orbax thread; the run stops
    with its own one-line error, so orbax's stay, without the traces (the entry points'
    log filter, launch.quiet_logs; save_params adds it too)."""
    import logging

    def record(pathname: str) -> logging.LogRecord:
        try:
            raise OSError(28, "No space left on device")
        except OSError:
            exc_info = sys.exc_info()
        return logging.LogRecord("absl", logging.ERROR, pathname, 1, "save failed", (), exc_info)

    orbax = record("/venv/site-packages/orbax/checkpoint/_src/futures/future.py")
    assert orbax_failures.without_trace(orbax) and orbax.exc_info is None
    assert logging.Formatter().format(orbax) == "save failed"
    other = record("/work/ecomgpt_jax/train.py")
    assert orbax_failures.without_trace(other) and other.exc_info is not None
    assert "Traceback" in logging.Formatter().format(other)


def test_a_failed_read_collected_during_the_restore_is_not_logged(monkeypatch, caplog):
    """A failed read's asyncio task may be collected while the restore still runs (before
    the drain): asyncio logged "Task exception was never retrieved" with its trace then
    (seen in CI, 1 run in 3). A restore that works leaves asyncio's logger as it was."""
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    monkeypatch.setattr(orbax_failures, "READ_DRAIN_S", 0.0)
    asyncio_log = logging.getLogger("asyncio")
    monkeypatch.setattr(asyncio_log, "level", logging.NOTSET)

    def failing_restore():
        async def read():
            raise ValueError("OUT_OF_RANGE: Requested byte range is not valid")

        loop = asyncio.new_event_loop()
        task = loop.create_task(read())
        loop.run_until_complete(asyncio.sleep(0))  # the read fails; nobody retrieves it
        loop.close()
        del task
        gc.collect()  # collected now: asyncio logs it, unless quiet
        error = ValueError("OUT_OF_RANGE: Error reading 'w/0.0' in OCDBT database")
        raise Exception("Encountered error while reading array index") from error  # noqa: TRY002

    assert orbax_failures.restore_or_raise(lambda: 5, ValueError, ValueError) == 5
    assert asyncio_log.level == logging.NOTSET
    with caplog.at_level(logging.ERROR, logger="asyncio"), pytest.raises(KeyError) as info:
        orbax_failures.restore_or_raise(failing_restore, KeyError, OSError)
    assert "never retrieved" not in caplog.text
    assert info.value.args == ("OUT_OF_RANGE: Error reading 'w/0.0' in OCDBT database",)


def test_a_ctrl_c_during_a_restore_leaves_asyncio_logging_as_it_was(monkeypatch):
    asyncio_log = logging.getLogger("asyncio")
    monkeypatch.setattr(asyncio_log, "level", logging.WARNING)

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        orbax_failures.restore_or_raise(interrupted, ValueError, ValueError)
    assert asyncio_log.level == logging.WARNING
