r"""Instruction-tune a decoder on EcomInstruct (the EcomGPT recipe), T5X style.

    python -m ecomgpt_jax.train --gin_file=gin_configs/ecom.gin

trains the tiny default model on the bundled sample data on whatever devices
exist and prints where the checkpoint, logs and resolved config are. Real runs
add gin files and overrides:

    python -m ecomgpt_jax.train --gin_file=gin_configs/ecom.gin \
        --gin_file=gin_configs/models/bloomz_7b1.gin \
        --gin.INIT_FROM_HF="'/data/bloomz-7b1-mt'" --gin.MODEL_DIR="'gs://bucket/run'"

Flags: --gin_file (repeatable), --gin.NAME=VALUE (a gin binding, repeatable;
same as --gin_bindings="NAME = VALUE"), --gin_search_paths (comma-separated
folders searched for gin files and their includes; the repository's
gin_configs/ is always searched). Multi-host: on Cloud TPU pods and SLURM /
Open MPI clusters pass --multihost (auto-detection); elsewhere pass
--coordinator_address=host:port --num_processes=N --process_id=i.

A checkpoint already in MODEL_DIR is resumed (parameters, optimizer, step,
RNG and data position); one already at TRAIN_STEPS trains nothing and leaves config.gin
as it was, and a TRAIN_STEPS below its step is an error. SIGTERM finishes the current
step, saves and exits 0; so does a first Ctrl-C, exiting 130 (a second Ctrl-C stops at
once, without saving).
With several hosts, a signal to any of them stops all after the same step (one step
later than on one host: `preemption.PreemptionGuard`); a failure on any of them in
set-up or writing MODEL_DIR's files stops all of them (`ecomgpt_jax.multihost`).

The settings (macros such as MODEL_DIR, TRAIN_STEPS, BATCH_SIZE, DATA_DIR) and what each
means: the header of gin_configs/ecom.gin. Bad input: one "error: ..." line, exit status 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import shlex
import sys
import typing

import gin
from absl import app

# Not input_pipeline or vocabularies here: they load SeqIO and TensorFlow (seconds, in
# which a Ctrl-C would print a trace instead of main's one line); each function that
# needs them imports them.
from ecomgpt_jax import (
    checkpointing,
    data_config,
    decoding,
    evaluation,
    gin_parsing,
    hf_hub,
    launch,
    metrics_logger,
    model_dir,
    multihost,
    partitioning,
    run_config,
    trainer,
)
from ecomgpt_jax import train_step as ts
from ecomgpt_jax.ecominstruct import reader
from ecomgpt_jax.models import config as model_config

if typing.TYPE_CHECKING:
    import jax

    from ecomgpt_jax import input_pipeline

FLAGS = launch.FLAGS
launch.define_flags()
rewrite_gin_args = launch.rewrite_gin_args  # the T5X --gin.NAME=VALUE form


def register_configurables() -> dict:
    """Makes the library's config dataclasses gin-configurable (library stays gin-free)."""
    return launch.register_configurables(
        {
            "TrainConfig": (run_config.TrainConfig, "run_config"),
            "ModelSpec": (run_config.ModelSpec, "run_config"),
            "ModelConfig": (model_config.ModelConfig, "models"),
            "DataConfig": (data_config.DataConfig, "input_pipeline"),
            "OptimizerConfig": (ts.OptimizerConfig, "train_step"),
            "StepConfig": (ts.StepConfig, "train_step"),
            "CheckpointConfig": (checkpointing.CheckpointConfig, "checkpointing"),
            # infer_eval during training: the evaluation binary's configs.
            "EvalConfig": (evaluation.EvalConfig, "evaluation"),
            "DecodeConfig": (decoding.DecodeConfig, "decoding"),
        }
    )


# Configurables only ecomgpt_jax.eval takes: a gin file binding one is eval.gin (or a copy),
# where gin alone would say "No configurable matching 'ModelSource' (did you mean ModelSpec?)".
_NOT_TRAINING = (
    "is an evaluation setting: train takes a training recipe, --gin_file=gin_configs/ecom.gin "
    "or gin_configs/runs/*.gin; eval.gin is for python -m ecomgpt_jax.eval"
)


