"""Tests for ecomgpt_jax/eval_outputs.py: the evaluation folder's checks, what an
evaluation replaces, metrics.md (metrics.json's bytes against the score CLI, and the
files an evaluation writes: test_evaluation.py, test_eval.py)."""

import pytest

from ecomgpt_jax import eval_outputs, evaluation
from ecomgpt_jax.decoding import DecodeConfig
from ecomgpt_jax.ecominstruct import make_sample
from ecomgpt_jax.evaluation import EvalConfig

SAMPLE = make_sample.SAMPLE_DIR
EVAL = EvalConfig(
    data_dir=str(SAMPLE),
    max_examples=4,
    decode=DecodeConfig(num_beams=2, max_new_tokens=6, max_prompt_len=64),
)


def test_metrics_markdown_states_the_decoding_and_nan_averages():
    ner = {"rouge-l-f1": 0.5, "micro-f1": 0.0, "macro-f1": float("nan"), "rouge-l-f1-cjk": 0.25}
    cls = {"rouge-l-f1": 1.0, "micro-f1": 1.0, "macro-f1": 0.5, "rouge-l-f1-cjk": 1.0}
    scores = {"EN-A-CLS-a": {**cls, "n": 2}, "EN-A-NER-b": {**ner, "n": 3}}
    result = evaluation.EvalResult(scores, [], ["ZH-X-CLS-x"], 1.0, 5)
    lines = eval_outputs.metrics_markdown(result, EVAL, "m", 3).splitlines()
    assert lines[:7] == [
        "# EcomInstruct evaluation",
        "",
        "- model: m",
        "- step: 3",
        f"- tasks: ecom_instruct_held_out (test split) under {SAMPLE}",
        "- examples per task: 4; CLS prompt seed 0",
        "- decoding: beam search, 2 beams, finished beams scored as log-prob sum / (generated "
        "tokens incl. EOS) ** length_penalty 1.0, early_stopping False; prompts cut from the "
        "left to 64 tokens; at most 6 new tokens; prediction = continuation up to the first EOS",
    ]
    [average] = [line.split() for line in lines if line.startswith("average")]
    assert average == ["average", "2", "tasks", "75.00", "50.00", "50.00+", "62.50"]
    assert "+ macro-f1: average over the 1 of 2 tasks where it is defined " in "\n".join(lines)
    assert evaluation.EvalResult(scores, [], [], 1.0, 5).metrics["EN-A-NER-b"]["macro-f1"] is None


@pytest.mark.parametrize("run_file", ["checkpoints", "metrics.jsonl"])
def test_a_training_runs_folder_is_not_an_eval_dir(tmp_path, run_file):
    """An evaluation replaces the TensorBoard events in its folder: in a run's folder
    those are the training curves. Refused before anything is written or removed."""
    run = tmp_path / "run"
    (run / "tensorboard").mkdir(parents=True)
    events = run / "tensorboard" / "events.out.tfevents.1.host"
    events.write_text("training curves")
    if run_file == "checkpoints":
        (run / run_file).mkdir()
    else:
        (run / run_file).write_text("{}\n")
    with pytest.raises(eval_outputs.EvalError) as info:
        eval_outputs.check_eval_dir(run)
    assert str(info.value) == (
        f"EVAL_DIR {run} is a training run's folder (it has {run_file}): give the evaluation "
        "a folder of its own (left unset, EVAL_DIR is <run>/eval/<step>/<mixture>)"
    )
    assert events.read_text() == "training curves" and not (run / "predictions").exists()
    eval_outputs.check_eval_dir(run / "eval" / "2" / "m")  # the default: beside, not in it


def test_a_new_evaluation_replaces_the_earlier_ones_outputs(tmp_path, capsys):
    """Predictions of tasks not in this evaluation, the earlier metrics and TensorBoard
    events go (TensorBoard showed two values at the step, one from each run); predictions
    of this evaluation's tasks are overwritten when each task finishes."""
    pred_dir = tmp_path / "predictions"
    pred_dir.mkdir()
    for name in ("EN-X-CLS-a", "EN-X-CLS-b"):
        (pred_dir / f"{name}.jsonl").write_text("{}\n")
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / "metrics.md").write_text("#")
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"x")
    assert eval_outputs.replace_previous(pred_dir, ["EN-X-CLS-a", "EN-X-CLS-c"]) == ["EN-X-CLS-a"]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "predictions",
        "predictions/EN-X-CLS-a.jsonl",
        "tensorboard",
    ]
    assert capsys.readouterr().err == (
        f"replacing the previous evaluation's predictions in {pred_dir}/: removed 1 file of "
        "tasks not in this one (EN-X-CLS-b.jsonl)\n"
    )
