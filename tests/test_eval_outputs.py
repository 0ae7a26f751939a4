"""Tests for ecomgpt_jax/eval_outputs.py: metrics.md (metrics.json's bytes against the
score CLI, and the files an evaluation writes: test_evaluation.py, test_eval.py)."""

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
