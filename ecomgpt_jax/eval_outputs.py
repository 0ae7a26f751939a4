"""An evaluation's folder: its checks (`check_eval_dir`), the earlier evaluation's files it
replaces, the predictions (one file per task), metrics.json (the same bytes as
`python -m ecomgpt_jax.score`), metrics.md (the settings and a readable table) and
TensorBoard scalars. Process 0 writes them (`evaluation.evaluate`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ecomgpt_jax import checkpointing
from ecomgpt_jax.ecominstruct import predictions, reader, scoring

PREDICTIONS_DIR = "predictions"


class EvalError(ValueError):
    """A bad evaluation setting (what to load, where to write, which tasks)."""


if TYPE_CHECKING:
    from ecomgpt_jax.evaluation import EvalConfig, EvalResult


def metrics_text(metrics: Mapping) -> str:
    """The metrics.json text (same bytes as `python -m ecomgpt_jax.score`)."""
    return json.dumps(metrics, ensure_ascii=False, indent=2) + "\n"


def write_metrics(eval_dir, result: EvalResult, eval_cfg: EvalConfig, describe="", step=None):
    """metrics.json and metrics.md under eval_dir (predictions are written per task)."""
    out = checkpointing.as_path(eval_dir)
    (out / "metrics.json").write_text(metrics_text(result.metrics), encoding="utf-8")
    (out / "metrics.md").write_text(
        metrics_markdown(result, eval_cfg, describe, step), encoding="utf-8"
    )


def metrics_markdown(result: EvalResult, eval_cfg: EvalConfig, describe="", step=None) -> str:
    d = eval_cfg.decode
    if d.effective_method == "beam":
        how = (
            f"beam search, {d.num_beams} beams, finished beams scored as log-prob sum / "
            f"(generated tokens incl. EOS) ** length_penalty {d.length_penalty}, "
            f"early_stopping {d.early_stopping}"
        )
    elif d.effective_method == "greedy":
        how = "greedy"
    else:
        how = (
            f"sampling, temperature {d.temperature}, top_k {d.top_k}, top_p {d.top_p}, "
            f"seed {d.seed}"
        )
    root = reader.default_data_dir() if eval_cfg.data_dir is None else eval_cfg.data_dir
    lines = ["# EcomInstruct evaluation", ""]
    if describe:
        lines.append(f"- model: {describe}")
    if step is not None:
        lines.append(f"- step: {step}")
    lines += [
        f"- tasks: {eval_cfg.mixture_or_task_name} ({eval_cfg.split} split) under {root}",
        f"- examples per task: {eval_cfg.max_examples or 'all'}; CLS prompt seed "
        f"{eval_cfg.prompt_seed}",
        f"- decoding: {how}; prompts cut from the left to {d.max_prompt_len} tokens; at "
        f"most {d.max_new_tokens} new tokens; prediction = continuation up to the first EOS",
    ]
    if result.missing:
        lines.append(f"- tasks of the mixture without data here: {', '.join(result.missing)}")
    lines += [
        "",
        "Scores x100. rouge-l-f1, micro-f1, macro-f1: the paper's metrics (data contract 5);",
        "rouge-l-f1-cjk: ROUGE-L over CJK characters and words. n: examples scored.",
        "",
        "```text",
        scoring.format_table(result.scores),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_summaries(eval_dir, result: EvalResult, step: int | None, timing: Mapping) -> None:
    """TensorBoard scalars <task>/<metric>, average/<metric>, <task>/examples_per_second."""
    from tensorboardX import SummaryWriter  # here: decoding alone runs without it

    writer = SummaryWriter(str(checkpointing.as_path(eval_dir) / "tensorboard"))
    s = 0 if step is None else int(step)
    for name, values in result.metrics.items():
        for key in scoring.SCORE_KEYS:
            if values.get(key) is not None:
                writer.add_scalar(f"{name}/{key}", float(values[key]), s)
    for name, rate in timing.items():
        writer.add_scalar(f"{name}/examples_per_second", float(rate), s)
    writer.close()


def check_eval_dir(eval_dir, dir_name: str = "EVAL_DIR"):
    """Creates eval_dir/predictions/ and returns it (an epath.Path); EvalError, naming
    `dir_name`, if that cannot be done or written to, or if eval_dir is a training run's
    folder (an evaluation replaces the TensorBoard events in its folder). Called before a
    model loads and decodes for minutes (the eval binary) and before the first task
    (`evaluate`)."""
    folder = checkpointing.as_path(eval_dir)
    run_files = [
        n for n in (checkpointing.CHECKPOINTS_SUBDIR, "metrics.jsonl") if (folder / n).exists()
    ]
    if run_files:  # its tensorboard/ holds the training curves, which this would replace
        raise EvalError(
            f"{dir_name} {eval_dir} is a training run's folder (it has "
            f"{' and '.join(run_files)}): give the evaluation a folder of its own (left "
            "unset, EVAL_DIR is <run>/eval/<step>/<mixture>)"
        )
    pred_dir = folder / PREDICTIONS_DIR
    try:
        checkpointing.make_writable_folder(pred_dir)
    except OSError as e:
        problem = checkpointing.not_a_folder(eval_dir)
        if problem:
            raise EvalError(f"{dir_name} {eval_dir} {problem}: give a folder") from None
        why = e.strerror or str(e)
        raise EvalError(f"{dir_name} {eval_dir}: cannot write {pred_dir} ({why})") from None
    return pred_dir


def replace_previous(pred_dir, names: Sequence[str]) -> list[str]:
    """Removes the prediction files (<task folder name>.jsonl) in pred_dir of tasks not
    in `names`, and says so on stderr; returns the tasks in `names` that have an earlier
    file (each is overwritten when its task finishes: a rerun, said nothing about). An
    evaluation owns its predictions folder: files of an earlier one next to the new
    metrics.json would look like part of it. Other files (a user's notes.jsonl) stay. The
    earlier metrics.json / metrics.md and TensorBoard events go too: beside predictions
    that a stop leaves half new, they would score what is no longer there (and TensorBoard
    would show two values at the step).

    Raises OSError where a task's file cannot be written (a folder in its place): now,
    not after the tasks before it were decoded.
    """
    for name in names:
        if (pred_dir / f"{name}.jsonl").is_dir():
            raise IsADirectoryError(21, "Is a directory", str(pred_dir / f"{name}.jsonl"))
    old = predictions.task_files(pred_dir)
    mine = {f"{n}.jsonl" for n in names}
    gone = [p for p in old if p.name not in mine]
    kept = [p.name.removesuffix(".jsonl") for p in old if p.name in mine]
    if gone:
        shown = ", ".join(p.name for p in gone[:5]) + (", ..." if len(gone) > 5 else "")
        files = "file" if len(gone) == 1 else "files"
        print(
            f"replacing the previous evaluation's predictions in {pred_dir}/: removed "
            f"{len(gone)} {files} of tasks not in this one ({shown})",
            file=sys.stderr,
            flush=True,
        )
    for path in gone:
        path.unlink()
    for name in ("metrics.json", "metrics.md"):
        (pred_dir.parent / name).unlink(missing_ok=True)
    for events in (pred_dir.parent / "tensorboard").glob("events.out.tfevents.*"):
        events.unlink()
    return kept


def write_predictions(pred_dir, name: str, rows: Sequence[Mapping]) -> None:
    """pred_dir/<name>.jsonl, written atomically: a Ctrl-C while writing leaves the earlier
    file or the whole new one, never part of one."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    checkpointing.write_atomically(pred_dir / f"{name}.jsonl", text.encode("utf-8"))
