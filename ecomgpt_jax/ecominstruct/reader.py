"""Discover EcomInstruct task folders and read their meta-info and JSON Lines data.

The layout and rules are those of the data contract (docs/ecominstruct.md, section 1)::

    <root>/<Dataset>/tasks/<LANG>-<Dataset>-<TYPE>-<name>/meta-info.json
    <root>/<Dataset>/tasks/<LANG>-<Dataset>-<TYPE>-<name>/{test,train}.json

The folder name is the task's identity and decides its TYPE; the ``task`` field inside
meta-info.json is never used (two shipped files disagree with their folder). Every data
problem is reported as a :class:`DataError` whose message names the file, the line where
there is one, and what is wrong, so a user sees one clear line instead of a trace.

Pure Python: no TensorFlow, no SeqIO.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import pathlib
import re
import string
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

TASK_TYPES = ("CLS", "NER", "Extract", "Condition_Extract", "Generate")
LANGS = ("EN", "ZH")
# Types whose prompt or answer needs meta["label_set"][meta["label_key"]].
LABEL_SET_TYPES = ("CLS", "NER", "Condition_Extract")
# Types whose gold answer is built from the example's `spans`.
SPAN_TYPES = ("NER", "Extract", "Condition_Extract", "Generate")
# Placeholders the paper's templates may use (contract section 2).
TEMPLATE_FIELDS = frozenset({"sentences", "label_set", "ex"})
# Every shipped meta-info.json uses ", "; a file without `label_sep` gets the same.
DEFAULT_LABEL_SEP = ", "
META_FILE = "meta-info.json"
SPLITS = ("train", "test")  # a task folder's data files: <split>.json
DATA_DIR_ENV = "ECOMGPT_DATA_DIR"


class DataError(ValueError):
    """A problem in the data, reported as ``"<file>:<line>: <what is wrong>"``.

    Attributes:
      path: str | None, the file (or folder) at fault.
      line: int | None, 1-based line number where one applies.
      what: str, the description without location.
    """

    def __init__(self, what: str, path: str | os.PathLike | None = None, line: int | None = None):
        self.what = what
        self.path = None if path is None else str(path)
        self.line = line
        where = self.path or ""
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {what}" if where else what)


# The bundled synthetic sample (`make_sample` writes it): every default run's data.
SAMPLE_DIR = pathlib.Path(__file__).resolve().parent / "sample"


def default_data_dir() -> pathlib.Path:
    """The data root: ``$ECOMGPT_DATA_DIR`` if set and non-empty, else the bundled sample.

    Returns:
      pathlib.Path of the root holding ``<Dataset>/tasks/<task>/`` folders.
    """
    env = os.environ.get(DATA_DIR_ENV, "")
    if env:
        return pathlib.Path(env)
    return SAMPLE_DIR


# SeqIO names a task "ecom:" + its folder name with "-" -> ":" (reversible: folder names
# with ":" are refused, see `parse_task_name`).
SEQIO_PREFIX = "ecom:"


def seqio_task_name(folder: str) -> str:
    """``"ecom:" + folder.replace("-", ":")``; DataError for a malformed folder name."""
    parse_task_name(folder)  # rejects ":" (would make the mapping ambiguous)
    return SEQIO_PREFIX + folder.replace("-", ":")


def folder_name(seqio_name: str) -> str:
    """Inverse of :func:`seqio_task_name`."""
    if not seqio_name.startswith(SEQIO_PREFIX):
        raise ValueError(f"not an EcomInstruct SeqIO task name (no {SEQIO_PREFIX!r}): {seqio_name}")
    return seqio_name[len(SEQIO_PREFIX) :].replace(":", "-")


def as_folder_name(name: str) -> str:
    """A task as users name it, folder or SeqIO name -> its folder name."""
    return folder_name(name) if name.startswith(SEQIO_PREFIX) else name


def parse_task_name(name: str) -> tuple[str, str, str, str]:
    """Split a task folder name into its four fields.

    Args:
      name: str, e.g. ``"EN-ABSA-CLS-review_topic_category"``.

    Returns:
      (lang, dataset, type, short_name), e.g. ``("EN", "ABSA", "CLS", "review_topic_category")``.

    Raises:
      DataError: the name contains ``":"`` (reserved: SeqIO names map ``"-"`` to ``":"``
        and back), does not have exactly four ``"-"``-separated non-empty fields, has a
        character SeqIO refuses in a task name, or has an unknown LANG or TYPE.
    """
    if ":" in name:
        raise DataError(
            f"task name {name!r} contains ':', which is reserved for SeqIO task names", name
        )
    try:  # a folder name in another encoding reaches Python as lone surrogates
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"task name {name!r} is not UTF-8", name) from None
    fields = name.split("-")
    if len(fields) != 4 or not all(fields):
        raise DataError(
            f"task name {name!r} is not <LANG>-<Dataset>-<TYPE>-<name> "
            "(four non-empty fields separated by '-')",
            name,
        )
    odd = sorted({c for c in name if not re.fullmatch(r"[\w.#-]", c)})
    if odd:
        # SeqIO task names allow letters, digits, "_", "." and "#" only ("-" becomes ":").
        raise DataError(
            f"task name {name!r} contains {''.join(odd)!r}: use letters, digits, '_', '.' "
            "or '#' within its fields",
            name,
        )
    lang, dataset, task_type, short_name = fields
    if lang not in LANGS:
        raise DataError(f"task name {name!r}: unknown LANG {lang!r}, expected one of {LANGS}", name)
    if task_type not in TASK_TYPES:
        raise DataError(
            f"task name {name!r}: unknown task type {task_type!r}, expected one of {TASK_TYPES}",
            name,
        )
    return lang, dataset, task_type, short_name


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """One task folder: its identity (from the folder name) and its parsed meta-info.

    Attributes:
      name: str, the folder name, e.g. ``"EN-ABSA-CLS-review_topic_category"``.
      lang, dataset, type, short_name: str, the four fields of `name`.
      path: pathlib.Path, the task folder.
      meta: Mapping, the parsed meta-info.json (validated for the keys `type` needs).
    """

    name: str
    lang: str
    dataset: str
    type: str
    short_name: str
    path: pathlib.Path
    # The mapping is not hashable; identity is (name, path).
    meta: Mapping = dataclasses.field(compare=False, repr=False)

    @property
    def label_sep(self) -> str:
        """Separator for lists of labels or spans in prompts and answers."""
        return self.meta.get("label_sep", DEFAULT_LABEL_SEP)

    @property
    def label_key(self) -> str | None:
        """Key of meta ``label_set`` (and of example ``labels``) this task uses."""
        return self.meta.get("label_key")

    @property
    def label_set(self) -> list[str]:
        """``meta.label_set[label_key]`` in file order, or ``[]`` when the task has none."""
        label_set = self.meta.get("label_set")
        if not isinstance(label_set, Mapping) or self.label_key not in label_set:
            return []
        return list(label_set[self.label_key])

    @property
    def defi(self) -> str:
        """Short task definition used in the instruction head."""
        return self.meta["defi"]

    @property
    def template(self) -> str:
        """``meta.test_prompt.instruction``: a ``str.format`` template."""
        return self.meta["test_prompt"]["instruction"]

    def split_path(self, split: str) -> pathlib.Path:
        """Path of the ``<split>.json`` data file (it may not exist)."""
        return self.path / f"{split}.json"

    def has_split(self, split: str) -> bool:
        """Whether ``<split>.json`` exists in the task folder."""
        return self.split_path(split).is_file()

    def has_examples(self, split: str) -> bool:
        """Whether ``<split>.json`` exists and holds an example (an empty or blank-only
        file is valid, a task without examples yet): reads up to the first one."""
        return self.has_split(split) and any(example_lines(self.split_path(split)))


def example_lines(path: pathlib.Path) -> Iterator[bool]:
    """Per line of a JSON Lines file, whether it is an example (not blank; no parsing)."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            text = raw.decode("utf-8", errors="replace")
            if number == 1:
                text = text.removeprefix("\ufeff")
            yield bool(text.strip())


