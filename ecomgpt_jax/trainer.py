"""The training loop behind `python -m ecomgpt_jax.train`, free of gin and TensorFlow.

`train.py` parses flags and gin, builds the vocabulary and the input iterator,
and hands them to `Trainer`, which owns: the model config, shape checks, the
sharded train state (fresh, from a HF folder, from an orbax params checkpoint,
or resumed from MODEL_DIR), the jitted step, the evaluations during training,
checkpoints, logs (`metrics_logger`) and preemption. Every process runs the same
code; only process 0 writes logs.
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
    evaluation,
    metrics_logger,
    multihost,
    partitioning,
    preemption,
)
from ecomgpt_jax import train_step as ts
from ecomgpt_jax.models import config as model_config
from ecomgpt_jax.models import decoder, hf_io


class UserError(ValueError):
    """A run configuration that cannot work (reported as one line by train.py)."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which model, and its vocabulary.

    config: the ModelConfig bound by a gin_configs/models/*.gin file (and any
    `--gin.ModelConfig.<field>` overrides). With `TrainConfig.init_from_hf` the
    architecture comes from the HF folder's config.json, with `init_from_checkpoint`
    from the checkpoint's model_config.json; in both cases the run settings
    (`model_config.RUNTIME_FIELDS`: dtypes, remat policy, layer scan, attention kernel),
    which neither file holds for this run, still come from `config`.
    vocabulary: "sentencepiece" (path None: the bundled sample model) or
    "huggingface" (path None: the tokenizer.json of `init_from_hf`).
    """

    config: model_config.ModelConfig
    vocabulary: str = "sentencepiece"
    vocabulary_path: str | None = None


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The run: where, how long, on which mesh, starting from what.

    mesh_shape: (data, fsdp, tensor) sizes, one may be -1 ("the rest").
    init_from_hf / init_from_checkpoint: initial weights when MODEL_DIR holds no
    checkpoint yet (a checkpoint in MODEL_DIR always wins: that is a resume, which reads
    neither folder: MODEL_DIR holds the architecture and the HF tokenizer files).
    data_dir: the EcomInstruct root (None: $ECOMGPT_DATA_DIR, else the bundled sample).
    tfds_data_dir: where `python -m tasks.tfds_builder` prepared the tasks (None: its
    default, <data root>/_tfds); tasks without a current copy there read their JSON.
    infer_eval_every_steps: decode and score `RunConfig.infer_eval` every N steps
    (T5X's infer_eval; 0 = never).
    eval_loss_every_steps: the teacher-forced loss on held-out batches every N steps
    (T5X's training eval; 0 = never), on the first `eval_loss_batches` batches of each
    task of the `eval_loss/DataConfig` mixture. Both evaluations also run at step 0 and
    after the last step (`Trainer.fit`).
    """

    model_dir: str = "runs/ecom_default"
    train_steps: int = 300
    mesh_shape: tuple[int, int, int] = (-1, 1, 1)
    seed: int = 0
    log_every_steps: int = 10
    init_from_hf: str | None = None
    init_from_checkpoint: str | None = None
    data_dir: str | None = None
    tfds_data_dir: str | None = None
    infer_eval_every_steps: int = 0
    eval_loss_every_steps: int = 0
    eval_loss_batches: int = 2

    def __post_init__(self):
        for macro, value, least in (
            # 0 or negative would "finish" at once and point at a checkpoint never written.
            ("TRAIN_STEPS", self.train_steps, 1),
            ("LOG_EVERY_STEPS", self.log_every_steps, 1),
            ("INFER_EVAL_EVERY_STEPS", self.infer_eval_every_steps, 0),
            ("EVAL_LOSS_EVERY_STEPS", self.eval_loss_every_steps, 0),
            ("EVAL_LOSS_BATCHES", self.eval_loss_batches, 1),
        ):
            if not ts.is_integer(value) or value < least:
                raise UserError(f"{macro} must be an integer >= {least}, got {value!r}")
        if self.init_from_hf and self.init_from_checkpoint:
            # Two starting points: either choice would silently drop the other.
            raise UserError(
                "INIT_FROM_HF and INIT_FROM_CHECKPOINT are both set: give one (the other None)"
            )
        # It seeds the initial weights and dropout: None would draw other numbers on every
        # run, and a resume would go on from numbers the first run never drew.
        if not ts.is_integer(self.seed):
            raise UserError(f"SEED must be an integer, got {self.seed!r}")
        try:  # the mesh's own check (eval's MESH_SHAPE gets the same)
            shape = partitioning.MeshConfig(self.mesh_shape).shape
        except partitioning.MeshError as e:
            raise UserError(str(e)) from None
        object.__setattr__(self, "mesh_shape", shape)  # a list from gin works too


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """All configs of one run (each a frozen dataclass bound by gin in train.py)."""

    train: TrainConfig
    model: ModelSpec
    optimizer: ts.OptimizerConfig
    step: ts.StepConfig
    checkpoint: checkpointing.CheckpointConfig
    infer_eval: evaluation.EvalConfig | None = None


def build_model_config(run: RunConfig) -> model_config.ModelConfig:
    """The gin-bound ModelConfig, or the architecture of INIT_FROM_HF / INIT_FROM_CHECKPOINT
    with the gin-bound run settings (e.g. bloomz-7b1's full rematerialisation, without
    which its activations do not fit a chip).

    A resume of such a run takes the architecture from MODEL_DIR/model_config.json (what
    its checkpoints hold) and does not read the initial weights' folder, which may be
    gone by then.

    Raises UserError when the weights are of another family than the gin-bound config:
    its run settings were then chosen for another model (a models/*.gin file forgotten).
    """
    bound = run.model.config
    source = _architecture_source(run.train)
    if source is None:
        return bound
    if source == RESUMED_CONFIG:
        cfg = checkpointing.load_model_config(run.train.model_dir)
    elif source == "INIT_FROM_HF":
        cfg = hf_io.read_hf_config(run.train.init_from_hf)
    else:
        cfg = _init_checkpoint_config(run.train.init_from_checkpoint)
    if cfg.family != bound.family:
        raise UserError(
            f"{source} holds a {cfg.hf_model_type} model but ModelConfig is a "
            f"{bound.hf_model_type} one: include a gin_configs/models/*.gin file of its "
            "family and size, which sets how it runs (dtypes, remat policy, layer scan, "
            "attention kernel); the weights give the architecture"
        )
    runtime = {f: getattr(bound, f) for f in model_config.RUNTIME_FIELDS}
    return dataclasses.replace(cfg, **runtime)


def unused_bindings_note(run: RunConfig, cfg: model_config.ModelConfig) -> str | None:
    """None, or a line naming the gin-bound ModelConfig fields that `cfg` (from
    `build_model_config`) does not have: with INIT_FROM_HF / INIT_FROM_CHECKPOINT the
    architecture is the weights', whatever a models/*.gin file or override says. Many
    of them mean the run settings were chosen for a model of another size."""
    bound = run.model.config
    unused = [
        f"{f.name}={getattr(bound, f.name)!r} (weights: {getattr(cfg, f.name)!r})"
        for f in dataclasses.fields(cfg)
        if getattr(bound, f.name) != getattr(cfg, f.name)
    ]
    if not unused:
        return None
    return (
        f"note: {_architecture_source(run.train)} sets the architecture; these ModelConfig "
        "bindings are not used: " + ", ".join(unused)
    )


RESUMED_CONFIG = "MODEL_DIR/model_config.json"


def _architecture_source(train: TrainConfig) -> str | None:
    """Where `build_model_config` takes the architecture from: RESUMED_CONFIG (a resume of
    a run from initial weights), INIT_FROM_HF (first), INIT_FROM_CHECKPOINT, or None (the
    gin-bound ModelConfig; a resume checks it against the checkpoint)."""
    if not (train.init_from_hf or train.init_from_checkpoint):
        return None
    root = checkpointing.as_path(train.model_dir)
    if checkpointing.has_checkpoint(root) and (root / checkpointing.MODEL_CONFIG_FILE).is_file():
        return RESUMED_CONFIG
    return "INIT_FROM_HF" if train.init_from_hf else "INIT_FROM_CHECKPOINT"


def _init_checkpoint_config(path: str) -> model_config.ModelConfig:
    """The model_config.json of INIT_FROM_CHECKPOINT; UserError in terms of that macro."""
    try:
        checkpointing.resolve_params_path(path)  # does not exist / holds no checkpoint
    except checkpointing.CheckpointError as e:
        raise UserError(f"INIT_FROM_CHECKPOINT: {e}") from None
    cfg = checkpointing.find_model_config(path)
    if cfg is None:
        raise UserError(
            f"INIT_FROM_CHECKPOINT: {path} holds a checkpoint but no "
            f"{checkpointing.MODEL_CONFIG_FILE} at or above it (train.py and "
            "`convert hf-to-orbax` write one); copy the one it was made with next to it"
        )
    return cfg


@dataclasses.dataclass(frozen=True)
class Shapes:
    """The per-step shapes checked against the model and the mesh."""

    global_batch_size: int
    sequence_length: int
    vocab_size: int


# The ModelConfig field that sizes each logical axis of the parameters and activations:
# `check_shapes` checks it against the mesh axes `partitioning.RULES` split that axis over.
_SIZED_BY = {
    partitioning.VOCAB: "vocab_size",
    partitioning.ACT_VOCAB: "vocab_size",
    partitioning.EMBED: "hidden",
    partitioning.ACT_EMBED: "hidden",
    partitioning.MLP: "mlp_dim",
    partitioning.ACT_MLP: "mlp_dim",
    partitioning.HEADS: "heads",
    partitioning.ACT_HEADS: "heads",
    partitioning.KV_HEADS: "kv_heads",
    partitioning.HEAD_DIM: "head_dim",
    partitioning.LAYERS: "layers",
}


def check_mesh(cfg: model_config.ModelConfig, mesh) -> None:
    """UserError naming each ModelConfig dimension the mesh axes it is split over do not
    divide. Found here, before anything is laid out: jax's IndivisibleError would come as
    a trace from the first jit (a fresh start) or from orbax (a resume)."""
    problems = {}
    for logical, field in _SIZED_BY.items():
        axes, ways = partitioning.mesh_split(logical, mesh)
        size = getattr(cfg, field)
        if size % ways:
            axis = " x ".join(axes) + (" axes" if len(axes) > 1 else " axis")
            problems[field, axes] = (
                f"ModelConfig.{field} {size} is not divisible by the mesh's {axis} ({ways})"
            )
    if problems:
        raise UserError(
            f"MESH_SHAPE {tuple(mesh.devices.shape)} does not fit the model: "
            + "; ".join(problems.values())
        )


def check_shapes(cfg, shapes: Shapes, step: ts.StepConfig, mesh) -> None:
    """Raises UserError (one line) for a mesh/batch/sequence/vocabulary/loss chunk that
    cannot work."""
    check_mesh(cfg, mesh)
    b, m = shapes.global_batch_size, int(step.num_microbatches)
    divisor = partitioning.batch_divisor(mesh)
    if b % m:
        raise UserError(f"BATCH_SIZE {b} is not divisible by num_microbatches {m}")
    if (b // m) % divisor:
        raise UserError(
            f"BATCH_SIZE {b} / num_microbatches {m} = {b // m} rows per micro-batch is not "
            f"divisible by the mesh's data x fsdp = {divisor} (MESH_SHAPE "
            f"{tuple(mesh.devices.shape)})"
        )
    if shapes.sequence_length > cfg.max_positions:
        raise UserError(
            f"TASK_FEATURE_LENGTHS give {shapes.sequence_length} tokens per row (inputs + "
            f"targets) but the model's max_positions is {cfg.max_positions}"
        )
    if shapes.vocab_size > cfg.vocab_size:
        raise UserError(
            f"the vocabulary has {shapes.vocab_size} ids but the model's vocab_size is "
            f"{cfg.vocab_size}; use the model's own vocabulary (or, training from "
            "scratch, a larger ModelConfig.vocab_size)"
        )
    length, chunk = shapes.sequence_length, step.loss_chunk_size
    # A chunk that does not split the row into several would compute every logit at once.
    if chunk and not ts.splits_rows(chunk, length):
        raise UserError(
            f"StepConfig.loss_chunk_size {chunk} does not split the {length} tokens per row "
            "(TASK_FEATURE_LENGTHS inputs + targets) into equal chunks: use a divisor of "
            f"{length} smaller than it, or 0 (no chunks: the logits of whole rows)"
        )


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
    checkpoint_dir: str
    preempted: bool  # stopped early by SIGTERM or Ctrl-C, after saving `checkpoint_dir`
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
        run = self.run
        total = int(run.train.train_steps)
        step = start = int(jax.device_get(state.step))
        # Process 0 reads its logs here: a failure must stop the others before the first
        # collective.
        logger = multihost.on_every_process(
            lambda: metrics_logger.MetricsLogger(run.train.model_dir, total, step, self.schedule),
            UserError,
            "reading MODEL_DIR's logs",
        )
        guard = preemption.PreemptionGuard(self.mesh)
        # A batch every host's guard check can still stop before: see ReadAhead.
        ahead = multihost.ReadAhead(batches, depth=1 + guard.lag, limit=total - start)
        finished = False
        first = metrics = None
        preempted = False
        every = max(int(run.train.log_every_steps), 1)
        save_every = max(int(run.checkpoint.save_every_steps), 1)

        def held_out(params, _step: int) -> dict:
            return self.eval_loss(params, eval_batches)

        evaluations = []  # (kind, every N steps, compute(params, step), console summary)
        if eval_batches is not None and run.train.eval_loss_every_steps > 0:
            evaluations.append(
                ("eval_loss", run.train.eval_loss_every_steps, held_out, loss_summary)
            )
        if infer_eval is not None and run.train.infer_eval_every_steps > 0:
            evaluations.append(
                ("infer_eval", run.train.infer_eval_every_steps, infer_eval, score_summary)
            )

        # A failure on this process alone goes to `guard.fail`: every host saves the step
        # where their guards agree to stop, then all raise (after the loop). Raising at
        # once would leave the other hosts waiting in the next collective.
        def log(write, *args) -> None:
            """A write of process 0's logs."""
            try:
                write(*args)
            except metrics_logger.LogWriteError as e:
                guard.fail("writing the logs", e)

        def save(force_log: bool = False) -> None:
            if force_log:
                log(logger.flush, step)
            pos = dataclasses.replace(position, batches_consumed=ahead.position)
            self.checkpointer.save(state, pos, force=True)

        def evaluate() -> bool:
            """The evaluations due at `step` (all processes take part: collectives);
            whether any ran."""
            ran = False
            for kind, n, compute, summarise in evaluations:
                if (step % n and step != total) or logger.logged(kind, step):
                    continue
                jax.block_until_ready(state.params)  # time the evaluation, not queued steps
                began = time.time()
                try:
                    scores = compute(state.params, step)
                except Exception as e:
                    # Whatever went wrong, keep the steps trained: on every process, or on
                    # none (one alone would wait in the save's collectives for the others).
                    if step > start and multihost.stopped_together(e):
                        save(force_log=True)
                        what = f"saved {self.checkpointer.step_dir(step)}"
                    elif step > start:
                        what = "not saved: the other processes did not stop here"
                    else:  # the same failure would stop every resume: say how to go on
                        what = (
                            "nothing trained is lost; to train on without it set "
                            f"{kind.upper()}_EVERY_STEPS=0"
                        )
                    if jax.process_index() == 0:
                        print(f"{kind} failed at step {step}; {what}", flush=True)
                    if guard.failure:  # not to be lost behind this one
                        print("{} failed too: {}".format(*guard.failure), file=sys.stderr)
                    raise
                log(logger.record_eval, kind, step, scores, summarise(scores))
                logger.exclude(time.time() - began)
                ran = True
            return ran

        def first_batches() -> None:
            # Before step 1's collectives, so a read failing on one host stops all here.
            error = ahead.read_ahead()
            if error is not None:
                raise error

        try:
            with jax.set_mesh(self.mesh), partitioning.axis_rules():
                step_fn = ts.jit_train_step(
                    ts.make_train_step(self.model, self.tx, run.step, self.layout.shardings.params),
                    self.layout,
                    partitioning.data_sharding(self.mesh),
                )
                multihost.on_every_process(first_batches, UserError, "reading its first batches")
                # Step 0's evaluation, or one a preemption or failure skipped at a resume. A
                # log it could not write stops the run before training (a resume redoes it).
                failed = evaluate() and guard.should_stop(wait=True) and guard.failed
                while step < total and not failed:
                    state, metrics = step_fn(state, next(ahead))
                    step += 1
                    error = ahead.read_ahead()  # the next batches, while the step runs
                    if error is not None:
                        guard.fail("reading data", error)
                    flush = step % every == 0 or step == total or first is None
                    log(logger.record, step, metrics, flush)
                    if first is None:
                        first = float(jax.device_get(metrics["loss"]))
                    preempted = guard.should_stop()  # or a failure: raised below
                    if preempted or step == total or step % save_every == 0:
                        save(force_log=preempted)
                    if preempted:
                        break
                    # A stop asked for during an evaluation (infer_eval can take minutes),
                    # or its log failing, is answered now, not after one more step:
                    # preemption notices are short, and a resume redoes the evaluation.
                    if evaluate() and step < total and guard.should_stop(wait=True):
                        preempted = True
                        save(force_log=True)
                        break
                last = None if metrics is None else float(jax.device_get(metrics["loss"]))
                self._stop_if_any_failed(guard.failure, step, start)
            finished = True
        finally:  # also on errors: finish pending async saves, restore the signal handlers
            with contextlib.ExitStack() as closing:  # each, whatever the others raise
                closing.callback(guard.close)
                # Not to hide an error on its way out behind a log that cannot be closed.
                closing.callback(logger.close, quiet=not finished)
                closing.callback(self.checkpointer.close)
        return Result(
            step=step,
            checkpoint_dir=str(self.checkpointer.step_dir(step)),
            preempted=preempted,
            first_loss=first,
            last_loss=last,
            interrupted=preempted and guard.interrupted,
        )

    def _stop_if_any_failed(self, failure: tuple | None, step: int, start: int) -> None:
        """After the loop, on every process: when any failed (`failure`: this process's
        (what, error), see PreemptionGuard.fail), process 0 says what was saved and
        every process raises, its own error or UserError."""
        stopped = multihost.any_process_failed(failure is not None)
        if not stopped:
            return
        self.checkpointer.wait()  # "saved" once it is: a full disk may fail the save too
        if jax.process_index() == 0:
            what = f"{failure[0]} failed" if failure else f"process {stopped[0]} failed"
            kept = (
                f"saved {self.checkpointer.step_dir(step)}"
                if step > start
                else "nothing trained is lost"
            )
            with contextlib.suppress(OSError):  # e.g. stdout a closed pipe: raise below
                print(f"{what} at step {step}; {kept}", flush=True)
        error = failure[1] if failure else None
        multihost.stop_together(error, stopped, UserError, f"at step {step}")