def parse_gin(files, bindings, search_paths) -> None:
    gin_parsing.parse_gin(
        files,
        bindings,
        search_paths,
        run_config.UserError,
        "gin_configs/ecom.gin",
        finalize=True,
        foreign=dict.fromkeys(("ModelSource", "EvalRun"), _NOT_TRAINING),
    )


def make_vocabulary(spec: run_config.ModelSpec, train: run_config.TrainConfig):
    from ecomgpt_jax import vocabularies

    kind = str(spec.vocabulary).lower()
    path = spec.vocabulary_path
    if kind not in vocabularies.SENTENCEPIECE_KINDS + vocabularies.HUGGINGFACE_KINDS:
        raise vocabularies.VocabularyError(
            f"VOCABULARY: unknown vocabulary kind {spec.vocabulary!r}; expected one of "
            f"{', '.join(vocabularies.SENTENCEPIECE_KINDS + vocabularies.HUGGINGFACE_KINDS)}"
        )
    if kind in vocabularies.SENTENCEPIECE_KINDS:
        return vocabularies.make_vocabulary(kind, path)
    path = path if path is not None else hf_tokenizer_dir(train)
    if path is None:
        raise vocabularies.VocabularyError(
            f"VOCABULARY = {spec.vocabulary!r} needs VOCABULARY_PATH (a tokenizer.json or "
            "its folder) or INIT_FROM_HF (whose tokenizer.json is used)"
        )
    vocabulary = vocabularies.make_vocabulary(kind, path)
    vocabulary.eos_id  # noqa: B018  (loads the tokenizer: a bad file fails now, as one line)
    return vocabulary


def download_init_weights(run_cfg: run_config.RunConfig) -> run_config.RunConfig:
    """`run_cfg` with INIT_FROM_HF a local folder: a hub path (hf://ORG/NAME) is downloaded
    (or found in the HF cache), unless this is a resume, which reads the architecture and
    tokenizer from MODEL_DIR and the weights from its checkpoint."""
    train = run_cfg.train
    if not hf_hub.is_hub_path(train.init_from_hf):
        return run_cfg
    if run_config.architecture_source(train) == run_config.RESUMED_CONFIG:
        return run_cfg
    try:
        local = hf_hub.local_dir(train.init_from_hf)
    except hf_hub.HubError as e:
        raise run_config.UserError(f"INIT_FROM_HF {e}") from None
    return dataclasses.replace(run_cfg, train=dataclasses.replace(train, init_from_hf=local))


def hf_tokenizer_dir(train: run_config.TrainConfig) -> str | None:
    """The HF tokenizer's folder without VOCABULARY_PATH: on a resume MODEL_DIR, where
    the run copied it (INIT_FROM_HF's folder may be gone by then), else INIT_FROM_HF."""
    return model_dir.tokenizer_dir(train.model_dir) or train.init_from_hf


def register_tasks(run: run_config.RunConfig, data: data_config.DataConfig, vocabulary):
    """Registers the EcomInstruct tasks for this run's data root, prepared TFDS folder and
    vocabulary; a run with every default keeps a default registration that worked, on
    today's default root. (In one process, a notebook, a default run after one on another
    DATA_DIR must not train on that run's tasks.)"""
    import tasks
    from ecomgpt_jax import vocabularies
    from tasks import tfds_builder

    default_vocab = run.model.vocabulary.lower() in vocabularies.SENTENCEPIECE_KINDS and (
        run.model.vocabulary_path is None
    )
    train = run.train
    current = tasks.registration()
    if train.tfds_data_dir is not None:
        # Else every task would read its JSON files without a word (a typo, or the folder
        # one level off, at 1.5 M examples costs the preparation it was meant to save).
        folder = checkpointing.as_path(train.tfds_data_dir)
        problem = (
            "does not exist"
            if not folder.exists()
            else f"holds no prepared tasks (no {tfds_builder.BUILDER_NAME}/ folder)"
            if not (folder / tfds_builder.BUILDER_NAME).is_dir()
            else None
        )
        if problem:
            root = train.data_dir or reader.default_data_dir()
            raise run_config.UserError(
                f"TFDS_DATA_DIR {train.tfds_data_dir} {problem}: prepare the tasks there "
                f"(python -m tasks.tfds_builder --data_dir {root} --tfds_data_dir "
                f"{train.tfds_data_dir}), or set TFDS_DATA_DIR = None"
            )
    if train.data_dir is not None or train.tfds_data_dir is not None or not default_vocab:
        tasks.register_ecom_tasks(train.data_dir, vocabulary, tfds_data_dir=train.tfds_data_dir)
    elif (
        current is None
        or not current.default
        or current.error is not None  # the data may be there now
        or current.data_dir != reader.default_data_dir()  # ECOMGPT_DATA_DIR changed since
    ):
        tasks.register_ecom_tasks()
    check_mixture(data.mixture_or_task_name)