def _load_meta(path: pathlib.Path) -> dict:
    """Read meta-info.json strictly (it is hand-written; errors carry JSON's line)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror or e}", path) from None
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8: {e.reason}", path) from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON: {e.msg} (column {e.colno})", path, e.lineno) from None
    if not isinstance(meta, dict):
        raise DataError(f"expected a JSON object, got {type(meta).__name__}", path)
    return meta


def _validate_template(template: str, path: pathlib.Path) -> None:
    """Check that `template` formats with exactly the contract's keyword fields.

    Only bare names of :data:`TEMPLATE_FIELDS` are allowed (every shipped template uses
    nothing else): ``{}`` / ``{0}`` would fail at prompt-building time with an IndexError,
    ``{sentences:d}`` / ``{label_set!z}`` with an error naming no file, and
    ``{sentences.upper}`` would silently insert a method's repr into every prompt.
    """
    where = "field 'test_prompt.instruction'"
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise DataError(f"{where} is not a format template: {e}", path) from None
    unknown = set()
    for _, field, spec, conversion in parts:
        if field is None:  # literal text only
            continue
        conversion_text = f"!{conversion}" if conversion else ""
        spec_text = f":{spec}" if spec else ""
        shown = f"{{{field}{conversion_text}{spec_text}}}"
        base = field.split(".")[0].split("[")[0]
        if not base or base.isdigit():
            raise DataError(
                f"{where} has positional placeholder {shown!r}; use a named one of "
                f"{sorted(TEMPLATE_FIELDS)}",
                path,
            )
        if base not in TEMPLATE_FIELDS:
            unknown.add(base)
        elif field != base or conversion or spec:
            raise DataError(
                f"{where} has placeholder {shown!r}: only bare names are allowed (no "
                f"attribute/index access, conversion or format spec), e.g. '{{{base}}}'",
                path,
            )
    if unknown:
        raise DataError(
            f"{where} uses unknown placeholder(s) {sorted(unknown)}; "
            f"allowed: {sorted(TEMPLATE_FIELDS)}",
            path,
        )
    if not any(field == "sentences" for _, field, _, _ in parts):
        # Every prompt would lack the example's text, and nothing downstream would notice.
        raise DataError(f"{where} has no {{sentences}} placeholder (the example's text)", path)
    try:  # the checks above should leave nothing to fail here; this proves it
        template.format(**dict.fromkeys(TEMPLATE_FIELDS, ""))
    except (ValueError, IndexError, KeyError, AttributeError) as e:
        raise DataError(f"{where} does not format: {type(e).__name__}: {e}", path) from None


def _validate_meta(meta: Mapping, task_type: str, path: pathlib.Path) -> None:
    """Check that `meta` has every key the paper's prompt/answer for `task_type` needs."""
    if not isinstance(meta.get("defi"), str):
        raise DataError("missing or non-string field 'defi'", path)
    prompt = meta.get("test_prompt")
    if not isinstance(prompt, Mapping) or not isinstance(prompt.get("instruction"), str):
        raise DataError("missing or non-string field 'test_prompt.instruction'", path)
    _validate_template(prompt["instruction"], path)
    if "label_sep" in meta and not (isinstance(meta["label_sep"], str) and meta["label_sep"]):
        # Scoring splits answers on it: "" cannot split.
        raise DataError("field 'label_sep' must be a non-empty string", path)
    if task_type not in LABEL_SET_TYPES:
        return
    key = meta.get("label_key")
    if not isinstance(key, str):
        raise DataError(f"missing or non-string field 'label_key' (needed by {task_type})", path)
    label_set = meta.get("label_set")
    if not isinstance(label_set, Mapping):
        raise DataError(f"missing or non-object field 'label_set' (needed by {task_type})", path)
    labels = label_set.get(key)
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise DataError(f"field 'label_set.{key}' (label_key) must be a list of strings", path)
    if not labels:
        # CLS prompts would offer only the gold labels (the answer); NER answers would be
        # empty; Condition_Extract prompts would ask about nothing.
        raise DataError(f"field 'label_set.{key}' (label_key) is empty ({task_type})", path)


