"""The training loop behind `python -m ecomgpt_jax.train`, free of gin and TensorFlow.

`train.py` parses flags and gin, checks the run (`run_config`), builds the vocabulary
and the input iterator, and hands them to `Trainer`, which owns: the sharded train
state (fresh, from a HF folder, from an orbax params checkpoint, or resumed from
MODEL_DIR), the jitted step, the evaluations during training, checkpoints, logs
(`metrics_logger`) and preemption. Every process runs the same code; only process 0
writes logs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax

from ecomgpt_jax import (
    checkpointing,
    metrics_logger,
    multihost,
    partitioning,
    preemption,
)
from ecomgpt_jax import train_step as ts
from ecomgpt_jax.models import config as model_config
from ecomgpt_jax.models import decoder, hf_io
from ecomgpt_jax.run_config import RunConfig, UserError


def _host_params_to_layout(params, shardings):
    """Numpy params (same on every process) -> global arrays, each process copying its slices.

    params: pytree of numpy arrays, each of its parameter's full (global) shape, e.g.
    `embed/embedding` [vocab_size, hidden]; shardings: the same
    pytree of NamedSharding. Returns jax.Arrays of those shapes, laid out by `shardings`.
    """
    return jax.tree.map(
        lambda a, s: jax.make_array_from_callback(a.shape, s, lambda idx: a[idx]),
        params,
        shardings,
    )


def _loss_row(sums: Mapping[str, float]) -> dict[str, float]:
    weight = sums["weight_sum"]
    return {
        "loss": sums["loss_sum"] / max(weight, 1.0),
        "accuracy": sums["correct_sum"] / max(weight, 1.0),
        "answer_tokens": weight,
    }


def loss_summary(scores: Mapping[str, Mapping]) -> str:
    """The console text of an eval_loss: the "all" row and the number of tasks."""
    every = scores["all"]
    return (
        f"loss {every['loss']:.4f}  accuracy {100 * every['accuracy']:.2f}%  "
        f"({len(scores) - 1} tasks, {every['answer_tokens']:.0f} answer tokens)"
    )


def score_summary(scores: Mapping[str, Mapping]) -> str:
    """The console text of an infer_eval: its average scores, in percent."""
    average = scores.get("average", {})  # scores, and "tasks": {key: count} (skipped)
    return "  ".join(f"{k} {100 * v:.2f}" for k, v in average.items() if isinstance(v, float))


@dataclasses.dataclass(frozen=True)
class Result:
    """What a run leaves behind (printed by train.py)."""

    step: int
    checkpoint_dir: str | None  # None: stopped at step 0, nothing trained or saved
    preempted: bool  # stopped early by SIGTERM or Ctrl-C (`checkpoint_dir` saved, if any)
    first_loss: float | None
    last_loss: float | None
    interrupted: bool = False  # the early stop was a Ctrl-C


class Trainer:
    """Model, optimizer, sharded state layout and checkpoints for one run on one mesh."""

    def __init__(self, run: RunConfig, cfg: model_config.ModelConfig, mesh):
        self.run, self.cfg, self.mesh = run, cfg, mesh
        self.model = decoder.Decoder(cfg)
        total = int(run.train.train_steps)
        self.schedule = ts.learning_rate_schedule(run.optimizer, total)
        self.tx = ts.make_optimizer(run.optimizer, total)
        with jax.set_mesh(mesh), partitioning.axis_rules():
            self.layout = ts.state_layout(self.model, self.tx, mesh)
        self.checkpointer = checkpointing.Checkpointer(run.train.model_dir, run.checkpoint)
        self._eval_step = None  # jitted on the first eval_loss

    def initial_state(self) -> tuple[ts.TrainState, checkpointing.DataPosition | None]:
        """The latest checkpoint in MODEL_DIR, else fresh / HF / orbax initial weights."""
        latest = self.checkpointer.latest_step()
        if latest is not None:
            return self.checkpointer.restore(latest, self.layout)
        train = self.run.train
        params = None
        if train.init_from_hf:
            _, host = hf_io.load_hf_params(train.init_from_hf, dtype=self.cfg.param_dtype)
            params = _host_params_to_layout(host, self.layout.shardings.params)
        elif train.init_from_checkpoint:
            params = checkpointing.restore_params(
                train.init_from_checkpoint, self.layout.abstract.params
            )
        with jax.set_mesh(self.mesh), partitioning.axis_rules():
            state = ts.init_state(self.model, self.tx, self.layout, train.seed, params)
        return state, None

    def eval_loss(
        self, params, eval_batches: Iterable[tuple[str, ts.Batch]]
    ) -> dict[str, dict[str, float]]:
        """Teacher-forced loss of `params` on `eval_batches`, per task and over "all".

        params: the train state's params (laid out by `self.layout`); eval_batches:
        re-iterable (task name, batch) pairs, each batch the `ts.BATCH_KEYS` arrays of
        shape [B, L] (B divisible by the mesh's data x fsdp and by num_microbatches).
        Returns {task or "all": {"loss", "accuracy", "answer_tokens"}}, Python floats:
        loss (mean over answer tokens, as the training loss), accuracy (next-token argmax
        on answer tokens) and answer_tokens. "all" weighs every answer token of every task
        the same.
        """
        if self._eval_step is None:
            self._eval_step = ts.jit_eval_step(
                ts.make_eval_step(self.model, self.run.step),
                self.layout,
                partitioning.data_sharding(self.mesh),
            )
        sums: dict[str, list] = {}
        for task, batch in eval_batches:
            sums.setdefault(task, []).append(self._eval_step(params, batch))
        if not sums:  # e.g. a generator, used up by an earlier evaluation
            raise ValueError("eval_batches yielded no batch; pass a re-iterable collection")
        totals = {
            task: {k: float(sum(p[k] for p in parts)) for k in parts[0]}
            for task, parts in jax.device_get(sums).items()
        }
        totals["all"] = {k: sum(t[k] for t in totals.values()) for k in ts.EVAL_SUMS}
        return {task: _loss_row(t) for task, t in totals.items()}

    def fit(
        self,
        state: ts.TrainState,
        batches: Iterator[dict[str, jax.Array]],
        position: checkpointing.DataPosition,
        infer_eval: Callable[[Any, int], Mapping] | None = None,
        eval_batches: Iterable[tuple[str, ts.Batch]] | None = None,
    ) -> Result:
        """Trains from `state.step` to `train_steps`; `batches.position` counts batches used.

        Evaluations: `infer_eval(params, step)` -> metrics.json dict (when given) every
        `infer_eval_every_steps` steps; the held-out loss on `eval_batches` ((task, batch)
        pairs, re-iterable, e.g. `input_pipeline.EvalBatches`; when given) every
        `eval_loss_every_steps` steps. Each runs at step 0, every N steps and after the
        last step, unless its log already holds that step: a resume makes, at its starting
        step, only an evaluation that a preemption or failure skipped there. If one raises
        after steps were trained, they are saved first.

        A failure on some processes only (a log process 0 cannot write, a batch one host
        cannot read; batches are read ahead for it) stops every process after the same
        step, saved; each then raises its own error, or UserError naming who failed.
        """
        loop = _Loop(self, state, batches, position, self._evaluations(infer_eval, eval_batches))
        guard, total = loop.guard, loop.total
        finished = preempted = False
        try:
            with jax.set_mesh(self.mesh), partitioning.axis_rules():
                step_fn = ts.jit_train_step(
                    ts.make_train_step(
                        self.model, self.tx, self.run.step, self.layout.shardings.params
                    ),
                    self.layout,
                    partitioning.data_sharding(self.mesh),
                )
                # Before step 1's collectives, so a read failing on one host stops all here.
                multihost.on_every_process(
                    loop.read_first_batches, UserError, "reading its first batches"
                )
                # Step 0's evaluation, or one a preemption or failure skipped at a resume. A
                # log it could not write stops the run before training (a resume redoes it);
                # so does a stop asked for during it, with nothing to save (the step is saved
                # already, or is step 0): a preemption's grace period is no time to compile.
                failed = False
                if loop.evaluate() and guard.should_stop(wait=True):
                    failed, preempted = guard.failed, not guard.failed
                while loop.step < total and not (failed or preempted):
                    loop.train_step(step_fn)
                    preempted = guard.should_stop()  # or a failure: raised below
                    if preempted or loop.step == total or loop.step % loop.save_every == 0:
                        loop.save(force_log=preempted)
                    if preempted:
                        break
                    # A stop asked for during an evaluation (infer_eval can take minutes),
                    # or its log failing, is answered now, not after one more step:
                    # preemption notices are short, and a resume redoes the evaluation.
                    if loop.evaluate() and loop.step < total and guard.should_stop(wait=True):
                        preempted = True
                        loop.save(force_log=True)
                        break
                self._stop_if_any_failed(guard.failure, loop.step, loop.start)
                # A stop in the last step, with no evaluation left to make there, stopped
                # nothing: the run is finished (a resume would have nothing to do).
                preempted = preempted and (loop.step < total or bool(loop.evaluations_due()))
            finished = True
        finally:  # also on errors: finish pending async saves, restore the signal handlers
            loop.close(finished)
        return Result(
            step=loop.step,
            checkpoint_dir=str(self.checkpointer.step_dir(loop.step)) if loop.step else None,
            preempted=preempted,
            first_loss=loop.first_loss,
            last_loss=loop.last_loss(),
            interrupted=preempted and guard.interrupted,
        )

    def _evaluations(self, infer_eval, eval_batches) -> list[_Evaluation]:
        """The evaluations `fit` makes, from its arguments and the run's settings."""
        train, evaluations = self.run.train, []
        if eval_batches is not None and train.eval_loss_every_steps > 0:

            def held_out(params, _step: int) -> dict:
                return self.eval_loss(params, eval_batches)

            evaluations.append(
                _Evaluation("eval_loss", train.eval_loss_every_steps, held_out, loss_summary)
            )
        if infer_eval is not None and train.infer_eval_every_steps > 0:
            evaluations.append(
                _Evaluation("infer_eval", train.infer_eval_every_steps, infer_eval, score_summary)
            )
        return evaluations

    def _stop_if_any_failed(self, failure: tuple | None, step: int, start: int) -> None:
        """After the loop, on every process: when any failed (`failure`: this process's
        (what, error), see PreemptionGuard.fail), process 0 says what was saved and
        every process raises, its own error or UserError."""
        if failure is None or failure[0] != WRITING_CHECKPOINT:
            try:  # "saved" once it is: a full disk may fail the last save too
                self.checkpointer.wait()
            except checkpointing.CheckpointWriteError as e:
                failure = (WRITING_CHECKPOINT, e)
        stopped = multihost.any_process_failed(failure is not None)
        if not stopped:
            return
        # Whether the step was saved: on every process alike (a write may fail on one).
        unsaved = multihost.any_process_failed(bool(failure) and failure[0] == WRITING_CHECKPOINT)
        if jax.process_index() == 0:
            what = f"{failure[0]} failed" if failure else f"process {stopped[0]} failed"
            if unsaved:
                kept = "not saved (the error says which step was)"
            elif step > start:
                kept = f"saved {self.checkpointer.step_dir(step)}"
            else:
                kept = "nothing trained is lost"
            with contextlib.suppress(OSError):  # e.g. stdout a closed pipe: raise below
                print(f"{what} at step {step}; {kept}", flush=True)
        error = failure[1] if failure else None
        multihost.stop_together(error, stopped, UserError, f"at step {step}")


@dataclasses.dataclass(frozen=True)
class _Evaluation:
    """One kind of evaluation during training."""

    kind: str  # its name in the logs: "eval_loss" or "infer_eval"
    every: int  # steps
    compute: Callable[[Any, int], Mapping]  # (params, step) -> scores
    summarise: Callable[[Mapping], str]  # scores -> console text


# guard.fail's `what` for a checkpoint that could not be written: no save is tried after it.
WRITING_CHECKPOINT = "writing a checkpoint"


class _Loop:
    """One `fit` call's moving parts: the state as it trains, the batches read ahead, the
    logs, the preemption guard, and what a failure on this process alone does.

    A failure on this process alone goes to `guard.fail`: every host saves the step where
    their guards agree to stop, then all raise (`Trainer._stop_if_any_failed`). Raising
    at once would leave the other hosts waiting in the next collective.
    """

    def __init__(
        self,
        trainer: Trainer,
        state: ts.TrainState,
        batches: Iterator[dict[str, jax.Array]],
        position: checkpointing.DataPosition,
        evaluations: list[_Evaluation],
    ):
        self.trainer, self.state, self.position = trainer, state, position
        self.evaluations = evaluations
        train = trainer.run.train
        self.total = int(train.train_steps)
        self.step = self.start = int(jax.device_get(state.step))
        self.log_every = max(int(train.log_every_steps), 1)
        self.save_every = max(int(trainer.run.checkpoint.save_every_steps), 1)
        self.first_loss: float | None = None
        self.metrics = None  # the last step's, on device
        # Process 0 reads its logs here: a failure must stop the others before the first
        # collective.
        self.logger = multihost.on_every_process(
            lambda: metrics_logger.MetricsLogger(
                train.model_dir, self.total, self.step, trainer.schedule
            ),
            UserError,
            "reading MODEL_DIR's logs",
        )
        self.guard = preemption.PreemptionGuard(trainer.mesh)
        # A batch every host's guard check can still stop before: see ReadAhead.
        self.ahead = multihost.ReadAhead(
            batches, depth=1 + self.guard.lag, limit=self.total - self.start
        )

    def read_first_batches(self) -> None:
        error = self.ahead.read_ahead()
        if error is not None:
            raise error

    def train_step(self, step_fn) -> None:
        """One step, the next batches read while it runs, and its log line."""
        self.state, self.metrics = step_fn(self.state, next(self.ahead))
        self.step += 1
        error = self.ahead.read_ahead()
        if error is not None:
            self.guard.fail("reading data", error)
        try:  # an async save that failed (a full disk): stop now, not at the next save
            self.trainer.checkpointer.check()
        except checkpointing.CheckpointWriteError as e:
            self.guard.fail(WRITING_CHECKPOINT, e)
        step = self.step
        flush = step % self.log_every == 0 or step == self.total or self.first_loss is None
        self.log(self.logger.record, step, self.metrics, flush)
        if self.first_loss is None:
            self.first_loss = float(jax.device_get(self.metrics["loss"]))

    def last_loss(self) -> float | None:
        return None if self.metrics is None else float(jax.device_get(self.metrics["loss"]))

    def log(self, write, *args) -> None:
        """A write of process 0's logs."""
        try:
            write(*args)
        except metrics_logger.LogWriteError as e:
            self.guard.fail("writing the logs", e)

    def save(self, force_log: bool = False) -> bool:
        """Saves this step; returns whether it did. Every process calls it at the same
        step (orbax's save is a collective), and every process skips it once writing a
        checkpoint failed on any: it would fail again, and the others would wait."""
        if force_log:
            self.log(self.logger.flush, self.step)
        try:  # the previous save's failure, known here before the agreement, not in
            # orbax's save on this host alone (which waits for it anyway)
            self.trainer.checkpointer.wait()
        except checkpointing.CheckpointWriteError as e:
            self.guard.fail(WRITING_CHECKPOINT, e)
        if multihost.any_process_failed(self.save_failed):
            return False
        # The batches used, not those read ahead: a resume reads on from the next one.
        pos = dataclasses.replace(self.position, batches_consumed=self.ahead.position)
        try:
            self.trainer.checkpointer.save(self.state, pos, force=True)
        except checkpointing.CheckpointWriteError as e:
            self.guard.fail(WRITING_CHECKPOINT, e)
            return False
        return True

    @property
    def save_failed(self) -> bool:
        """Whether writing a checkpoint failed on this process."""
        return bool(self.guard.failure) and self.guard.failure[0] == WRITING_CHECKPOINT

    def evaluations_due(self) -> list[_Evaluation]:
        """The evaluations this step asks for that its logs do not hold yet (all processes
        take part: `logged` is a broadcast)."""
        return [
            e
            for e in self.evaluations
            if (self.step % e.every == 0 or self.step == self.total)
            and not self.logger.logged(e.kind, self.step)
        ]

    def evaluate(self) -> bool:
        """The evaluations due at this step (all processes take part: collectives);
        whether any ran."""
        ran = False
        for e in self.evaluations_due():
            jax.block_until_ready(self.state.params)  # time the evaluation, not queued steps
            began = time.time()
            try:
                scores = e.compute(self.state.params, self.step)
            except Exception as error:
                self._evaluation_failed(e.kind, error)
                raise
            self.log(self.logger.record_eval, e.kind, self.step, scores, e.summarise(scores))
            self.logger.exclude(time.time() - began)
            ran = True
        return ran

    def _evaluation_failed(self, kind: str, error: Exception) -> None:
        """Whatever went wrong, keeps the steps trained: on every process, or on none (one
        alone would wait in the save's collectives for the others); says what was kept."""
        step, start = self.step, self.start
        if step > start and multihost.stopped_together(error):
            saved = self.save(force_log=True)
            what = (
                f"saved {self.trainer.checkpointer.step_dir(step)}"
                if saved
                else f"not saved: {WRITING_CHECKPOINT} failed"
            )
        elif step > start:
            what = "not saved: the other processes did not stop here"
        else:  # the same failure would stop every resume: say how to go on
            what = (
                f"nothing trained is lost; to train on without it set {kind.upper()}_EVERY_STEPS=0"
            )
        if jax.process_index() == 0:
            print(f"{kind} failed at step {step}; {what}", flush=True)
        if self.guard.failure:  # not to be lost behind this one
            print("{} failed too: {}".format(*self.guard.failure), file=sys.stderr)

    def close(self, finished: bool) -> None:
        """Closes the guard, the logs and the checkpointer, each whatever the others raise."""
        with contextlib.ExitStack() as closing:
            closing.callback(self.guard.close)
            # Not to hide an error on its way out behind a log that cannot be closed.
            closing.callback(self.logger.close, quiet=not finished)
            closing.callback(self.trainer.checkpointer.close)
