"""One SeqIO task per EcomInstruct task folder.

Name mapping (reversible): ``seqio_task_name("EN-ABSA-CLS-review_topic_category") ==
"ecom:EN:ABSA:CLS:review_topic_category"`` and ``folder_name`` undoes it. Folder names with
``":"`` are rejected by the reader, so the mapping never collides.

Each task's source yields, per split present in the folder (``train`` if ``train.json``
exists, ``test`` if ``test.json`` exists), one example per line of that file:

* ``inputs``: str, the prompt of ``ecominstruct.instructions`` (seeded CLS candidates);
* ``targets``: str, the gold answer;
* ``task``: str, the folder name; ``index``: int64, the example's position in its file
  (so evaluation can join predictions back to the JSON example for scoring).

Preprocessors: ``seqio.preprocessors.tokenize`` (keeps ``inputs_pretokenized`` /
``targets_pretokenized``), :func:`keep_prompt_tail` (long prompts lose their start, as in
evaluation) and ``seqio.preprocessors.append_eos_after_trim``. Output features:
``inputs`` without EOS, ``targets`` with EOS.

The source is the prepared TFDS copy (``tasks/tfds_builder.py``) when one exists under
``tfds_data_dir`` and is current, else the JSON Lines files (read when the dataset is built,
counted lazily for mixing rates, so registering the full release stays cheap).
"""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Mapping

import numpy as np
import seqio
import tensorflow as tf

from ecomgpt_jax import vocabularies
from ecomgpt_jax.ecominstruct import instructions, reader
from tasks import tfds_builder

# The folder <-> SeqIO name mapping lives with the other task-name rules in `reader`
# (pure Python: scoring and the CLIs use it without SeqIO); re-exported for `tasks`.
TASK_PREFIX = reader.SEQIO_PREFIX
SPLITS = reader.SPLITS
seqio_task_name = reader.seqio_task_name
folder_name = reader.folder_name


def keep_prompt_tail(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int] | None = None,
    output_features: Mapping[str, seqio.Feature] | None = None,
) -> tf.data.Dataset:
    """Cut each tokenized prompt from the left to ``sequence_length["inputs"]`` tokens,
    and start it with the vocabulary's prompt prefix (Llama's BOS; usually none).

    SeqIO's own trim keeps the first tokens, which would drop the end of a long prompt:
    the product text and the "### Response:" line the answer follows. Evaluation cuts
    prompts from the left (contract §4), so training does too; the prefix stays first, as
    in evaluation (`evaluation.prompt_ids`). Without lengths, nothing is cut.
    """
    length = (sequence_length or {}).get("inputs")
    vocabulary = output_features["inputs"].vocabulary if output_features else None
    prefix = vocabularies.prompt_prefix(vocabulary)  # () without one
    if not length and not prefix:
        return dataset
    keep = max(int(length) - len(prefix), 0) if length else None

    def trim(ex):
        ids = ex["inputs"]
        if keep is not None:
            ids = ids[tf.maximum(tf.size(ids) - keep, 0) :]
        if prefix:
            ids = tf.concat([tf.constant(prefix, ids.dtype), ids], axis=0)
        return {**ex, "inputs": ids}

    return dataset.map(trim, num_parallel_calls=tf.data.AUTOTUNE)


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
    """inputs (prompt, no EOS) and targets (answer + EOS), both with `vocabulary`."""
    return {
        "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=False),
        "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
    }


def count_examples(path: pathlib.Path) -> int:
    """Number of examples in a JSON Lines file, counted as the reader does (no parsing)."""
    return sum(reader.example_lines(path))


def instruction_rows(task: reader.TaskInfo, split: str, seed: int) -> dict[str, np.ndarray]:
    """Columns inputs/targets/task (object arrays of str) and index (int64) of one split."""
    rows = instructions.task_instructions(task, split, seed=seed)
    return {
        "inputs": np.array([r.prompt for r in rows], dtype=object),
        "targets": np.array([r.answer for r in rows], dtype=object),
        "task": np.array([r.task for r in rows], dtype=object),
        "index": np.array([r.index for r in rows], dtype=np.int64),
    }


