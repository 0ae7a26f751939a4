r"""Evaluate a model on the EcomInstruct held-out tasks (data contract 4-5), T5X style.

    python -m ecomgpt_jax.eval --gin_file=gin_configs/eval.gin \
        --gin.CHECKPOINT="'runs/ecom_default/checkpoints/200'"          # a trainer checkpoint
    python -m ecomgpt_jax.eval --gin_file=gin_configs/eval.gin \
        --gin_file=gin_configs/models/bloomz_7b1.gin \
        --gin.HF_DIR="'/data/EcomGPT'" --gin.EVAL_DIR="'/tmp/ecomgpt_eval'" --gin.DTYPE="'bfloat16'"

writes EVAL_DIR/predictions/<task>.jsonl, metrics.json (as `python -m ecomgpt_jax.score`
computes it), metrics.md and tensorboard/ (see `ecomgpt_jax.evaluation`). The contract's
settings (gin_configs/eval.gin): prompts cut from the left to 800 tokens, 164 new tokens,
4 beams, no sampling; beam scoring is current transformers', not the paper's 4.27.4 one
(see `ecomgpt_jax.decoding`).

Flags: --gin_file (repeatable), --gin.NAME=VALUE (a binding, repeatable; same as
--gin_bindings="NAME = VALUE"), --gin_search_paths (comma-separated folders for gin files;
the repository's gin_configs/ is always searched). Multi-host: --multihost, or
--coordinator_address / --num_processes / --process_id: every process decodes its share,
process 0 writes, and a failure on any process (set-up, a write) stops all of them
(`ecomgpt_jax.multihost`). The settings (CHECKPOINT,
HF_DIR, EVAL_DIR, MIXTURE_OR_TASK_NAME, EVAL_MAX_EXAMPLES, DTYPE, ...): the header of
gin_configs/eval.gin.

An evaluation replaces an earlier one in EVAL_DIR: other tasks' predictions/<task>.jsonl
(with one note on stderr) and the old metrics.json / metrics.md are removed first.
Bad input: one "error: ..." line, exit status 2, before the model loads where it can be
known then. Each task's predictions file is written when the task is decoded: a Ctrl-C
leaves the finished ones, says which in one line, exit status 130.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys

import gin
from absl import app

from ecomgpt_jax import (
    checkpointing,
    decoding,
    eval_outputs,
    evaluation,
    gin_parsing,
    hf_hub,
    launch,
    multihost,
    partitioning,
    values,
)
from ecomgpt_jax.models import config as model_config

FLAGS = launch.FLAGS
launch.define_flags()
rewrite_gin_args = launch.rewrite_gin_args  # the T5X --gin.NAME=VALUE form


@dataclasses.dataclass(frozen=True)
class EvalRun:
    """Where to write, on which mesh, with which vocabulary.

    eval_dir: output folder; None: <run>/eval/<step>/<mixture> for a training checkpoint.
    vocabulary: "sentencepiece" (path None: the bundled sample model) or "huggingface"
      (path None: HF_DIR, else a tokenizer.json at or above CHECKPOINT).
    """

    eval_dir: str | None = None
    mesh_shape: tuple[int, int, int] = (-1, 1, 1)
    vocabulary: str = "sentencepiece"
    vocabulary_path: str | None = None

    def __post_init__(self):
        for macro, value in (
            ("EVAL_DIR", self.eval_dir),
            ("VOCABULARY_PATH", self.vocabulary_path),
        ):
            if value is not None and not values.is_path(value):  # EVAL_DIR=5 wrote to ./5/
                raise evaluation.EvalError(f"{macro}={value!r}: must be a path or None")


def register_configurables() -> dict:
    """Gin names for the library's dataclasses (the library itself stays gin-free)."""
    classes = {
        "EvalConfig": (evaluation.EvalConfig, "evaluation"),
        "ModelSource": (evaluation.ModelSource, "evaluation"),
        "ModelConfig": (model_config.ModelConfig, "models"),
        "DecodeConfig": (decoding.DecodeConfig, "decoding"),
        "EvalRun": (EvalRun, "eval"),
    }
    return launch.register_configurables(classes)


