"""Evaluation as the data contract (sections 4-5) fixes it: decode the held-out test
prompts, score the predictions with the paper's metrics.

    cfg, host_params = load_model(ModelSource(checkpoint=PATH), mesh)   # or hf_dir=DIR
    result = evaluate(host_params, cfg, vocabulary, EvalConfig(), mesh=mesh, eval_dir=OUT)
    result.scores                # scoring.score_predictions(...) (task -> scores with "n")

For every task of the mixture (test split) the prompts are those of the SeqIO tasks
(`instructions.task_instructions` with the same CLS-candidate seed), tokenized with the
vocabulary, cut FROM THE LEFT to `max_prompt_len` tokens and decoded in large batches
(`decoding.Generator`; contract section 4: 4 beams, no sampling, 800 prompt tokens, 164 new
tokens). The prediction is the decoded continuation, verbatim, up to the first EOS. Beams
are scored as current transformers scores them, not as the paper's pinned 4.27.4 did (see
`decoding`), so predictions need not be the paper's token for token. `eval_dir` receives::

    predictions/<task folder>.jsonl   {"task", "index", "prediction", "inputs", "targets"},
                   each as soon as its task is decoded; other tasks' files there are
                   removed (other files stay)
    metrics.json   scoring.scores_json(scores): byte-identical to `python -m ecomgpt_jax.score`
                   on the same predictions
    metrics.md     the settings and a readable table (scores x100, n per task)
    tensorboard/   scalars <task>/<metric> and average/<metric> at `step`

Same parameters and settings give byte-identical predictions. For evaluation during
training (T5X "infer_eval") call `run_infer_eval` on a small slice (`max_examples`).

Library code: no gin, no TensorFlow at import (the vocabulary object is passed in; a
mixture name is resolved through the `tasks` package, which needs SeqIO).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import pathlib
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import jax

from ecomgpt_jax import checkpointing, decoding, multihost
from ecomgpt_jax.decoding import DecodeConfig
from ecomgpt_jax.ecominstruct import instructions, reader, scoring
from ecomgpt_jax.eval_outputs import (
    PREDICTIONS_DIR,
    EvalError,
    check_eval_dir,
    replace_previous,
    write_metrics,
    write_predictions,
    write_summaries,
)
from ecomgpt_jax.models import decoder, hf_io
from ecomgpt_jax.models.config import DTYPES, ConfigError, ModelConfig
from ecomgpt_jax.values import is_integer, is_path


class Vocabulary(Protocol):
    """What evaluation needs of a vocabulary (seqio vocabularies fit). An optional
    `prompt_prefix` (ids, e.g. Llama's BOS: vocabularies.HuggingFaceVocabulary) starts
    every prompt."""

    eos_id: int
    pad_id: int
    vocab_size: int

    def encode(self, s: str) -> Sequence[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how.

    mixture_or_task_name: a mixture of `tasks` (e.g. ecom_instruct_held_out), a SeqIO task
      name (ecom:EN:ABSA:CLS:...) or a task folder name; several joined by ",".
    data_dir: EcomInstruct root (None: $ECOMGPT_DATA_DIR, else the bundled sample).
    split: which split of each task to decode and score against ("test").
    max_examples: at most this many examples per task, the first in file order (None: all).
    batch_size: prompts per decoding batch (rounded up to a multiple of data x fsdp).
    prompt_seed: CLS candidate seed of the prompts (the SeqIO tasks' `seed`).
    decode: decoding.DecodeConfig (its defaults: the contract's section 4).
    """

    mixture_or_task_name: str = "ecom_instruct_held_out"
    data_dir: str | None = None
    split: str = "test"
    max_examples: int | None = None
    batch_size: int = 32
    prompt_seed: int = 0
    decode: DecodeConfig = DecodeConfig()

    def __post_init__(self):
        if not (isinstance(self.mixture_or_task_name, str) and self.mixture_or_task_name):
            raise EvalError(
                f"EvalConfig.mixture_or_task_name={self.mixture_or_task_name!r}: must be a "
                "mixture or task name"
            )
        if self.data_dir is not None and not is_path(self.data_dir):
            raise EvalError(f"EvalConfig.data_dir={self.data_dir!r}: must be a path or None")
        if self.max_examples is not None and not (
            is_integer(self.max_examples) and self.max_examples >= 1
        ):
            raise EvalError(
                f"EvalConfig.max_examples={self.max_examples!r}: use None or an integer >= 1"
            )
        if not is_integer(self.batch_size) or self.batch_size < 1:
            raise EvalError(f"EvalConfig.batch_size={self.batch_size!r}: must be an integer >= 1")
        if not is_integer(self.prompt_seed):
            raise EvalError(f"EvalConfig.prompt_seed={self.prompt_seed!r}: must be an integer")


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Which weights to evaluate: exactly one of `checkpoint` and `hf_dir`.

    checkpoint: orbax params (a training run, a step directory, or `convert hf-to-orbax`
      output); its model comes from the nearest model_config.json at or above it, else
      from `config` (eval.gin: the ModelConfig of the included models/*.gin file).
    hf_dir: a HF folder (config.json + *.safetensors); eval.py downloads a hub path
      (hf://ORG/NAME, `hf_hub`) and passes its local snapshot.
    dtype: parameter and compute dtype ("bfloat16", ...); None keeps the stored one.
    overrides: ModelConfig fields applied last (e.g. {"attention_impl": "cudnn"}).
    """

    checkpoint: str | None = None
    hf_dir: str | None = None
    config: ModelConfig | None = None
    dtype: str | None = None
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def path(self) -> str:
        return str(self.checkpoint or self.hf_dir)


# ----------------------------------------------------------------------------- model


def _with_overrides(cfg: ModelConfig, source: ModelSource) -> ModelConfig:
    if source.dtype:
        cfg = dataclasses.replace(cfg, param_dtype=source.dtype, dtype=source.dtype)
    try:
        return dataclasses.replace(cfg, **dict(source.overrides))
    except ConfigError as e:  # a bad value ("ModelConfig.attention_impl='x': ...")
        raise ConfigError(f"MODEL_OVERRIDES_EVAL: {e}") from None


def check_source(source: ModelSource) -> None:
    """EvalError unless exactly one of checkpoint and hf_dir is set, dtype is None or a
    known dtype and every override key is a ModelConfig field. The messages name the eval
    binary's macros (DTYPE, MODEL_OVERRIDES_EVAL): ModelConfig's own errors would name
    fields the user never set, and come only after the weights are read."""
    for macro, value in (("CHECKPOINT", source.checkpoint), ("HF_DIR", source.hf_dir)):
        if value is not None and not is_path(value):
            raise EvalError(f"{macro}={value!r}: must be a path or None")
    if bool(source.checkpoint) == bool(source.hf_dir):
        raise EvalError("set exactly one of CHECKPOINT (orbax) and HF_DIR (Hugging Face folder)")
    if source.dtype is not None and source.dtype not in DTYPES:
        raise EvalError(
            f"DTYPE={source.dtype!r}: must be one of {', '.join(map(repr, DTYPES))}, or None"
        )
    overrides = source.overrides
    if not isinstance(overrides, Mapping):
        raise EvalError(
            f"MODEL_OVERRIDES_EVAL={overrides!r}: must be a dict of ModelConfig fields, e.g. "
            "{'attention_impl': 'cudnn'}"
        )
    fields = [f.name for f in dataclasses.fields(ModelConfig)]
    for key in overrides:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"fields: {', '.join(fields)}"
            raise EvalError(f"MODEL_OVERRIDES_EVAL: {key!r} is not a ModelConfig field ({hint})")


def check_weights(source: ModelSource) -> ModelConfig:
    """The model `source` holds, read without its weights: CheckpointError /
    CheckpointFormatError unless the weights are there, ConfigError unless a HF folder's
    config.json takes the overrides, EvalError for a checkpoint without a model. Found now,
    not minutes into reading the weights; on every host of a multi-host evaluation
    (`eval.run_eval`)."""
    if source.hf_dir:
        return _with_overrides(hf_io.read_hf_config(source.hf_dir), source)
    checkpointing.resolve_params_path(source.checkpoint)
    cfg = checkpointing.find_model_config(source.checkpoint)
    if cfg is None and source.config is None:
        raise EvalError(
            f"{source.checkpoint}: no {checkpointing.MODEL_CONFIG_FILE} at or above it; "
            "pass ModelSource(config=...) with the model it holds"
        )
    return _with_overrides(source.config if cfg is None else cfg, source)


def check_vocabulary(cfg: ModelConfig, vocabulary: Vocabulary) -> None:
    """EvalError when the vocabulary has ids past the model's embedding table: the model
    would read NaN for them and decode garbage without an error."""
    if vocabulary.vocab_size > cfg.vocab_size:
        raise EvalError(
            f"the vocabulary has {vocabulary.vocab_size} ids but the model's vocab_size is "
            f"{cfg.vocab_size}: use the model's own tokenizer (VOCABULARY, VOCABULARY_PATH)"
        )


def load_model(source: ModelSource, mesh=None) -> tuple[ModelConfig, Any]:
    """Loads (cfg, params): HF folders as host numpy arrays, orbax checkpoints restored
    directly into the mesh's shardings (any mesh; single device without one)."""
    check_source(source)
    cfg = check_weights(source)
    if source.hf_dir:
        cfg, params = hf_io.load_hf_params(source.hf_dir, dtype=source.dtype)
        return _with_overrides(cfg, source), params
    from_source = checkpointing.find_model_config(source.checkpoint) is None
    shardings = decoding.param_shardings(cfg, mesh)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        decoder.abstract_params(cfg),
        shardings,
    )
    try:
        return cfg, checkpointing.restore_params(source.checkpoint, abstract)
    except checkpointing.ModelMismatch as e:  # a damaged checkpoint needs no model advice
        if not from_source:
            raise
        # eval.gin's ModelConfig is tiny_bloom's unless a models/*.gin file says otherwise.
        raise checkpointing.CheckpointError(
            f"{e}; it has no {checkpointing.MODEL_CONFIG_FILE}, so the model is "
            "ModelSource.config (eval.gin: the included gin_configs/models/*.gin file): "
            "include the one of the model it holds"
        ) from None


@functools.lru_cache(maxsize=8)
def get_generator(cfg: ModelConfig, dcfg: DecodeConfig, eos_id: int, pad_id: int, mesh):
    """A cached Generator, so repeated evaluations (training) reuse its compilations."""
    return decoding.Generator(cfg, dcfg, eos_id=eos_id, pad_id=pad_id, mesh=mesh)


# ----------------------------------------------------------------------------- tasks


def resolve_task_names(name: str, data_dir) -> tuple[list[str], list[str]]:
    """(task folders present under data_dir, expected folders missing there).

    `name`: a task folder, a SeqIO task name, a mixture of `tasks.mixtures`, any other
    registered SeqIO mixture, or several of these joined by ",".
    """
    root = reader.default_data_dir() if data_dir is None else pathlib.Path(data_dir)
    infos = reader.discover_tasks(root)
    found: list[str] = []
    missing: list[str] = []
    for part in (p.strip() for p in name.split(",") if p.strip()):
        names, lost = _resolve_one(part, infos, root)
        found += [n for n in names if n not in found]
        missing += [n for n in lost if n not in missing]
    if not found:
        raise reader.DataError(f"{name!r}: no task with data under this root", root)
    return found, missing


def _resolve_one(name: str, infos: Mapping[str, reader.TaskInfo], root):
    folder = reader.as_folder_name(name)
    if folder in infos:
        return [folder], []
    try:  # a well-formed task name is a task, never a mixture: say its data is missing
        reader.parse_task_name(folder)
    except reader.DataError:
        pass
    else:
        raise reader.DataError(f"task {name!r} has no data under this root", root)
    from tasks import mixtures  # SeqIO (and TensorFlow) only when a mixture is asked for

    for spec in mixtures.MIXTURES:
        if spec.name == name:
            present = sorted(n for n, info in infos.items() if spec.member(info))
            missing = [n for n in spec.expected or () if n not in present]
            return present, missing
    import seqio

    if name in seqio.MixtureRegistry.names():
        tasks = [t.name for t in seqio.get_mixture_or_task(name).tasks]
        folders = [reader.as_folder_name(t) for t in tasks]
        return [f for f in folders if f in infos], [f for f in folders if f not in infos]
    raise reader.DataError(
        f"{name!r} is neither a task folder nor a known mixture "
        f"({', '.join(s.name for s in mixtures.MIXTURES)})",
        root,
    )


@dataclasses.dataclass(frozen=True)
class TaskPrompts:
    """One task's examples to decode: instructions and their (untruncated) token ids."""

    name: str
    instructions: tuple[instructions.Instruction, ...]
    prompt_ids: tuple[tuple[int, ...], ...]
    n_total: int


def check_tasks(eval_cfg: EvalConfig) -> tuple[list[reader.TaskInfo], list]:
    """(the tasks to evaluate, the mixture's missing tasks); DataError for a data root,
    name, split or example line that cannot work ("file:line: field" for a bad line).

    Reads every example of the split (seconds at most): the eval binary calls it before
    loading a model that may take minutes, so bad data stops the run before that.
    """
    root = reader.default_data_dir() if eval_cfg.data_dir is None else eval_cfg.data_dir
    names, missing = resolve_task_names(eval_cfg.mixture_or_task_name, root)
    infos = reader.discover_tasks(root)
    for name in names:
        if not infos[name].has_split(eval_cfg.split):
            raise reader.DataError(
                f"task {name!r} has no {eval_cfg.split!r} split", infos[name].path
            )
        reader.read_examples(infos[name], eval_cfg.split)
    return [infos[name] for name in names], missing


def prepare_tasks(eval_cfg: EvalConfig, vocabulary: Vocabulary) -> tuple[list[TaskPrompts], list]:
    """Every task's prompts (first `max_examples`), and the mixture's missing tasks."""
    infos, missing = check_tasks(eval_cfg)
    out = []
    for info in infos:
        name = info.name
        rows = instructions.task_instructions(info, eval_cfg.split, seed=eval_cfg.prompt_seed)
        chosen = rows[: eval_cfg.max_examples] if eval_cfg.max_examples else rows
        ids = tuple(
            prompt_ids(vocabulary, r.prompt, eval_cfg.decode.max_prompt_len) for r in chosen
        )
        out.append(TaskPrompts(name, tuple(chosen), ids, len(rows)))
    return out, missing


def prompt_ids(vocabulary: Vocabulary, prompt: str, max_len: int) -> tuple[int, ...]:
    """The ids the model sees: the vocabulary's prompt prefix (Llama's BOS), then the
    prompt's last max_len - len(prefix) tokens (cut here, not by the decoder's own left
    cut, which would drop the prefix; as training's `keep_prompt_tail`)."""
    prefix = tuple(int(i) for i in getattr(vocabulary, "prompt_prefix", ()))
    ids = [int(i) for i in vocabulary.encode(prompt)]
    keep = max(max_len - len(prefix), 0)
    return prefix + tuple(ids[max(len(ids) - keep, 0) :])


def row_seed(task: str, index: int) -> int:
    """Sampling stream of one example: independent of batching and of max_examples."""
    return zlib.crc32(f"{task}:{index}".encode()) & 0x7FFFFFFF


# ----------------------------------------------------------------------------- evaluate


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """scores: scoring.score_predictions output; rows: prediction rows (file order);
    missing: mixture tasks without data; seconds / examples: decoding totals."""

    scores: dict
    rows: list
    missing: list
    seconds: float
    examples: int

    @property
    def metrics(self) -> dict:
        """The metrics.json content."""
        return scoring.scores_json(self.scores)


class _Progress:
    """tqdm bar per task (examples/s), or one console line when tqdm is absent."""

    def __init__(self, name: str, total: int, enabled: bool):
        self.name, self.total, self.done, self.start = name, total, 0, time.perf_counter()
        self.bar = None
        self.enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=name, unit="ex", file=sys.stderr, leave=True)
            except ImportError:
                pass

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled:
            rate = self.done / max(time.perf_counter() - self.start, 1e-9)
            print(f"{self.name}: {self.done}/{self.total} ({rate:.2f} ex/s)", file=sys.stderr)

    def close(self) -> float:
        if self.bar is not None:
            self.bar.close()
        return time.perf_counter() - self.start


def evaluate(
    params,
    cfg: ModelConfig,
    vocabulary: Vocabulary,
    eval_cfg: EvalConfig,
    *,
    mesh=None,
    eval_dir=None,
    step: int | None = None,
    progress: bool = True,
    describe: str = "",
    dir_name: str = "EVAL_DIR",
) -> EvalResult:
    """Decodes and scores every task of `eval_cfg`; writes `eval_dir` when given.

    params: host (numpy) or device arrays; placed onto `mesh` by the parameter rules.
    describe: a line naming the model, for metrics.md. dir_name: what errors call
    eval_dir (the setting that gave it).
    Predictions are written per task as it finishes: a Ctrl-C (EvalInterrupted) or a
    failure keeps the finished tasks' files. Process 0 writes; a write that fails there
    (EvalError naming the file) stops every process after that task (`_agreed_write`).
    """
    check_vocabulary(cfg, vocabulary)
    tasks, missing = prepare_tasks(eval_cfg, vocabulary)
    lead = jax.process_index() == 0
    writes = eval_dir is not None and lead

    def prepare():  # the predictions folder, cleared of an earlier evaluation's files
        pred_dir = check_eval_dir(eval_dir, dir_name)
        return pred_dir, replace_previous(pred_dir, [t.name for t in tasks])

    def agreed_write(write, what: str):
        return _agreed_write(eval_dir, write if writes else None, what, dir_name)

    prepared = agreed_write(prepare, f"{PREDICTIONS_DIR}/")
    pred_dir, earlier = prepared or (None, [])
    gen = get_generator(cfg, eval_cfg.decode, int(vocabulary.eos_id), int(vocabulary.pad_id), mesh)
    params = gen.shard_params(params)
    rows, seconds, examples, timing, finished, bar = [], 0.0, 0, {}, [], None
    try:
        for task in tasks:
            bar = _Progress(task.name, len(task.prompt_ids), progress and lead)
            seeds = [row_seed(task.name, r.index) for r in task.instructions]
            results = gen.generate(
                params, task.prompt_ids, eval_cfg.batch_size, row_ids=seeds, on_batch=bar.update
            )
            took = bar.close()
            seconds, examples = seconds + took, examples + len(results)
            timing[task.name] = len(results) / max(took, 1e-9)
            task_rows = [
                {
                    "task": task.name,
                    "index": inst.index,
                    "prediction": vocabulary.decode(list(res.tokens)),
                    "inputs": inst.prompt,
                    "targets": inst.answer,
                }
                for inst, res in zip(task.instructions, results, strict=True)
            ]
            write = functools.partial(write_predictions, pred_dir, task.name, task_rows)
            agreed_write(write, f"the predictions of {task.name}")
            finished.append(task.name)  # decoded (and written, where this process writes)
            rows += task_rows
        root = reader.default_data_dir() if eval_cfg.data_dir is None else eval_cfg.data_dir
        scores = scoring.score_predictions(
            root, [{k: r[k] for k in ("task", "index", "prediction")} for r in rows], eval_cfg.split
        )
        result = EvalResult(scores, rows, missing, seconds, examples)

        def write_scores():
            write_metrics(eval_dir, result, eval_cfg, describe, step)
            write_summaries(eval_dir, result, step, timing)

        agreed_write(write_scores, "metrics and tensorboard/")
    except KeyboardInterrupt:  # scoring included: metrics.json may then be missing or old
        if bar is not None:
            bar.close()  # its last refresh before the message, not after it
        older = [n for n in earlier if n not in finished]
        raise EvalInterrupted(pred_dir, finished, len(tasks), older) from None
    return result


def _agreed_write(eval_dir, write, what: str, dir_name: str):
    """`write()` on the process that writes eval_dir (None on the others; dir_name: what
    errors call eval_dir), then every
    process learns whether it failed: all stop with one line, instead of the others
    waiting for process 0 in the next task's decoding or, in training, its next step.
    An all-gather on several processes, on each of them whatever its eval_dir (one
    without, or with write None, takes part all the same); nothing on one process.
    Returns what `write` returns."""

    def attempt():
        try:
            return None if write is None else write()
        except OSError as e:  # a full disk, a permission, a folder made a file mid-run
            path = e.filename2 or e.filename  # a rename's: where it was going
            reason = f"{path}: {e.strerror}" if path and e.strerror else str(e)
            raise EvalError(f"{dir_name} {eval_dir}: cannot write {what} ({reason})") from None

    return multihost.on_every_process(attempt, EvalError, f"while writing {what} to {dir_name}")


def run_infer_eval(
    params,
    cfg: ModelConfig,
    mesh,
    vocabulary: Vocabulary,
    eval_cfg: EvalConfig,
    step: int,
    eval_dir=None,
) -> dict:
    """Evaluation during training: returns the metrics.json dict (task -> scores with "n",
    plus "average"); writes `eval_dir` (predictions, metrics, TensorBoard at `step`) when
    given. Use a small `eval_cfg.max_examples`; compilations are reused across calls."""
    result = evaluate(
        params,
        cfg,
        vocabulary,
        eval_cfg,
        mesh=mesh,
        eval_dir=eval_dir,
        step=step,
        progress=False,
        describe=f"training step {step}",
        dir_name="the infer_eval folder",
    )
    return result.metrics


# ----------------------------------------------------------------------------- outputs


class EvalInterrupted(KeyboardInterrupt):
    """Ctrl-C during decoding. pred_dir: None if this process writes nothing; written:
    the tasks finished (their files written to pred_dir, if any); older: tasks not
    reached whose file is an earlier one's."""

    def __init__(self, pred_dir, written: Sequence[str], total: int, older: Sequence[str]):
        super().__init__()
        self.pred_dir, self.written, self.total, self.older = pred_dir, written, total, older

    def __str__(self) -> str:
        if self.pred_dir is None:
            return f"interrupted after {len(self.written)} of {self.total} tasks; nothing written"
        if not self.written:
            text = f"interrupted before the first of {self.total} tasks finished: nothing written"
        else:
            text = (
                f"interrupted: predictions of {len(self.written)} of {self.total} tasks written "
                f"to {self.pred_dir}/ ({', '.join(self.written)}); not scored (python -m "
                "ecomgpt_jax.score scores that folder)"
            )
        if self.older:
            text += f"; the files of {', '.join(self.older)} there are an earlier evaluation's"
        return text
