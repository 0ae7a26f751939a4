"""SeqIO mixtures over the registered EcomInstruct tasks.

==============================  =====================================================  =====
mixture                         tasks                                                  split
==============================  =====================================================  =====
ecom_instruct_held_out          the paper's twelve held-out tasks (data contract 6);   test
                                evaluation only
ecom_instruct_held_in           every task with a train split that is not held out     train
ecom_instruct_en / _zh          held-in tasks of one language                          train
ecom_instruct_cls / _ner /      held-in tasks of one TYPE                              train
_extract / _condition_extract
/ _generate
==============================  =====================================================  =====

Rates are proportional to each task's number of examples in the mixture's split, capped at
``rate_maximum`` (like T5's ``seqio.mixing_rate_num_examples(maximum=...)``, without its
per-task "not cached" warning).

A mixture is built from the tasks that are present under the data root with at least one
example in its split (a task whose file is empty or blank would have rate 0, and evaluating
it would find nothing). When some of a fixed list (the held-out twelve) are missing, ONE
warning lists them; when none is present the mixture is not registered and
:func:`tasks.get` raises an error naming the root.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib
from collections.abc import Callable, Mapping

import seqio

from ecomgpt_jax.ecominstruct import reader
from tasks import ecom_instruct

log = logging.getLogger(__name__)

# Data contract, section 6: the twelve held-out evaluation tasks of the paper.
HELD_OUT_TASKS = (
    "EN-Lenovo-NER-NER",
    "ZH-MEPAVE-NER-attribute_value_extraction",
    "EN-Lenovo-Condition_Extract-Condition_Extract",
    "ZH-MEPAVE-Condition_Extract-attribute_value_detection",
    "ZH-Multi_CPR-Extract-product_select_2",
    "EN-Reddit_QA-Extract-Extract_QA",
    "ZH-OpenBG_Align-Generate-title_generate",
    "ZH-OpenBG_Align-CLS-item_align",
    "ZH-OpenBG_Align-CLS-title_attribute_matching",
    "ZH-OpenBG_Align-CLS-item_coarse_classify",
    "ZH-OpenBG_Align-CLS-item_fine_classify",
    "EN-ABSA-CLS-review_topic_category",
)
# Cap on a task's rate (its example count): keeps the largest datasets from swamping.
RATE_MAXIMUM = 10_000


def num_examples_rate(task: seqio.Task, split: str, maximum: int | None) -> float:
    """min(number of input examples of `split`, maximum) as a float."""
    count = task.num_input_examples(split)
    return float(count if maximum is None else min(count, maximum))


@dataclasses.dataclass(frozen=True)
class MixtureSpec:
    """A mixture definition.

    Attributes:
      name: the SeqIO mixture name.
      split: the split its rates (and its use) refer to.
      member: TaskInfo -> bool, whether a present task belongs to it (a member also needs
        an example in `split`, see :func:`register_mixtures`).
      needs: human description of its members (for the "none present" error).
      expected: fixed list of folder names, or None when membership is by discovery.
    """

    name: str
    split: str
    member: Callable[[reader.TaskInfo], bool]
    needs: str
    expected: tuple[str, ...] | None = None


def _held_in(task: reader.TaskInfo) -> bool:
    return task.has_split("train") and task.name not in HELD_OUT_TASKS


def _held_in_where(field: str, value: str) -> Callable[[reader.TaskInfo], bool]:
    return lambda task: _held_in(task) and getattr(task, field) == value


_HELD_IN_NEEDS = "task folders with a train.json that are not among the paper's held-out tasks"
MIXTURES: tuple[MixtureSpec, ...] = (
    MixtureSpec(
        "ecom_instruct_held_out",
        "test",
        lambda task: task.name in HELD_OUT_TASKS and task.has_split("test"),
        "the paper's held-out task folders with a test.json",
        HELD_OUT_TASKS,
    ),
    MixtureSpec("ecom_instruct_held_in", "train", _held_in, _HELD_IN_NEEDS),
    *(
        MixtureSpec(
            f"ecom_instruct_{lang.lower()}",
            "train",
            _held_in_where("lang", lang),
            f"{lang} {_HELD_IN_NEEDS}",
        )
        for lang in reader.LANGS
    ),
    *(
        MixtureSpec(
            f"ecom_instruct_{task_type.lower()}",
            "train",
            _held_in_where("type", task_type),
            f"{task_type} {_HELD_IN_NEEDS}",
        )
        for task_type in reader.TASK_TYPES
    ),
)
MIXTURE_NAMES = tuple(spec.name for spec in MIXTURES)


def missing_message(spec: MixtureSpec, root: pathlib.Path, missing: list[str], present: int):
    return (
        f"mixture {spec.name!r}: {len(missing)} of its {len(spec.expected)} tasks have no "
        f"{spec.split} data under {root}; using the {present} present. Missing: "
        + ", ".join(missing)
    )


def none_present_message(spec: MixtureSpec, root: pathlib.Path) -> str:
    return (
        f"mixture {spec.name!r} has no tasks under {root}: it needs {spec.needs} "
        f"(<root>/<Dataset>/tasks/<task>/{spec.split}.json); point DATA_DIR (train, eval) "
        "or $ECOMGPT_DATA_DIR at a root that has them"
    )


def register_mixtures(
    tasks: Mapping[str, reader.TaskInfo],
    root: str | pathlib.Path,
    rate_maximum: int | None = RATE_MAXIMUM,
) -> tuple[list[str], dict[str, str]]:
    """Registers every mixture of :data:`MIXTURES` that has at least one task in `tasks`.

    Args:
      tasks: folder name -> TaskInfo of the registered tasks under `root`.
      root: the data root (named in messages).
      rate_maximum: cap on each task's rate (None: no cap).

    Returns:
      (registered mixture names, {unregistered mixture name: why}).
    """
    root = pathlib.Path(root)
    registered, unavailable = [], {}
    with_examples = {
        (name, split): task.has_examples(split)
        for name, task in tasks.items()
        for split in ecom_instruct.SPLITS
    }
    for spec in MIXTURES:
        seqio.MixtureRegistry.remove(spec.name)
        members = [
            name
            for name, task in tasks.items()
            if spec.member(task) and with_examples[(name, spec.split)]
        ]
        if not members:
            unavailable[spec.name] = none_present_message(spec, root)
            continue
        if spec.expected is not None:
            missing = [name for name in spec.expected if name not in members]
            if missing:
                # The bundled sample lacks six held-out tasks by design (README): said, not
                # warned, so that the default run's first line is not a warning.
                sample = root.resolve() == reader.SAMPLE_DIR
                level = logging.INFO if sample else logging.WARNING
                log.log(level, missing_message(spec, root, missing, len(members)))
        rate = functools.partial(num_examples_rate, split=spec.split, maximum=rate_maximum)
        seqio.MixtureRegistry.add(
            spec.name, [(ecom_instruct.seqio_task_name(name), rate) for name in sorted(members)]
        )
        registered.append(spec.name)
    return registered, unavailable