# Configurables only ecomgpt_jax.train takes: a gin file binding one is a training recipe
# (gin_configs/ecom.gin, gin_configs/runs/*.gin). Alone, gin would say "No configurable
# matching 'TrainConfig' (did you mean EvalConfig?)", further down the wrong file.
TRAINING_CONFIGURABLES = (
    "TrainConfig",
    "ModelSpec",
    "DataConfig",
    "OptimizerConfig",
    "StepConfig",
    "CheckpointConfig",
)
_NOT_EVAL = (
    "is a training setting: eval takes --gin_file=gin_configs/eval.gin (plus "
    "gin_configs/models/*.gin files); ecom.gin and gin_configs/runs/*.gin are training "
    "recipes for python -m ecomgpt_jax.train"
)


def parse_gin(files, bindings, search_paths) -> None:
    gin_parsing.parse_gin(
        files,
        bindings,
        search_paths,
        evaluation.EvalError,
        "gin_configs/eval.gin",
        foreign=dict.fromkeys(TRAINING_CONFIGURABLES, _NOT_EVAL),
    )


def make_vocabulary(run: EvalRun, source: evaluation.ModelSource):
    from ecomgpt_jax import vocabularies

    kinds = vocabularies.SENTENCEPIECE_KINDS + vocabularies.HUGGINGFACE_KINDS
    if run.vocabulary.lower() not in kinds:  # a typo, not a missing VOCABULARY_PATH
        raise evaluation.EvalError(
            f"VOCABULARY={run.vocabulary!r}: unknown vocabulary kind; expected one of "
            f"{', '.join(kinds)}"
        )
    path = run.vocabulary_path
    if path is None and run.vocabulary.lower() not in vocabularies.SENTENCEPIECE_KINDS:
        path = source.hf_dir or (
            checkpointing.find_upwards(source.checkpoint, "tokenizer.json")
            if source.checkpoint
            else None
        )
        if path is None:
            raise evaluation.EvalError(
                f"VOCABULARY={run.vocabulary!r} needs VOCABULARY_PATH (a tokenizer.json or a "
                f"folder holding one): none found at or above {source.checkpoint}"
            )
    return vocabularies.make_vocabulary(run.vocabulary, path)


def check_vocabulary(run: EvalRun, source: evaluation.ModelSource, vocabulary) -> None:
    """evaluation.check_vocabulary against the model the weights hold (read without
    them), with a hint where HF_DIR has the tokenizer that eval.gin's default
    (the bundled SentencePiece model) is not."""
    from ecomgpt_jax import vocabularies

    try:
        evaluation.check_vocabulary(evaluation.check_weights(source), vocabulary)
    except evaluation.EvalError as e:
        spm = run.vocabulary.lower() in vocabularies.SENTENCEPIECE_KINDS
        if source.hf_dir and spm and (pathlib.Path(source.hf_dir) / "tokenizer.json").is_file():
            raise evaluation.EvalError(
                f"{e}: HF_DIR has its tokenizer.json; include the model's "
                "gin_configs/models/*.gin file, or add --gin.VOCABULARY=\"'huggingface'\""
            ) from None
        raise


def download_hf_dir(source: evaluation.ModelSource) -> evaluation.ModelSource:
    """`source` with HF_DIR a local folder: a hub path (hf://ORG/NAME) is downloaded, or
    found in the HF cache."""
    if not hf_hub.is_hub_path(source.hf_dir):
        return source
    try:
        return dataclasses.replace(source, hf_dir=hf_hub.local_dir(source.hf_dir))
    except hf_hub.HubError as e:
        raise evaluation.EvalError(f"HF_DIR {e}") from None


def default_eval_dir(source: evaluation.ModelSource, mixture: str):
    """<run>/eval/<step>/<mixture> (an epath.Path) for a checkpoint inside a training
    run directory, local or in a bucket."""
    if source.checkpoint:
        params_dir = checkpointing.resolve_params_path(source.checkpoint)
        step_dir = params_dir.parent
        if step_dir.name.isdigit() and step_dir.parent.name == checkpointing.CHECKPOINTS_SUBDIR:
            return step_dir.parent.parent / "eval" / step_dir.name / mixture.replace(",", "+")
    raise evaluation.EvalError(
        "set EVAL_DIR (the output folder); it has a default only for CHECKPOINT inside a "
        "training run directory"
    )


