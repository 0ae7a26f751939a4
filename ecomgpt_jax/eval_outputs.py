"""What an evaluation writes besides its predictions: metrics.json (the same bytes as
`python -m ecomgpt_jax.score`), metrics.md (the settings and a readable table) and
TensorBoard scalars. Process 0 writes them (`evaluation.evaluate`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ecomgpt_jax import checkpointing
from ecomgpt_jax.ecominstruct import reader, scoring

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