def data_line(name: str) -> str:
    """The console line saying what a run trains on: the mixture (or task), its number of
    tasks and the data root; a run on the bundled sample says so (a DATA_DIR forgotten
    would otherwise train a real model on synthetic data without a word)."""
    import seqio

    import tasks

    provider = seqio.get_mixture_or_task(name)
    members = getattr(provider, "tasks", [provider])  # a task is its own one
    count = len(members)
    prepared = sum(isinstance(t.source, seqio.TfdsDataSource) for t in members)
    root = pathlib.Path(tasks.registration().data_dir)
    line = f"data: {name} ({count} task{'s' if count != 1 else ''}) from {root}"
    if prepared:  # the others read their JSON files (none prepared, or a stale copy)
        line += f", {prepared} of them from prepared TFDS copies"
    if root.resolve() == reader.SAMPLE_DIR:
        line += " (the bundled synthetic sample; set DATA_DIR or ECOMGPT_DATA_DIR for real data)"
    return line


def check_mixture(name: str, macro: str | None = None) -> None:
    """UserError (prefixed `macro`) for a name `tasks` cannot give: an unknown name (the
    message lists the known mixtures) or a mixture without data (it names the root)."""
    import tasks

    try:
        tasks.get(name)
    except ValueError as e:  # DataError included
        raise run_config.UserError(f"{macro}: {e}" if macro else str(e)) from None


def check_infer_eval(eval_cfg: evaluation.EvalConfig) -> None:
    """UserError (prefixed INFER_EVAL_MIXTURE) for tasks the in-training evaluation cannot
    read: found before step 1, not after INFER_EVAL_EVERY_STEPS steps of training."""
    try:
        evaluation.check_tasks(eval_cfg)
    except reader.DataError as e:
        raise run_config.UserError(f"INFER_EVAL_MIXTURE: {e}") from None


def make_eval_batches(data: data_config.DataConfig, mesh, max_batches: int):
    """The held-out loss's batches; a data error is prefixed with EVAL_LOSS_MIXTURE."""
    from ecomgpt_jax import input_pipeline

    check_mixture(data.mixture_or_task_name, "EVAL_LOSS_MIXTURE")
    try:
        return input_pipeline.EvalBatches(data, mesh, max_batches)
    except reader.DataError as e:
        raise run_config.UserError(f"EVAL_LOSS_MIXTURE: {e}") from None


def config_text(notes=()) -> str:
    """MODEL_DIR/config.gin: this run's command and `notes` as header comments, then the
    resolved gin config."""
    header = f"# Resolved config of: {command_line()}"
    header += "".join(f"\n# {note}" for note in notes)
    return header + "\n\n" + gin.operative_config_str()


def command_line() -> str:
    """This run's command, from the parsed flags (absl hands `main` only what is left):
    the gin files, bindings and search paths, in their order."""
    args = [f"--gin_file={f}" for f in FLAGS.gin_file]
    args += [f"--gin_bindings={b}" for b in FLAGS.gin_bindings]
    if FLAGS.gin_search_paths:
        args.append("--gin_search_paths=" + ",".join(FLAGS.gin_search_paths))
    return "python -m ecomgpt_jax.train " + shlex.join(args)