def run_eval(files, bindings=(), search_paths=(), progress: bool = True, ctrl_c=None):
    """Parses gin, loads the model, evaluates; returns (EvalResult, eval_dir). ctrl_c: a
    `launch.InterruptWatch`, asked before decoding."""
    import jax

    conf = register_configurables()

    def set_up():
        parse_gin(list(files), list(bindings), list(search_paths))
        with gin.unlock_config():
            eval_cfg = conf["EvalConfig"]()
            source = conf["ModelSource"]()
            run = conf["EvalRun"]()
        evaluation.check_source(source)
        source = download_hf_dir(source)
        mesh = partitioning.make_mesh(partitioning.MeshConfig(run.mesh_shape))
        eval_dir = run.eval_dir or default_eval_dir(source, eval_cfg.mixture_or_task_name)
        vocabulary = make_vocabulary(run, source)
        evaluation.check_tasks(eval_cfg)  # bad data root / names / split: before the model
        # On every process: weights missing on one host (a local disk) stop all now, not in
        # orbax's restore or in decoding, where the others would wait for it.
        check_vocabulary(run, source, vocabulary)
        # Last (it creates EVAL_DIR): the writer, a bad EVAL_DIR now, not after decoding.
        if jax.process_index() == 0:
            eval_outputs.check_eval_dir(eval_dir)
        return eval_cfg, source, mesh, eval_dir, vocabulary

    # A failure on any process stops all, before the model loads (its collectives).
    eval_cfg, source, mesh, eval_dir, vocabulary = multihost.on_every_process(
        set_up, evaluation.EvalError
    )
    cfg, params = evaluation.load_model(source, mesh)
    if jax.process_index() == 0:
        d = eval_cfg.decode
        # num_beams counts for beam search only (sampling draws one sequence per prompt).
        method = (
            f"beam, beams {d.num_beams}" if d.effective_method == "beam" else d.effective_method
        )
        print(
            f"model: {source.path} ({cfg.summary}); devices: {jax.device_count()} x "
            f"{jax.devices()[0].platform}, mesh {dict(mesh.shape)}; decoding: {method}, "
            f"{d.max_new_tokens} new tokens, prompts <= {d.max_prompt_len} tokens",
            flush=True,
        )
    if ctrl_c is not None:  # a Ctrl-C in set-up that Python dropped stops here
        ctrl_c.check()
    result = evaluation.evaluate(
        params,
        cfg,
        vocabulary,
        eval_cfg,
        mesh=mesh,
        eval_dir=eval_dir,
        progress=progress,
        describe=source.path,
    )
    return result, checkpointing.as_path(eval_dir)


def _user_errors() -> tuple[type[BaseException], ...]:
    from ecomgpt_jax import vocabularies  # imports seqio (TensorFlow): not in launch's list

    return (
        evaluation.EvalError,
        decoding.DecodeConfigError,
        vocabularies.VocabularyError,
        *launch.user_errors(),
    )


def main(argv: list[str]) -> None:
    del argv
    import jax

    launch.quiet_logs()
    try:
        with launch.exit_on_user_error(_user_errors), launch.InterruptWatch() as ctrl_c:
            launch.init_distributed()  # bad multi-host flags: one line too
            files, bindings, paths = FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths
            result, eval_dir = run_eval(files, bindings, paths, ctrl_c=ctrl_c)
    except KeyboardInterrupt as e:
        # Ctrl-C: what was written, not a trace (finished tasks' predictions are on disk).
        if jax.process_index() == 0:
            what = str(e) if isinstance(e, evaluation.EvalInterrupted) else ""
            print(what or "interrupted before decoding: nothing written", file=sys.stderr)
        sys.exit(launch.INTERRUPTED_EXIT_CODE)
    if jax.process_index() != 0:
        return
    from ecomgpt_jax.ecominstruct import scoring

    print(scoring.format_table(result.scores))
    if result.missing:
        print(f"tasks without data under the data root: {', '.join(result.missing)}")
    rate = result.examples / max(result.seconds, 1e-9)
    print(f"\n{result.examples} examples in {result.seconds:.1f} s ({rate:.2f} examples/s)")
    print(f"predictions: {eval_dir}/predictions/, scores: {eval_dir}/metrics.json, metrics.md")


if __name__ == "__main__":
    app.run(main, argv=rewrite_gin_args(sys.argv), flags_parser=launch.parse_flags)
