"""Model input (instruction) and gold answer for each EcomInstruct example.

Implements sections 2 and 3 of the data contract (docs/ecominstruct.md) exactly::

    prompt = HEAD.format(defi=meta["defi"]) + meta["test_prompt"]["instruction"].format(
        sentences=<sentences>, label_set=<label_set text>, ex="")

Pure Python: no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import random

from ecomgpt_jax.ecominstruct import reader
from ecomgpt_jax.ecominstruct.reader import TaskInfo

HEAD = (
    "Below is an instruction that describes the {defi} task. "
    "Write a response that appropriately completes the request.\n"
)
# CLS prompts show k random candidates, k uniform in [0, MAX_CANDIDATES) (contract 2).
MAX_CANDIDATES = 50


@dataclasses.dataclass(frozen=True)
class Instruction:
    """One (prompt, answer) pair.

    Attributes:
      task: str, task folder name (or a file's task field / stem for instruction files).
      index: int, 0-based position of the example among the non-blank lines of its file.
      prompt: str, the model input.
      answer: str, the gold answer (training target).
    """

    task: str
    index: int
    prompt: str
    answer: str


def example_rng(seed: int, task_name: str, index: int) -> random.Random:
    """The generator for one example's random choices.

    Seeded from a string (hashed with SHA-512 by `random`, not with the salted `hash`), so
    prompts are the same in every process and independent of reading order or sharding.
    """
    return random.Random(f"{seed}:{task_name}:{index}")


def cls_candidates(task: TaskInfo, gold: list[str], rng: random.Random) -> list[str]:
    """Candidate labels shown in a CLS prompt.

    The label list is shuffled, its first k are kept (k uniform in [0, 50)), the gold labels
    are added (so the answer is always among the candidates) and the union is shuffled again.

    Args:
      task: a CLS task.
      gold: list[str], the example's gold labels.
      rng: the example's generator (see :func:`example_rng`); consumed in a fixed order:
        shuffle, k, final shuffle.

    Returns:
      list[str] of distinct candidates in random order.
    """
    labels = list(task.label_set)
    rng.shuffle(labels)
    k = rng.randrange(MAX_CANDIDATES)
    # dict keeps first-seen order and drops duplicates (a gold label may be among the k).
    candidates = list(dict.fromkeys(labels[:k] + list(gold)))
    rng.shuffle(candidates)
    return candidates


def label_set_text(task: TaskInfo, example: dict, rng: random.Random) -> str:
    """The ``{label_set}`` text of a prompt, by TYPE (contract section 2).

    Args:
      task: the task.
      example: dict, one example from :func:`reader.read_examples`.
      rng: generator used only by CLS tasks.

    Returns:
      str: CLS -> random candidates joined by label_sep; NER, Condition_Extract -> the whole
      label list in file order joined by label_sep; Extract, Generate -> "".
    """
    if task.type == "CLS":
        gold = example["labels"][task.label_key]
        return task.label_sep.join(cls_candidates(task, gold, rng))
    if task.type in ("NER", "Condition_Extract"):
        return task.label_sep.join(task.label_set)
    return ""


def build_prompt(task: TaskInfo, example: dict, rng: random.Random) -> str:
    """The model input for one example.

    Args:
      task: the task.
      example: dict with a str ``sentences`` (as returned by :func:`reader.read_examples`).
      rng: the example's generator (see :func:`example_rng`).

    Returns:
      str: HEAD with the task's defi, then the test_prompt template filled in.
    """
    body = task.template.format(
        sentences=example["sentences"], label_set=label_set_text(task, example, rng), ex=""
    )
    return HEAD.format(defi=task.defi) + body


def build_answer(task: TaskInfo, example: dict) -> str:
    """The gold answer for one example (contract section 3).

    Args:
      task: the task.
      example: dict, validated by :func:`reader.read_examples`.

    Returns:
      str: CLS -> gold labels joined by label_sep; Extract, Generate -> span terms joined by
      label_sep; Condition_Extract -> span terms joined by ", "; NER -> one line
      ``"<label>: <terms>"`` (or ``"<label>: None"``) per label of the label set, in file
      order, joined by newlines.
    """
    sep = task.label_sep
    if task.type == "CLS":
        return sep.join(example["labels"][task.label_key])
    terms = [span["term"] for span in example["spans"]]
    if task.type in ("Extract", "Generate"):
        return sep.join(terms)
    if task.type == "Condition_Extract":
        # The paper's code hard-codes ", " here rather than label_sep.
        return ", ".join(terms)
    lines = []
    for label in task.label_set:
        found = [span["term"] for span in example["spans"] if span.get("type") == label]
        lines.append(f"{label}: {sep.join(found)}" if found else f"{label}: None")
    return "\n".join(lines)


def task_instructions(task: TaskInfo, split: str, seed: int = 0) -> list[Instruction]:
    """Every (prompt, answer) of one split of a task.

    Args:
      task: the task.
      split: str, e.g. "test".
      seed: int, seed of the CLS candidate sampling; example i uses
        ``example_rng(seed, task.name, i)``.

    Returns:
      list[Instruction] in file order.

    Raises:
      DataError: see :func:`reader.read_examples`.
    """
    out = []
    for index, example in enumerate(reader.read_examples(task, split)):
        prompt = build_prompt(task, example, example_rng(seed, task.name, index))
        out.append(Instruction(task.name, index, prompt, build_answer(task, example)))
    return out