def load_configs(files, bindings, search_paths=()):
    """Parses gin and builds (RunConfig, DataConfig, the held-out loss's DataConfig or
    None); UserError names a missing binding.

    The held-out loss reads `eval_loss/DataConfig`: the training DataConfig's bindings
    with those of the `eval_loss` gin scope on top (mixture, split).
    """
    configurables = register_configurables()
    parse_gin(files, bindings, search_paths)
    try:
        run_cfg = run_config.RunConfig(
            train=configurables["TrainConfig"](),
            model=configurables["ModelSpec"](),
            optimizer=configurables["OptimizerConfig"](),
            step=configurables["StepConfig"](),
            checkpoint=configurables["CheckpointConfig"](),
        )
        if run_cfg.train.infer_eval_every_steps > 0:
            run_cfg = dataclasses.replace(run_cfg, infer_eval=configurables["EvalConfig"]())
        data = configurables["DataConfig"]()
        eval_data = None
        if run_cfg.train.eval_loss_every_steps > 0:
            try:
                with gin.config_scope("eval_loss"):
                    eval_data = configurables["DataConfig"]()
            except reader.DataError as e:
                raise run_config.UserError(f"eval_loss/DataConfig: {e}") from None
        return run_cfg, data, eval_data
    except (run_config.UserError, reader.DataError):  # the configs' own checks: one line already
        raise
    except ValueError as e:  # e.g. a %gin.REQUIRED macro left unset
        raise run_config.UserError(f"gin config: {str(e).strip().splitlines()[0]}") from None
    except TypeError as e:
        if "required" not in str(e):
            raise
        # A config with nothing bound: the files lack the recipe (e.g. a models/*.gin file
        # given alone), which binds every config to its macros.
        raise run_config.UserError(
            f"gin config: {str(e).strip().splitlines()[0]}; give the recipe first "
            "(--gin_file=gin_configs/ecom.gin or a gin_configs/runs/ file), model files after it"
        ) from None


class SetUp(typing.NamedTuple):
    """What `set_up` read and checked, before the job's first collective."""

    run_cfg: run_config.RunConfig
    data: data_config.DataConfig
    mesh: jax.sharding.Mesh
    vocabulary: object  # a seqio.Vocabulary
    cfg: model_config.ModelConfig
    note: str | None  # unused gin bindings, for config.gin
    eval_batches: input_pipeline.EvalBatches | None  # the held-out loss batches


def set_up() -> SetUp:
    """The flags' gin config, read and checked on this process: every setting, the data,
    the vocabulary, the model's shapes against the mesh. Raises run_config.UserError."""
    import jax

    run_cfg, data, eval_data = load_configs(
        FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths
    )
    model_dir.check(run_cfg.train.model_dir)
    run_cfg = download_init_weights(run_cfg)
    mesh = partitioning.make_mesh(partitioning.MeshConfig(tuple(run_cfg.train.mesh_shape)))
    vocabulary = make_vocabulary(run_cfg.model, run_cfg.train)
    register_tasks(run_cfg, data, vocabulary)
    if run_cfg.infer_eval is not None:
        check_infer_eval(run_cfg.infer_eval)
    cfg = run_config.build_model_config(run_cfg)
    note = run_config.unused_bindings_note(run_cfg, cfg)  # config.gin would say otherwise
    if note and jax.process_index() == 0:
        print(note, flush=True)
    warmup, steps = run_cfg.optimizer.warmup_steps, run_cfg.train.train_steps
    if warmup >= steps and jax.process_index() == 0:
        print(
            f"warning: WARMUP_STEPS {warmup} >= TRAIN_STEPS {steps}: the learning rate "
            "never reaches LEARNING_RATE",
            file=sys.stderr,
            flush=True,
        )
    shapes = run_config.Shapes(data.global_batch_size, data.sequence_length, vocabulary.vocab_size)
    run_config.check_shapes(cfg, shapes, run_cfg.step, mesh)
    missing = metrics_logger.missing_writer_package(run_cfg.train.model_dir)
    if missing:
        raise run_config.UserError(
            f"MODEL_DIR {run_cfg.train.model_dir} needs the package {missing} for its "
            f"TensorBoard logs: pip install -r requirements.txt"
        )
    eval_batches = None
    if eval_data is not None:  # read (and any data error found) before step 1
        eval_shapes = dataclasses.replace(
            shapes,
            global_batch_size=eval_data.global_batch_size,
            sequence_length=eval_data.sequence_length,
        )
        try:  # the eval_loss scope may set its own batch size or lengths
            run_config.check_shapes(cfg, eval_shapes, run_cfg.step, mesh)
        except run_config.UserError as e:
            raise run_config.UserError(f"eval_loss/DataConfig: {e}") from None
        eval_batches = make_eval_batches(eval_data, mesh, run_cfg.train.eval_loss_batches)
    return SetUp(run_cfg, data, mesh, vocabulary, cfg, note, eval_batches)