def load_task(folder: str | os.PathLike) -> TaskInfo:
    """Build the :class:`TaskInfo` of one task folder.

    Args:
      folder: path of ``<root>/<Dataset>/tasks/<task>/``.

    Returns:
      TaskInfo with validated meta-info.

    Raises:
      DataError: bad folder name, missing or invalid meta-info.json.
    """
    folder = pathlib.Path(folder)
    try:
        lang, dataset, task_type, short_name = parse_task_name(folder.name)
    except DataError as e:
        raise DataError(e.what, folder) from None
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise DataError(f"task folder has no {META_FILE}", folder)
    meta = _load_meta(meta_path)
    _validate_meta(meta, task_type, meta_path)
    return TaskInfo(folder.name, lang, dataset, task_type, short_name, folder, meta)


LAYOUT = "<root>/<Dataset>/tasks/<LANG>-<Dataset>-<TYPE>-<name>/meta-info.json"


def _no_tasks_error(root: pathlib.Path) -> DataError:
    """Why `root` holds no task folder; where to point instead when the layout shows it.

    The usual cause is a root one level off (the folder above the data root, a <Dataset>
    folder, a task folder), so the level actually found is named.
    """
    what = f"no task folders found; expected {LAYOUT}"
    up = pathlib.Path(os.path.abspath(root)).parents  # ".." resolved, as the user means it
    if (root / META_FILE).is_file() and len(up) >= 3:
        return DataError(f"{what} (this is a task folder: point at {up[2]})", root)
    if any(root.glob(f"*/{META_FILE}")) and len(up) >= 2:
        return DataError(f"{what} (this is a <Dataset>/tasks folder: point at {up[1]})", root)
    if any(root.glob(f"tasks/*/{META_FILE}")) and len(up) >= 1:
        return DataError(f"{what} (this is a <Dataset> folder: point at {up[0]})", root)
    below = sorted({str(p.parents[3]) for p in root.glob(f"*/*/tasks/*/{META_FILE}")})
    if below:
        return DataError(f"{what} (task folders are one level down: point at {below[0]})", root)
    return DataError(what, root)