def task_seed(seed: int, folder: str) -> int:
    """`seed` mixed with a stable hash of the task's folder name, within int32."""
    digest = hashlib.sha256(f"{seed}:{folder}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class JsonInstructionSource(seqio.FunctionDataSource):
    """The instructions of one task folder, built from its JSON Lines files.

    Reading (and any DataError) happens when a split's dataset is built; example counts
    for mixing rates are taken lazily by counting non-blank lines.
    """

    def __init__(self, task: reader.TaskInfo, seed: int = 0):
        self._task = task
        self._seed = seed
        self._counts: dict[str, int] = {}
        super().__init__(
            dataset_fn=self._dataset_fn, splits=[s for s in SPLITS if task.has_split(s)]
        )

    @property
    def task(self) -> reader.TaskInfo:
        return self._task

    def _dataset_fn(self, split: str, shuffle_files: bool, seed: int | None = None):
        if split not in self.splits:
            raise reader.DataError(
                f"task {self._task.name!r} has no {split!r} split (has: {list(self.splits)})",
                self._task.path,
            )
        columns = instruction_rows(self._task, split, self._seed)
        ds = tf.data.Dataset.from_tensor_slices(
            {
                key: tf.constant(value, dtype=tf.int64 if key == "index" else tf.string)
                for key, value in columns.items()
            }
        )
        if shuffle_files and len(columns["index"]) > 1:
            # The split is in memory anyway: a full shuffle, unlike seqio's bounded buffer.
            # Seeded per task: with the run's seed alone, every task of the same size
            # would come in the same permutation (EN and ZH twins of one dataset would
            # put the same source row in the same batches). Alike on every host.
            if seed is not None:
                seed = task_seed(seed, self._task.name)
            ds = ds.shuffle(len(columns["index"]), seed=seed, reshuffle_each_iteration=True)
        return ds

    def get_dataset(
        self,
        split: str = "train",
        shuffle: bool = True,
        seed: int | None = None,
        shard_info: seqio.ShardInfo | None = None,
        *,
        sequence_length=None,
        use_cached: bool = False,
        num_epochs: int | None = 1,
    ) -> tf.data.Dataset:
        """The split's examples (all of them, or shard `shard_info` of them).

        Overrides FunctionDataSource, which warns on every shuffled call that an uncached
        source shuffles poorly; this one shuffles the whole split (see `_dataset_fn`).
        """
        del sequence_length, use_cached, num_epochs  # unused by data sources
        ds = self._dataset_fn(split=split, shuffle_files=shuffle, seed=seed)
        if shard_info is not None and shard_info.num_shards > 1:
            ds = ds.shard(shard_info.num_shards, shard_info.index)
        return ds

    def signature(self, split: str) -> str:
        """For `input_pipeline.sources_digest`: the read order (per-task seeds since
        2026-11-28) and the split file's size, which an edit that adds, removes or changes
        examples nearly always changes (a stat, not a read)."""
        path = self._task.split_path(split)
        return f"task-seeded/{path.stat().st_size if path.is_file() else '-'}"

    def num_input_examples(self, split: str) -> int:
        if split not in self._counts:
            self._counts[split] = count_examples(self._task.split_path(split))
        return self._counts[split]


def make_source(
    task: reader.TaskInfo, seed: int = 0, tfds_data_dir: str | pathlib.Path | None = None
) -> seqio.DataSource:
    """The prepared TFDS copy of `task` when current, else its JSON files."""
    prepared = tfds_builder.prepared_splits(task, tfds_data_dir, seed) if tfds_data_dir else ()
    # (The builder prepares no split without examples: TFDS cannot write an empty one.)
    json_splits = [s for s in SPLITS if task.has_examples(s)]
    if prepared and sorted(prepared) == sorted(json_splits):
        return seqio.TfdsDataSource(
            tfds_data_dir=str(tfds_builder.prepared_dir(tfds_data_dir, task.name, seed)),
            splits=list(prepared),
            read_only=True,  # never download or generate from a training job
        )
    return JsonInstructionSource(task, seed)


def register_task(
    task: reader.TaskInfo,
    vocabulary: seqio.Vocabulary,
    seed: int = 0,
    tfds_data_dir: str | pathlib.Path | None = None,
) -> seqio.Task:
    """Registers (replacing any task of the same name) and returns the SeqIO task."""
    name = seqio_task_name(task.name)
    seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(
        name,
        source=make_source(task, seed, tfds_data_dir),
        preprocessors=[
            seqio.preprocessors.tokenize,
            keep_prompt_tail,
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features=output_features(vocabulary),
        metric_fns=[],
    )


def register_tasks(
    tasks: Mapping[str, reader.TaskInfo],
    vocabulary: seqio.Vocabulary,
    seed: int = 0,
    tfds_data_dir: str | pathlib.Path | None = None,
) -> list[str]:
    """Registers every task of `tasks` (folder -> TaskInfo); returns the SeqIO names, sorted."""
    return sorted(
        register_task(task, vocabulary, seed, tfds_data_dir).name for task in tasks.values()
    )