def run(ctrl_c: launch.InterruptWatch | None = None) -> tuple[trainer.Result, run_config.RunConfig]:
    launch.init_distributed()
    import jax
    import tensorflow as tf

    from ecomgpt_jax import input_pipeline

    # The input pipeline runs on the host CPU: a CUDA build of TensorFlow would otherwise
    # take GPU memory that JAX needs at its first op (T5X does the same).
    with contextlib.suppress(RuntimeError):  # TensorFlow already ran here (a notebook)
        tf.config.set_visible_devices([], "GPU")

    # A failure on any process (data missing on one host) stops all, before the restore's
    # collectives, where the others would wait for it.
    run_cfg, data, mesh, vocabulary, cfg, note, eval_batches = multihost.on_every_process(
        set_up, run_config.UserError
    )
    multihost.on_every_process(
        lambda: model_dir.make(run_cfg.train.model_dir), run_config.UserError, "making MODEL_DIR"
    )
    job = trainer.Trainer(run_cfg, cfg, mesh)
    state, position = job.initial_state()
    data, expected = data_position(data, position)
    if position is None:
        position = expected
    elif (changes := expected.changes_from(position)) and jax.process_index() == 0:
        print(
            f"warning: resuming with another input pipeline ({', '.join(changes)}): the new "
            f"one reads in another order; skipping its first {position.batches_consumed} batches",
            file=sys.stderr,
        )
    position = dataclasses.replace(expected, batches_consumed=position.batches_consumed)
    start, total = int(jax.device_get(state.step)), run_cfg.train.train_steps
    if start > total:
        raise run_config.UserError(
            f"MODEL_DIR {run_cfg.train.model_dir} holds step {start}, past TRAIN_STEPS = "
            f"{total}: nothing to train (raise TRAIN_STEPS, or give another MODEL_DIR)"
        )
    if start < total:
        notes = [note] if note else []

        def write():
            try:
                model_dir.write_run_files(
                    run_cfg.train.model_dir, cfg, config_text(notes), vocabulary, start
                )
            except OSError as e:
                raise run_config.UserError(
                    f"MODEL_DIR {run_cfg.train.model_dir}: cannot write config.gin, "
                    f"model_config.json or the tokenizer files ({e})"
                ) from None

        # Process 0 writes; the others would go on to the first step's collectives.
        multihost.on_every_process(write, run_config.UserError, "while writing MODEL_DIR's files")
    elif jax.process_index() == 0:
        # config.gin records what trained these steps; this command trains none of them
        # (it only redoes an evaluation a stop left unfinished at the last step, if any).
        print(
            f"MODEL_DIR is at its last step ({total}) already: nothing to train, "
            "config.gin left as it was",
            flush=True,
        )
    if jax.process_index() == 0:
        print(
            f"devices: {jax.device_count()} x {jax.devices()[0].platform}, mesh "
            f"{dict(mesh.shape)}, processes: {jax.process_count()}, starting at step "
            f"{start}/{total}",
            flush=True,
        )
        train = run_cfg.train
        start_from = (
            f"MODEL_DIR's step {start}"
            if start
            else train.init_from_hf or train.init_from_checkpoint or "random initial weights"
        )
        # Which model trains: a models/*.gin file given before the recipe is replaced by
        # the recipe's own include, and this line is where that shows.
        print(f"model: {cfg.summary}, from {start_from}", flush=True)
        print(data_line(data.mixture_or_task_name), flush=True)
    batches = input_pipeline.InputIterator(data, mesh, start=position.batches_consumed)
    if ctrl_c is not None:  # a Ctrl-C in set-up that Python dropped stops here
        ctrl_c.check()
    infer_eval = None
    if run_cfg.infer_eval is not None:

        def infer_eval(params, step: int):
            eval_dir = f"{run_cfg.train.model_dir}/infer_eval/{step}"
            return evaluation.run_infer_eval(
                params, cfg, mesh, vocabulary, run_cfg.infer_eval, step, eval_dir
            )

    return job.fit(state, batches, position, infer_eval, eval_batches), run_cfg