def discover_tasks(
    root: str | os.PathLike | None = None, *, allow_empty: bool = True
) -> dict[str, TaskInfo]:
    """Find every task folder ``<root>/<Dataset>/tasks/<task>/``.

    Args:
      root: data root; ``None`` means :func:`default_data_dir`.
      allow_empty: if False, a root without task folders is an error that says which
        layout was expected (CLIs: a mistyped root is the likely cause). Registration keeps
        the default, where an empty root is valid and registers nothing.

    Returns:
      dict folder name -> TaskInfo, sorted by name. Empty if no task folder exists.

    Raises:
      DataError: `root` is not a directory, holds no task folder (`allow_empty` False), two
        datasets hold the same task name, or a task folder is invalid (see
        :func:`load_task`).
    """
    root = default_data_dir() if root is None else pathlib.Path(root)
    if not root.exists():
        raise DataError("data directory does not exist", root)
    if not root.is_dir():
        raise DataError("data directory is a file, not a folder", root)
    tasks: dict[str, TaskInfo] = {}
    for tasks_dir in sorted(root.glob("*/tasks")):
        if not tasks_dir.is_dir():
            continue
        for folder in sorted(p for p in tasks_dir.iterdir() if p.is_dir()):
            if folder.name.startswith("."):  # editor / VCS leftovers, never tasks
                continue
            task = load_task(folder)
            if task.name in tasks:
                raise DataError(
                    f"task {task.name!r} also defined in {tasks[task.name].path}", folder
                )
            tasks[task.name] = task
    if not tasks and not allow_empty:
        raise _no_tasks_error(root)
    return dict(sorted(tasks.items()))


def check_output_file(
    path: str | os.PathLike, flag: str = "--output", inputs: Sequence[str | os.PathLike] = ()
) -> None:
    """Check, before any work, that a file can be written at `path`.

    inputs: the files the command reads (`input_files`): `path` must not be one of them.

    Raises:
      DataError: one line naming `flag` and the problem (a folder, a missing or
        unwritable parent folder, an input), instead of an OSError after the work is done.
    """
    path = pathlib.Path(path)
    parent = path.parent
    target = path.resolve()
    read = [pathlib.Path(p).resolve() for p in inputs]
    clash = next((p for p in read if target == p), None)
    if clash is not None:
        problem = f"would overwrite what this command reads ({clash})"
    elif path.is_dir():
        problem = "is a folder; give a file name"
    elif not parent.exists():
        problem = f"folder {parent} does not exist"
    elif not parent.is_dir():
        problem = f"{parent} is a file, not a folder"
    elif not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        problem = "not writable"
    else:
        return
    raise DataError(f"{flag} {path}: {problem}")


def input_files(tasks: Mapping[str, TaskInfo], split: str, extra=()) -> list[pathlib.Path]:
    """What a command over `tasks` (`discover_tasks`) reads: each task's meta-info.json and
    `split` file, and `extra` (a file, or a folder's *.jsonl files)."""
    files = [p for t in tasks.values() for p in (t.path / META_FILE, t.split_path(split))]
    for p in map(pathlib.Path, extra):
        files += sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    return files


class _NotJson(ValueError):
    pass


def _not_json(name: str):
    """json.loads' hook for NaN / Infinity / -Infinity, which it accepts but strict JSON
    (and a Python literal) does not."""
    raise _NotJson(name)


_JSON_WHITESPACE = " \t\r\n"


