"""TFDS builder that prepares EcomInstruct tasks as sharded files (for the full 1.5M scale).

Without prepared copies every SeqIO task reads its JSON Lines files directly (fine for the
sample and the 12 held-out sets). For the full EcomInstruct release, building the prompts
once and reading sharded TFRecords is much cheaper; prepare them with::

    python -m tasks.tfds_builder --data_dir /path/to/ecom_instruct            # every task
    python -m tasks.tfds_builder --data_dir ... --tfds_data_dir /fast/disk --task EN-...
    python -m tasks.tfds_builder --data_dir ... --force      # rewrite copies (damaged files)

One builder config per task folder (config name = folder name, plus ``_seed<N>`` when the
CLS candidate seed is not 0). Features: ``inputs`` and ``targets`` (the prompt and answer of
``ecominstruct.instructions``), ``task`` (folder name) and ``index`` (example position in
its file). A prepared task yields exactly the examples the JSON source yields, but in TFDS's
write order (examples shuffled by key), not file order: join on ``index``. An ordered
(``disable_shuffling``) dataset cannot be read with ``shuffle_files=True``, which every
shuffled SeqIO read (training) asks for. Prepared data lands under
``<tfds_data_dir>/ecom_instruct/<config>/<version>/`` (default ``<data_dir>/_tfds``);
``tasks.register_ecom_tasks`` then reads it through ``seqio.TfdsDataSource`` whenever it
exists and its recorded :func:`fingerprint` (sha256 of the task's JSON files and of the
prompt-building code) still matches; a ``--tfds_data_dir`` elsewhere is read when training
sets ``--gin.TFDS_DATA_DIR`` to it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import pathlib
import shlex
import sys
from collections.abc import Sequence

import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from ecomgpt_jax.ecominstruct import instructions, reader

BUILDER_NAME = "ecom_instruct"
VERSION = "1.0.0"
SPLITS = reader.SPLITS
DEFAULT_TFDS_SUBDIR = "_tfds"
# The modules that turn JSON examples into prompts and answers: an edit to them (a fixed
# HEAD, a new answer format) changes what a prepared copy should hold, so it is part of the
# fingerprint. Hashing their source, not a hand-bumped version, cannot be forgotten; a mere
# comment edit costs one re-preparation.
FORMAT_SOURCES = (pathlib.Path(instructions.__file__), pathlib.Path(reader.__file__))


def config_name(folder: str, seed: int = 0) -> str:
    """The builder config name of one task folder (and CLS candidate seed)."""
    return folder if seed == 0 else f"{folder}_seed{seed}"


def _digest(path: pathlib.Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


def format_digest() -> str:
    """sha256 (16 hex digits) of the :data:`FORMAT_SOURCES` files, in order."""
    digest = hashlib.sha256()
    for path in FORMAT_SOURCES:
        digest.update(_digest(path).encode())
    return digest.hexdigest()[:16]


def fingerprint(task: reader.TaskInfo) -> str:
    """``"meta-info.json=<sha>,test.json=<sha>,...,code=<sha>"``: what the prompts came from.

    Content hashes (sha256, 16 hex digits) of meta-info.json (definition, template, label
    set), of every split file and (``code``) of the prompt-building modules
    (:func:`format_digest`), so any edit makes the prepared copy stale; only computed where
    a prepared copy exists (about a second per GB of JSON).
    """
    files = [task.path / reader.META_FILE] + [
        task.split_path(s) for s in SPLITS if task.has_split(s)
    ]
    return ",".join(sorted(f"{f.name}={_digest(f)}" for f in files)) + f",code={format_digest()}"


def default_tfds_data_dir(data_dir: str | pathlib.Path) -> pathlib.Path:
    return pathlib.Path(data_dir) / DEFAULT_TFDS_SUBDIR


def prepared_dir(tfds_data_dir: str | pathlib.Path, folder: str, seed: int = 0) -> pathlib.Path:
    """Where the prepared files of one task live (may not exist)."""
    return pathlib.Path(tfds_data_dir) / BUILDER_NAME / config_name(folder, seed) / VERSION


def prepared_splits(task: reader.TaskInfo, tfds_data_dir, seed: int = 0) -> tuple[str, ...]:
    """Splits of `task` prepared under `tfds_data_dir` and still current; () when none.

    Current means: the config's recorded fingerprint equals :func:`fingerprint` of the task
    folder and code now (a changed JSON file or prompt code makes the copy stale).
    """
    folder = prepared_dir(tfds_data_dir, task.name, seed)
    info = _prepared_info(folder)
    if info is None:
        return ()
    if info.get("configDescription") != fingerprint(task):
        # The command that renews this very copy (root: <root>/<Dataset>/tasks/<folder>).
        command = ["python", "-m", "tasks.tfds_builder", "--data_dir", str(task.path.parents[2])]
        command += ["--tfds_data_dir", str(tfds_data_dir), "--task", task.name]
        command += ["--seed", str(seed)] if seed else []
        logging.getLogger(__name__).warning(
            "%s: prepared TFDS data of task %s is stale (JSON files or prompt code changed); "
            "reading JSON. Renew it: %s",
            folder,
            task.name,
            shlex.join(command),
        )
        return ()
    return tuple(s["name"] for s in info.get("splits", []) if s["name"] in SPLITS)


class EcomInstructConfig(tfds.core.BuilderConfig):
    """One task folder. `description` holds the :func:`fingerprint` of its JSON files."""

    def __init__(self, *, task: reader.TaskInfo, seed: int = 0):
        super().__init__(
            name=config_name(task.name, seed),
            version=tfds.core.Version(VERSION),
            description=fingerprint(task),
        )
        self.task = task
        self.seed = seed


# Not in TFDS's global registry: it is only built directly (configs are per task folder,
# made at run time) and read back with `tfds.builder_from_directory`; this also lets
# `python -m tasks.tfds_builder` define the class a second time as __main__.
class EcomInstruct(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """EcomInstruct instructions (prompt + answer) of one task folder per config."""

    VERSION = tfds.core.Version(VERSION)
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download the EcomInstruct release and pass its root (the folder holding
    <Dataset>/tasks/<LANG>-<Dataset>-<TYPE>-<name>/) as the manual directory, e.g.
    `python -m tasks.tfds_builder --data_dir <root>`.
    """
    # Configs are made per task folder at run time (EcomInstruct(config=EcomInstructConfig)).
    BUILDER_CONFIGS: list = []

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9's own lookup needs the optional `importlib_resources` package for any
        # builder outside tensorflow_datasets; the answer is simply this file.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="EcomInstruct prompts and answers (EcomGPT, arXiv:2308.06966).",
            homepage="https://github.com/Alibaba-NLP/EcomGPT",
            features=tfds.features.FeaturesDict(
                {
                    "inputs": tfds.features.Text(),
                    "targets": tfds.features.Text(),
                    "task": tfds.features.Text(),
                    "index": tfds.features.Scalar(dtype=tf.int64),
                }
            ),
            supervised_keys=None,
            # Not `disable_shuffling`: training reads with shuffle_files=True, which TFDS
            # refuses for an ordered dataset. Examples carry `index` for joins instead.
        )

    def _split_generators(self, dl_manager):
        task = self.builder_config.task
        # Not a split without examples (valid: a task without examples yet): TFDS cannot
        # finalize an empty one, and the whole preparation would stop there.
        return {s: self._generate_examples(task, s) for s in SPLITS if task.has_examples(s)}

    def _generate_examples(self, task: reader.TaskInfo, split: str):
        for ins in instructions.task_instructions(task, split, seed=self.builder_config.seed):
            # TFDS orders examples by a hash of the key: with the bare index, every task of
            # the same size would come in the same permutation.
            yield (
                f"{ins.task}:{ins.index}",
                {
                    "inputs": ins.prompt,
                    "targets": ins.answer,
                    "task": ins.task,
                    "index": ins.index,
                },
            )


