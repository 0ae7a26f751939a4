"""What orbax's failures mean, in one line each, and the quiet end of a failed restore.

orbax reports a damaged checkpoint, a full disk or a tree that does not fit the model
with tensorstore's long messages, its tree dumps and, from its threads, a trace per
read or write. `checkpointing` turns them into one CheckpointError with these:

    restore_or_raise(restore, damaged, not_placeable)  a read failure vs a mesh one
    tree_difference(stored, target, owner)              the first array that does not fit
    write_reason(e), short(e)                           the reason, without the dumps
    closed_loop_ignored(hook)                           silence "Event loop is closed"
    quiet_logs()                                        orbax's logs: errors in one line,
                                                        no missing-item-metadata warnings

Needs only jax and orbax.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import re
import sys
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

from ecomgpt_jax.train_step import path_names

PyTree = Any


def restore_or_raise(restore, damaged, not_placeable):
    """`restore()`'s result; where it fails, raises `damaged(why)` if reading the files
    failed (`is_read_error`), else `not_placeable(why)`, after `drop_failed_reads`."""
    # Before the reads: one that fails ends orbax's loop at once, and a read still in
    # flight may reach that loop before `drop_failed_reads` starts. Likewise a failed
    # read's task may be collected while the restore still runs, and asyncio would log
    # "Task exception was never retrieved" with its trace: quiet until it returns.
    sys.unraisablehook = closed_loop_ignored(sys.unraisablehook)
    asyncio_log = logging.getLogger("asyncio")
    level = asyncio_log.level
    asyncio_log.setLevel(logging.CRITICAL)
    try:
        restored = restore()
    except Exception as e:  # orbax wraps tensorstore's read errors in a bare Exception
        # Text only: the exception's traceback holds the reads `drop_failed_reads` ends.
        failure, read_error = short(e.__cause__ or e), is_read_error(e.__cause__ or e)
    except BaseException:  # a Ctrl-C: asyncio's own errors are not to stay hidden after
        asyncio_log.setLevel(level)
        raise
    else:
        asyncio_log.setLevel(level)
        return restored
    drop_failed_reads()  # outside `except`: its traceback no longer holds the reads
    raise damaged(failure) if read_error else not_placeable(failure)


READ_DRAIN_S = 1.0


def drop_failed_reads() -> None:
    """Quietly ends the reads a failed orbax restore leaves behind.

    Otherwise each of them prints a trace ("Task exception was never retrieved", and
    more at interpreter exit) after the one-line error. Reads still in flight finish
    on tensorstore's threads and then fail to reach orbax's closed event loop ("Event
    loop is closed"); this waits up to `READ_DRAIN_S` for them, quietly, as the run
    is stopping anyway, and a read slower than that is not reported either: that one
    error is ignored in this process from its first restore on (`closed_loop_ignored`).
    A failed save's writes in flight end the same way (`checkpointing.save_params`).
    """
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    hook = sys.unraisablehook  # their coroutines complain when collected: not news here
    sys.unraisablehook = lambda unraisable: None
    try:
        deadline = time.monotonic() + READ_DRAIN_S
        while True:
            gc.collect()
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
    finally:
        sys.unraisablehook = closed_loop_ignored(hook)


def quiet_logs() -> None:
    """Adds `without_trace` and `not_item_metadata_warning` to the absl logger, which
    orbax logs to (once: the same function objects)."""
    logger = logging.getLogger("absl")
    logger.addFilter(without_trace)
    logger.addFilter(not_item_metadata_warning)


def not_item_metadata_warning(record: logging.LogRecord) -> bool:
    """A logging filter: drops orbax's warning that a params item has no
    _CHECKPOINT_METADATA (items are read on their own, and that file is the step's)."""
    message = record.getMessage()
    return not (
        message.startswith("Metadata file does not exist")
        and message.endswith("/params/_CHECKPOINT_METADATA")
    )


@contextlib.contextmanager
def metadata_warning_dropped():
    """Within: orbax's "Failed to get item metadata" warning is dropped (the caller
    raises its own one-line error for the same failure)."""

    def drop(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to get item metadata")

    logger = logging.getLogger("absl")
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def without_trace(record: logging.LogRecord) -> bool:
    """A logging filter: orbax's error logs as their one line, without the trace (a
    failed save logs one from each of its threads, and the run then stops with one line
    of its own)."""
    if "orbax" in record.pathname and record.exc_info:
        record.exc_info, record.exc_text = None, None
    return True


def closed_loop_ignored(hook):
    """`hook` (a sys.unraisablehook), except for RuntimeError("Event loop is closed"): a
    late read's or write's callback to orbax's loop, which ended with the failed restore
    or save."""
    if getattr(hook, "_closed_loop_ignored", False):
        return hook

    def ignoring(unraisable) -> None:
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return
        hook(unraisable)

    ignoring._closed_loop_ignored = True
    return ignoring


# How tensorstore's errors begin (an absl status code): its reads of the checkpoint's
# files failed. XLA's errors (device memory) start so too, but are RuntimeErrors.
_STATUS_CODE = re.compile(r"[A-Z][A-Z_]+: ")


def unplaceable(target: PyTree) -> str | None:
    """The first line of the error for the first leaf of `target` (abstract arrays with
    shardings) that its sharding cannot hold, e.g. 4 heads over a tensor axis of 8; None
    if all fit."""
    for leaf in jax.tree_util.tree_leaves(target):
        sharding = getattr(leaf, "sharding", None)
        if sharding is None:
            continue
        try:
            sharding.shard_shape(leaf.shape)
        except ValueError as e:
            return short(e)
    return None


def is_read_error(e: BaseException) -> bool:
    """Whether a failed restore failed reading the checkpoint's files (missing, cut short,
    unreadable) rather than placing the arrays (shardings, device memory)."""
    if isinstance(e, (OSError, json.JSONDecodeError, UnicodeDecodeError)):  # data/: JSON
        return True
    return isinstance(e, ValueError) and bool(_STATUS_CODE.match(str(e).strip()))


# The operating system's reason at the end of a tensorstore write error, e.g. "...: Failed
# to write 576489 bytes to file 7: No space left on device [os_error_code='28']".
_OS_REASON = re.compile(r":\s*([^:\[]+?)\s*\[os_error_code='?\d+'?\]")


def write_reason(e: BaseException) -> str:
    """Why a save failed: the OS's reason where tensorstore gives one (its messages are
    long and the reason comes last), else :func:`short`."""
    found = _OS_REASON.search(str(e))
    return found.group(1) if found else short(e)


def short(e: BaseException, limit: int = 300) -> str:
    """The first line of an orbax / tensorstore error, without its JSON spec dump."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    text = text.split(" [tensorstore_spec=")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _leaf_shapes(tree) -> dict[str, tuple]:
    """Leaf name ("layers/attn/qkv_kernel") -> shape, of a tree of arrays or of metadata."""
    tree = getattr(tree, "item_metadata", tree)
    tree = getattr(tree, "tree", tree)
    return {
        "/".join(path_names(p)): tuple(m.shape)
        for p, m in jax.tree_util.tree_leaves_with_path(tree)
    }


def _some(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def tree_difference(stored, target, owner: str) -> str | None:
    """The first arrays missing, extra or of another shape, as text; None if they fit.

    owner: what `target` belongs to, in the text ("the model", "the optimizer").
    """
    # The target named as orbax stores it (optax's tuples and named tuples become lists
    # and dicts), so that both sides use the same names.
    have = _leaf_shapes(stored)
    want = _leaf_shapes(ocp.tree.serialize_tree(target, keep_empty_nodes=True))
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    if missing or extra:
        parts = [f"the checkpoint lacks {_some(missing)}"] if missing else []
        parts += [f"{owner} has no {_some(extra)}"] if extra else []
        return "; ".join(parts)
    for key, shape in want.items():
        if have[key] != shape:
            return f"{key} has shape {have[key]} in the checkpoint, {owner} needs {shape}"
    return None