def parse_line(text: str, path: str | os.PathLike, line: int) -> Any:
    """Parse one JSON Lines record: strict JSON, else a Python literal (single quotes).

    ``ast.literal_eval`` only builds literals (never runs code), so data cannot execute.

    Args:
      text: str, the line without its newline (not blank).
      path, line: location for errors.

    Returns:
      The parsed value.

    Raises:
      DataError: neither JSON nor a Python literal, or a string with a lone surrogate.
    """
    value = _parse(text, path, line)
    # A JSON escape such as "\ud800" alone is no character: it would fail later, when a
    # prompt or a score is written, as a UnicodeEncodeError trace. Checked only on lines
    # that hold such an escape.
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            raise DataError(
                f"a lone surrogate escape (\\u{ord(e.object[e.start]):04x}) is not a character",
                path,
                line,
            ) from None
    return value


# JSON's and a Python literal's escapes of U+D800..U+DFFF.
_SURROGATE_ESCAPE = re.compile(r"\\(u|U0000)[dD][89a-fA-F]")


def _parse(text: str, path, line: int) -> Any:
    try:
        return json.loads(text, parse_constant=_not_json)
    except RecursionError:  # nested thousands deep
        raise DataError(
            "not a JSON object or Python literal (nested too deep)", path, line
        ) from None
    except _NotJson as e:
        raise DataError(
            f"not a JSON object or Python literal ({e} is not JSON)", path, line
        ) from None
    except json.JSONDecodeError as json_error:
        try:
            # JSON's own whitespace only: a line json.loads refuses for a leading NBSP or
            # form feed is no literal either.
            return ast.literal_eval(text.strip(_JSON_WHITESPACE))
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise DataError(
                f"not a JSON object or Python literal "
                f"({json_error.msg}, column {json_error.colno})",
                path,
                line,
            ) from None


def iter_json_lines(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, value)`` for each non-blank line of a JSON Lines file.

    Args:
      path: the file.

    Yields:
      (int 1-based line number, parsed value). Blank lines are skipped.

    Raises:
      DataError: the file cannot be read, a line is not UTF-8, or a line does not parse.
    """
    path = pathlib.Path(path)
    try:
        handle = path.open("rb")
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror or e}", path) from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"not UTF-8: {e.reason}", path, number) from None
            if number == 1:
                text = text.removeprefix("\ufeff")
            if not text.strip():
                continue
            # Without its line break, so JSON's error column is on this line.
            yield number, parse_line(text.rstrip("\r\n"), path, number)


def _check_example(task: TaskInfo, example: Any, path: pathlib.Path, line: int) -> dict:
    """Validate one example for `task` and normalise ``sentences`` to a string."""
    if not isinstance(example, dict):
        raise DataError(f"expected an object, got {type(example).__name__}", path, line)
    sentences = example.get("sentences")
    if isinstance(sentences, list) and all(isinstance(s, str) for s in sentences):
        example["sentences"] = "".join(sentences)  # contract: lists are joined with ""
    elif not isinstance(sentences, str):
        what = "missing field 'sentences'" if sentences is None else "field 'sentences'"
        raise DataError(f"{what} (expected a string or a list of strings)", path, line)
    if task.type == "CLS":
        labels = example.get("labels")
        key = task.label_key
        if not isinstance(labels, Mapping) or key not in labels:
            raise DataError(f"missing field 'labels.{key}' (label_key of a CLS task)", path, line)
        gold = labels[key]
        if not isinstance(gold, list) or not all(isinstance(x, str) for x in gold):
            raise DataError(f"field 'labels.{key}' must be a list of strings", path, line)
    if task.type in SPAN_TYPES:
        spans = example.get("spans")
        if not isinstance(spans, list):
            raise DataError("missing field 'spans' (expected a list)", path, line)
        for i, span in enumerate(spans):
            if not isinstance(span, Mapping) or not isinstance(span.get("term"), str):
                raise DataError(f"field 'spans[{i}].term' missing or not a string", path, line)
            # `type` is optional (contract §1): an NER span without one matches no label.
            if span.get("type") is not None and not isinstance(span["type"], str):
                raise DataError(f"field 'spans[{i}].type' must be a string", path, line)
    return example


def read_examples(task: TaskInfo, split: str) -> list[dict]:
    """Read and validate every example of one split.

    Args:
      task: the task.
      split: str, e.g. ``"test"`` or ``"train"``.

    Returns:
      list of example dicts in file order (blank lines skipped); ``sentences`` is always a
      str. The list position is the example's ``index``.

    Raises:
      DataError: missing split file, unparsable line, or an example lacking a field the
        task's TYPE needs (message names file, line and field).
    """
    path = task.split_path(split)
    if not path.is_file():
        raise DataError(f"task {task.name!r} has no {split!r} split", path)
    return [_check_example(task, value, path, line) for line, value in iter_json_lines(path)]