def _prepared_info(folder: pathlib.Path) -> dict | None:
    """The dataset_info.json of a `prepared_dir` (None: not prepared)."""
    path = folder / "dataset_info.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def prepare(
    data_dir: str | pathlib.Path,
    tfds_data_dir: str | pathlib.Path | None = None,
    seed: int = 0,
    folders: Sequence[str] | None = None,
    force: bool = False,
) -> list[pathlib.Path]:
    """Prepare the TFDS files of every (or the named) task folder under `data_dir`.

    A current copy is kept as it is unless `force` (TFDS would reuse a copy whose files
    were damaged or removed since: its recorded fingerprint still matches).

    Returns:
      the prepared ``<tfds_data_dir>/ecom_instruct/<config>/<version>`` directories.
    """
    tfds_data_dir = pathlib.Path(tfds_data_dir or default_tfds_data_dir(data_dir))
    tasks = reader.discover_tasks(data_dir, allow_empty=False)
    missing = sorted(set(folders or ()) - set(tasks))
    if missing:
        have = ", ".join(tasks) or "none"
        raise reader.DataError(
            f"no such task folder(s): {', '.join(missing)} (task folders here: {have})", data_dir
        )
    out = []
    for name in folders or list(tasks):
        task = tasks[name]
        builder = EcomInstruct(
            config=EcomInstructConfig(task=task, seed=seed), data_dir=str(tfds_data_dir)
        )
        # TFDS reuses a prepared version folder as it is: a stale copy (JSON files or
        # prompt code changed since) would stay stale, and be skipped by every run.
        info = _prepared_info(prepared_dir(tfds_data_dir, name, seed))
        # The config's description is the fingerprint (hashing the data again costs ~1 s/GB).
        stale = (
            info is not None and info.get("configDescription") != builder.builder_config.description
        )
        mode = tfds.download.GenerateMode
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=str(data_dir),
                download_mode=(
                    mode.FORCE_REDOWNLOAD if stale or force else mode.REUSE_DATASET_IF_EXISTS
                ),
            )
        )
        out.append(prepared_dir(tfds_data_dir, name, seed))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status (2 with one ``error:`` line on bad data)."""
    parser = argparse.ArgumentParser(
        prog="python -m tasks.tfds_builder", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--data_dir", required=True, help="EcomInstruct root")
    parser.add_argument(
        "--tfds_data_dir",
        default=None,
        help="default: <data_dir>/_tfds (where training looks; else set its TFDS_DATA_DIR)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="CLS candidate sampling seed (training reads seed 0's copies)",
    )
    parser.add_argument(
        "--task",
        action="append",
        help="task folder name, e.g. EN-ABSA-CLS-review_topic_category, or its SeqIO name "
        "ecom:EN:ABSA:CLS:review_topic_category (repeatable); default all",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="prepare again even where a current copy exists (its files damaged or removed)",
    )
    args = parser.parse_args(argv)
    try:
        folders = [reader.as_folder_name(t) for t in args.task] if args.task else None
        prepared = prepare(args.data_dir, args.tfds_data_dir, args.seed, folders, args.force)
    except (reader.DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in prepared:
        print(path)
    return 0


if __name__ == "__main__":
    # Run the package's copy of this module (imported by `tasks`), not the __main__ one, so
    # the prepared dataset_info.json records the importable module name.
    from tasks import tfds_builder

    sys.exit(tfds_builder.main())