def _user_errors() -> tuple[type[BaseException], ...]:
    # EvalError: an infer_eval that cannot write its folder (on any process, see
    # `evaluation.evaluate`) stops training with one line, after saving the steps trained;
    # LogWriteError: process 0's logs, likewise.
    # A VocabularyError needs vocabularies loaded; until then (a gin error) the check
    # does not load TensorFlow just to ask.
    vocabularies = sys.modules.get("ecomgpt_jax.vocabularies")
    return (
        run_config.UserError,
        *((vocabularies.VocabularyError,) if vocabularies else ()),
        evaluation.EvalError,
        metrics_logger.LogWriteError,
        *launch.user_errors(),
    )


def data_position(
    data: data_config.DataConfig, stored: checkpointing.DataPosition | None
) -> tuple[data_config.DataConfig, checkpointing.DataPosition]:
    """The data config to read with and its position at batch 0, given the checkpoint's
    position (`stored`, None on a fresh start).

    The logical shards fix which examples fill which rows, so a resume keeps the stored
    shard count where DataConfig leaves it open (the default, one per process, would
    change the order with the number of hosts).
    """
    import jax

    from ecomgpt_jax import input_pipeline

    if (
        stored is not None
        and data.num_shards is None
        and data.global_batch_size % stored.num_shards == 0
    ):
        # (A batch size the stored count does not divide is a changed pipeline anyway:
        # the caller warns that the skipped batches mean another order.)
        data = dataclasses.replace(data, num_shards=stored.num_shards)
    lengths = data.task_feature_lengths
    position = checkpointing.DataPosition(
        0,
        data.mixture_or_task_name,
        data.seed,
        data.global_batch_size,
        int(data.num_shards or jax.process_count()),
        (int(lengths["inputs"]), int(lengths["targets"])),
        data.split,
        data.pack,
        input_pipeline.sources_digest(data),
    )
    return data, position


def main(argv: list[str]) -> None:
    import jax

    launch.quiet_logs()
    try:
        with launch.exit_on_user_error(_user_errors), launch.InterruptWatch() as ctrl_c:
            result, run_cfg = run(ctrl_c)
    except KeyboardInterrupt:
        # A Ctrl-C before the loop's own handler (set-up, compilation), or a second one
        # in the loop (stop at once): one line, not a trace from wherever it landed. On
        # every process (asking jax which one this is could wait for the others).
        print(
            "interrupted: stopped without saving; the checkpoints saved before are kept",
            file=sys.stderr,
        )
        sys.exit(launch.INTERRUPTED_EXIT_CODE)
    if jax.process_index() == 0:
        print_summary(result, run_cfg.train.model_dir)
    if result.interrupted:
        sys.exit(launch.INTERRUPTED_EXIT_CODE)


def print_summary(result: trainer.Result, run_dir: str) -> None:
    """Where the run stopped and what it left behind."""
    saved = result.checkpoint_dir  # None: stopped at step 0 (in its evaluation)
    if result.interrupted:
        kept = f"saved {saved}" if saved else "nothing trained or saved"
        print(f"\ninterrupted at step {result.step}: {kept}; run the same command to resume")
    else:
        what = "preempted at" if result.preempted else "finished"
        losses = f"first loss {result.first_loss}, last {result.last_loss}"
        if result.first_loss is None:
            losses = "no step trained"
        print(f"\n{what} step {result.step}; {losses}")
    if saved:
        print(f"checkpoint: {saved}")
    print(f"logs:       {run_dir}/metrics.jsonl, TensorBoard: {run_dir}/tensorboard")
    print(f"config:     {run_dir}/config.gin")
    if saved:
        print(
            "evaluate:   python -m ecomgpt_jax.eval --gin_file=gin_configs/eval.gin "
            f"--gin.CHECKPOINT=\"'{saved}'\""
        )


if __name__ == "__main__":
    app.run(main, argv=rewrite_gin_args(sys.argv), flags_parser=launch.parse_flags)
