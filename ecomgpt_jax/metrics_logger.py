"""The training run's logs, written by process 0: metrics.jsonl, the evaluation logs
(<kind>.jsonl), TensorBoard and the console line. Written whole and renamed over, so
that a kill never leaves a cut line, and cut back to the restored step on resume
(TensorBoard: hidden after it, see `MetricsLogger`). A write that fails raises
`LogWriteError` once; the logger writes nothing after it.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Mapping

import jax
import numpy as np
from etils import epath

from ecomgpt_jax import checkpointing

EVAL_KINDS = ("eval_loss", "infer_eval")  # MetricsLogger.record_eval's kinds


class LogWriteError(OSError):
    """A log process 0 cannot read or write (full disk, permissions, a bucket error):
    one line, naming the file."""


def missing_writer_package(model_dir) -> str | None:
    """The package tensorboardX lacks to write under `model_dir`, or None. It writes
    gs:// itself, with google-cloud-storage (in requirements.txt). Every process checks
    before training: the writer exists on process 0 only, and its failure there, after
    the restore, would leave the other hosts waiting in the first step's collectives."""
    import importlib.util

    if not str(model_dir).startswith("gs://"):
        return None
    try:
        found = importlib.util.find_spec("google.cloud.storage") is not None
    except ModuleNotFoundError:  # no google.cloud namespace at all
        found = False
    return None if found else "google-cloud-storage"


def _write_lines(path: epath.Path, lines: list[str]) -> None:
    """The whole log, written atomically: a kill mid-write cannot leave it truncated."""
    checkpointing.write_atomically(path, "".join(line + "\n" for line in lines))


