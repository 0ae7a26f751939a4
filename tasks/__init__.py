"""SeqIO tasks and mixtures for EcomInstruct. Importing this package registers them.

At import, every task folder under ``ecomgpt_jax.ecominstruct.reader.default_data_dir()``
(``$ECOMGPT_DATA_DIR``, else the bundled sample) is registered with the bundled SentencePiece
vocabulary, plus the mixtures of :mod:`tasks.mixtures`. Re-register for another root,
vocabulary or CLS-candidate seed with :func:`register_ecom_tasks` (idempotent: it first
removes what it registered before).

Name mapping (reversible; folder names containing ``":"`` are rejected)::

    folder  EN-ABSA-CLS-review_topic_category
    task    ecom:EN:ABSA:CLS:review_topic_category     = "ecom:" + folder.replace("-", ":")

``seqio_task_name(folder)`` and ``folder_name(seqio_name)`` convert. Mixtures:
``ecom_instruct_held_out`` (the paper's twelve held-out tasks, test split, evaluation
only), ``ecom_instruct_held_in`` (tasks with a train split not held out), per language
``ecom_instruct_en`` / ``ecom_instruct_zh`` and per TYPE ``ecom_instruct_cls`` / ``_ner`` /
``_extract`` / ``_condition_extract`` / ``_generate`` (held-in tasks, train split).

Use :func:`get` rather than ``seqio.get_mixture_or_task`` to get a clear error that names
the data root when a mixture has no task there.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import warnings

import seqio

from ecomgpt_jax import vocabularies
from ecomgpt_jax.ecominstruct import reader
from tasks import ecom_instruct, mixtures
from tasks.ecom_instruct import TASK_PREFIX, folder_name, seqio_task_name
from tasks.mixtures import HELD_OUT_TASKS, MIXTURE_NAMES

__all__ = [
    "HELD_OUT_TASKS",
    "MIXTURE_NAMES",
    "TASK_PREFIX",
    "Registration",
    "folder_name",
    "get",
    "register_ecom_tasks",
    "registration",
    "seqio_task_name",
]

log = logging.getLogger(__name__)
# `python -m tasks.tfds_builder` runs a module this package imported already (registration
# needs it), and runpy warns about that before the run. Harmless here: that module's
# __main__ block hands over to the imported copy, so the warning would only confuse.
warnings.filterwarnings(
    "ignore",
    message="'tasks.tfds_builder' found in sys.modules after import of package 'tasks'",
    category=RuntimeWarning,
)


@dataclasses.dataclass(frozen=True)
class Registration:
    """What the last :func:`register_ecom_tasks` call registered.

    Attributes:
      data_dir: the data root searched.
      tasks: registered SeqIO task names, sorted.
      mixtures: registered mixture names.
      unavailable: mixture name -> why it is not registered (no task under data_dir).
      error: the data error that stopped registration at import, if any.
      default: registered with every argument left at its default (what `import tasks`
        registers): the default data root, the bundled vocabulary, <root>/_tfds.
    """

    data_dir: pathlib.Path
    tasks: tuple[str, ...] = ()
    mixtures: tuple[str, ...] = ()
    unavailable: dict = dataclasses.field(default_factory=dict)
    error: Exception | None = None
    default: bool = False


_registration: Registration | None = None


def registration() -> Registration | None:
    """The state of the last registration (None before any)."""
    return _registration


def _unregister_previous() -> None:
    if _registration is None:
        return
    for name in _registration.mixtures:
        seqio.MixtureRegistry.remove(name)
    for name in _registration.tasks:
        seqio.TaskRegistry.remove(name)


def register_ecom_tasks(
    data_dir: str | pathlib.Path | None = None,
    vocabulary: seqio.Vocabulary | None = None,
    seed: int = 0,
    *,
    tfds_data_dir: str | pathlib.Path | None = None,
    rate_maximum: int | None = mixtures.RATE_MAXIMUM,
) -> list[str]:
    """(Re-)registers one SeqIO task per task folder under `data_dir`, and the mixtures.

    Args:
      data_dir: EcomInstruct root; None = ``default_data_dir()``.
      vocabulary: for the inputs/targets features; None = the bundled SentencePiece model
        (``vocabularies.make_vocabulary()``).
      seed: CLS candidate sampling seed of the prompts.
      tfds_data_dir: where prepared TFDS copies live (``tasks/tfds_builder.py``); None =
        ``<data_dir>/_tfds``. Tasks without a current prepared copy read JSON.
      rate_maximum: cap on each task's mixing rate (example count).

    Returns:
      the registered SeqIO task names, sorted.

    Raises:
      DataError: `data_dir` is missing or holds an invalid task folder (also remembered in
        :func:`registration`, so that :func:`get` repeats it).
    """
    global _registration
    # `is None`, not a tuple's ==: that would call a Vocabulary's __eq__ with None.
    default = all(x is None for x in (data_dir, vocabulary, tfds_data_dir)) and (
        (seed, rate_maximum) == (0, mixtures.RATE_MAXIMUM)
    )
    root = reader.default_data_dir() if data_dir is None else pathlib.Path(data_dir)
    vocabulary = vocabulary if vocabulary is not None else vocabularies.make_vocabulary()
    if tfds_data_dir is None:
        tfds_data_dir = ecom_instruct.tfds_builder.default_tfds_data_dir(root)
    _unregister_previous()
    _registration = Registration(root, default=default)
    try:
        return _register(root, vocabulary, seed, tfds_data_dir, rate_maximum)
    except reader.DataError as e:
        # Remembered so that get() repeats this cause instead of calling names "unknown".
        _registration = dataclasses.replace(_registration, error=e)
        raise


def _register(
    root: pathlib.Path,
    vocabulary: seqio.Vocabulary,
    seed: int,
    tfds_data_dir: str | pathlib.Path,
    rate_maximum: int | None,
) -> list[str]:
    """The body of :func:`register_ecom_tasks`: tasks, then mixtures, recorded as it goes."""
    global _registration
    infos = reader.discover_tasks(root)
    # A data file without examples (empty, or blank lines only) is valid (a task without
    # examples yet) but takes no part in any mixture: say so once, rather than leave the
    # task silently unused.
    empty = [
        f"{info.path.name}/{split}.json"
        for info in infos.values()
        for split in ecom_instruct.SPLITS
        if info.has_split(split) and not info.has_examples(split)
    ]
    if empty:
        log.warning("empty data files (no examples, left out of mixtures): %s", ", ".join(empty))
    names = ecom_instruct.register_tasks(infos, vocabulary, seed, tfds_data_dir)
    # Recorded before mixtures can fail.
    _registration = dataclasses.replace(_registration, tasks=tuple(names))
    mixture_names, unavailable = mixtures.register_mixtures(infos, root, rate_maximum)
    _registration = dataclasses.replace(
        _registration, mixtures=tuple(mixture_names), unavailable=unavailable
    )
    return names


def get(name: str) -> seqio.Task | seqio.Mixture:
    """The registered task or mixture `name`, or an error that says where it looked.

    Raises:
      DataError: an EcomInstruct mixture with no task under the data root, an EcomInstruct
        task whose folder is not there, or registration failed (the original data error).
      ValueError: any other unknown name.
    """
    if name in seqio.MixtureRegistry.names() or name in seqio.TaskRegistry.names():
        return seqio.get_mixture_or_task(name)
    state = _registration
    root = state.data_dir if state else reader.default_data_dir()
    if state is not None and state.error is not None:
        raise reader.DataError(
            f"no task or mixture {name!r}: registering EcomInstruct tasks failed: {state.error}"
        )
    if state is not None and name in state.unavailable:
        raise reader.DataError(state.unavailable[name])  # the message names the root
    if name.startswith(TASK_PREFIX):
        raise reader.DataError(
            f"no task folder {folder_name(name)!r} (SeqIO task {name!r}) under this root", root
        )
    raise ValueError(
        f"unknown task or mixture {name!r}; EcomInstruct mixtures: {', '.join(MIXTURE_NAMES)}; "
        f"tasks are named {TASK_PREFIX}<LANG>:<Dataset>:<TYPE>:<name> (data root {root})"
    )


def _register_at_import() -> None:
    try:
        register_ecom_tasks()
    except reader.DataError as e:
        # Keep `import tasks` usable (the trainer may re-register for another root); the
        # error is remembered, and repeated by get().
        log.error("EcomInstruct tasks not registered: %s", e)


_register_at_import()