def duration_text(seconds: float) -> str:
    """H:MM:SS, hours unbounded: "55:33:16" (a clock's %H would say 07:33:16)."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


class MetricsLogger:
    """metrics.jsonl + TensorBoard + console line, read and written by process 0 only.

    One JSON line per logging step: step, loss, learning_rate, grad_norm,
    accuracy, tokens_per_second, seconds_per_step; evaluations in <kind>.jsonl
    (`record_eval`). On resume, lines after the restored step are dropped from all of
    them (they were computed after the last checkpoint, and are computed again); a run
    starting at step 0 keeps no evaluation (left by a run whose checkpoints are gone).
    """

    def __init__(self, model_dir, total_steps: int, start_step: int, schedule):
        self.enabled = jax.process_index() == 0
        self.total = total_steps
        self.schedule = schedule
        self.path = epath.Path(model_dir) / "metrics.jsonl"
        self.tb_dir = epath.Path(model_dir) / "tensorboard"
        self._pending: list[dict] = []
        self._lines: list[str] = []
        self._last_time = time.time()
        self._last_step = start_step
        self._writer = None
        self._flushes = 0
        self._eval_lines: dict[str, list[str]] = {kind: [] for kind in EVAL_KINDS}
        self._failed = False
        if not self.enabled:
            return
        with self._writing(self.path, "read"):
            if self.path.exists():
                self._lines = self._lines_up_to(self.path, start_step)
        if start_step:
            self._check_schedule()
        for kind in EVAL_KINDS:  # evaluations after the restored step are redone
            path = self.path.parent / f"{kind}.jsonl"
            with self._writing(path, "read"):
                if not path.exists():
                    continue
                self._eval_lines[kind] = self._lines_up_to(path, start_step or -1)
            with self._writing(path):
                _write_lines(path, self._eval_lines[kind])
        from tensorboardX import SummaryWriter

        # As the .jsonl logs: TensorBoard hides the events of earlier runs from this step
        # on (a SessionLog.START at purge_step), which the resumed steps write again.
        purge_step = start_step + 1 if start_step else 0
        with self._writing(self.tb_dir):
            self._writer = SummaryWriter(str(self.tb_dir), purge_step=purge_step)

    @contextlib.contextmanager
    def _writing(self, path, verb: str = "write"):
        """Any failure inside -> LogWriteError "cannot <verb> <path>: why"; the logger
        writes nothing after it (the caller stops the run; the logs stay as they were)."""
        try:
            yield
        except Exception as e:
            self._failed = True
            text = str(e).strip().splitlines()
            detail = text[0] if text else type(e).__name__
            raise LogWriteError(f"cannot {verb} {path}: {detail}") from None

    def _check_schedule(self) -> None:
        """Warns when the learning rate the last kept row logged is not what the schedule
        gives at that step now: a resume with another TRAIN_STEPS, LEARNING_RATE,
        WARMUP_STEPS or decay goes on from another point of another curve (the checkpoint
        holds the optimizer's step, not the schedule's settings)."""
        if not self._lines:
            return
        row = json.loads(self._lines[-1])
        logged, step = row.get("learning_rate"), int(row["step"])
        now = float(self.schedule(step - 1))
        if isinstance(logged, float) and not math.isclose(logged, now, rel_tol=1e-5, abs_tol=1e-12):
            print(
                f"warning: the learning-rate schedule changed: step {step} was logged with "
                f"{logged:.3e}, the schedule now gives {now:.3e} there (TRAIN_STEPS, "
                "LEARNING_RATE, WARMUP_STEPS or OptimizerConfig changed); training goes on "
                "with the new one",
                file=sys.stderr,  # with the other entry points' warnings
                flush=True,
            )

    @staticmethod
    def _lines_up_to(path: epath.Path, start_step: int) -> list[str]:
        """The lines of a .jsonl log up to `start_step`; unreadable ones (a run killed
        mid-write before writes were atomic, a hand edit) are skipped with one warning."""
        kept, bad = [], []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                step = int(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):
                bad.append(number)
                continue
            if step <= start_step:
                kept.append(line)
        if bad:
            what = (
                "skipped an unreadable line"
                if len(bad) == 1
                else f"skipped {len(bad)} unreadable lines ({', '.join(map(str, bad))})"
            )
            print(f"warning: {path}:{bad[0]}: {what}", file=sys.stderr, flush=True)
        return kept

    def record(self, step: int, metrics: Mapping[str, jax.Array], force: bool = False) -> None:
        """Keeps the step's (device) metrics; writes when `force` (no sync otherwise)."""
        self._pending.append(metrics)
        if force:
            self._flush(step)

    def flush(self, step: int) -> None:
        """Writes what `record` kept since the last write (if anything)."""
        if self._pending:
            self._flush(step)

    def _flush(self, step: int) -> None:
        pending = jax.device_get(self._pending)
        self._pending = []
        now = time.time()
        steps = max(step - self._last_step, 1)
        elapsed = max(now - self._last_time, 1e-9)
        self._last_time, self._last_step = now, step
        last = pending[-1]
        row = {
            "step": step,
            "loss": float(last["loss"]),
            "learning_rate": float(self.schedule(step - 1)),
            "grad_norm": float(last["grad_norm"]),
            "accuracy": float(last["accuracy"]),
            "tokens_per_second": float(sum(float(p["tokens"]) for p in pending) / elapsed),
            "seconds_per_step": elapsed / steps,
        }
        if not self.enabled or self._failed:
            return
        self._lines.append(json.dumps(row))
        with self._writing(self.path):
            _write_lines(self.path, self._lines)
        with self._writing(self.tb_dir):
            for key, value in row.items():
                if key != "step":
                    self._writer.add_scalar(f"train/{key}", value, step)
            self._writer.flush()
        eta = (self.total - step) * row["seconds_per_step"]
        # The first interval includes compilation: no ETA from it.
        eta_text = duration_text(eta) if self._flushes else "-"
        self._flushes += 1
        with self._writing("stdout"):  # a pipe to a `tee` that ended, say
            print(
                f"step {step}/{self.total}  loss {row['loss']:.4f}  "
                f"lr {row['learning_rate']:.2e}  grad_norm {row['grad_norm']:.3f}  "
                f"tok/s {row['tokens_per_second']:.0f}  ETA {eta_text}",
                flush=True,
            )

    def record_eval(self, kind: str, step: int, scores: Mapping[str, Mapping], summary: str):
        """Logs an evaluation beside the loss.

        kind: "infer_eval" (`scores`: the metrics.json content) or "eval_loss" (`scores`:
        `Trainer.eval_loss`). MODEL_DIR/<kind>.jsonl gets one line per evaluation,
        TensorBoard `<kind>/<task>/<score>` per number, the console
        `<kind> step <step>: <summary>`.
        """
        if not self.enabled or self._failed:
            return
        self._eval_lines[kind].append(json.dumps({"step": step, **scores}, ensure_ascii=False))
        path = self.path.parent / f"{kind}.jsonl"
        with self._writing(path):
            _write_lines(path, self._eval_lines[kind])
        with self._writing(self.tb_dir):
            for task, values in scores.items():
                for key, value in values.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        self._writer.add_scalar(f"{kind}/{task}/{key}", value, step)
            self._writer.flush()
        with self._writing("stdout"):
            print(f"{kind} step {step}: {summary}", flush=True)

    def logged(self, kind: str, step: int) -> bool:
        """Whether <kind>.jsonl holds an evaluation at `step`, as process 0 knows it.

        Every process gets process 0's answer (a broadcast: call it on all of them), so
        that all take part in the evaluation's collectives or none does.
        """
        steps = {int(json.loads(line)["step"]) for line in self._eval_lines[kind]}
        if jax.process_count() == 1:
            return step in steps
        from jax.experimental import multihost_utils

        answer = np.int32(self.enabled and step in steps)
        return bool(multihost_utils.broadcast_one_to_all(answer))

    def exclude(self, seconds: float) -> None:
        """Leaves `seconds` (an evaluation) out of the next tokens/s and s/step."""
        self._last_time += seconds

    def close(self, quiet: bool = False) -> None:
        """Closes TensorBoard's file. quiet: a failure is not raised (another error is
        on its way out); after a failed write it never is (that one said why)."""
        if self._writer is None:
            return
        if quiet or self._failed:
            with contextlib.suppress(Exception):
                self._writer.close()
            return
        with self._writing(self.tb_dir):
            self._writer.close()
