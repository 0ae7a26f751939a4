"""SeqIO mixture -> packed, sharded global batches, with a resumable position.

Each example (`inputs` = prompt, `targets` = answer) becomes one segment of a
packed row of length `inputs + targets` (seqio.PrefixLMFeatureConverter with
pack=True, loss on the answer tokens only; `ZeroSafePrefixLM` keeps a real token
0). Rows are then batched to a *global* batch of `global_batch_size` rows and laid
over the mesh's batch axes with `jax.make_array_from_process_local_data`.

No artificial first token. SeqIO's converter feeds `0, x1, ..., xn` to predict
`x1, ..., xn`; we instead feed each example's own tokens `x1, ..., xn` at positions
0..n-1 and predict `x2, ..., xn, -` (`next_token_layout`). The answer tokens are
predicted exactly as before, and the context matches decoding, which starts from
the prompt's own tokens: a BOS only where the tokenizer adds one (Llama's), none for
BLOOM or Qwen2 (BLOOMZ's id 0 is `<unk>`, not a start token).

Sharding over hosts. The data is split into `num_shards` logical shards
(`seqio.ShardInfo(index, num_shards)`, default one per process). Shard `s`
always fills rows `[s * B / S, (s + 1) * B / S)` of every global batch, and each
process reads exactly the shards whose rows its devices hold. The global batch
is therefore the same whatever the number of processes (a fixed `num_shards`
makes a 2-host run see the same batches as a 1-host run).

Resume. The pipeline is deterministic given (mixture, lengths, seed, batch
size, num_shards): shuffling and mixture sampling are seeded, packing is
deterministic. The iterator position is just the number of global batches
consumed; on restore the pipeline is rebuilt and that many batches are skipped
(`tf.data.Dataset.skip`). We chose this over serialising the tf.data iterator
because it is tiny, host-count independent and readable in the checkpoint's
JSON; the cost is re-reading, tokenizing and packing the skipped examples once at
restart: about 9,000 examples/s on 2 CPU cores with the bundled SentencePiece model
(the sample, 2026-11-27), so minutes per restart late in a long run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator

import jax
import numpy as np
import seqio
import tensorflow as tf

from ecomgpt_jax import partitioning
from ecomgpt_jax.data_config import DataConfig, positive_int
from ecomgpt_jax.ecominstruct.reader import DataError

MODEL_FEATURES = (
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
    "decoder_segment_ids",
    "decoder_positions",
)


def _rows_of_process(sharding, global_shape) -> np.ndarray:
    """Sorted global row indices held by this process's devices."""
    rows = set()
    for index in sharding.addressable_devices_indices_map(global_shape).values():
        rows.update(range(*index[0].indices(global_shape[0])))
    return np.asarray(sorted(rows), dtype=np.int64)


def next_token_layout(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """SeqIO's shifted layout -> inputs = the example tokens, targets = the next token.

    batch: [rows, length] arrays of MODEL_FEATURES (packed) or without segment ids and
    positions (unpacked: padding is the trailing 0 targets). Returns the same keys;
    the last token of each example gets target 0 and weight 0.
    """
    tokens = batch["decoder_target_tokens"]
    if "decoder_segment_ids" in batch:
        seg = batch["decoder_segment_ids"]
        positions = batch["decoder_positions"]
    else:
        seg = (np.cumsum(tokens[:, ::-1] != 0, axis=1)[:, ::-1] > 0).astype(np.int32)
        positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
    weights = batch["decoder_loss_weights"]
    # next_in_example[r, t]: token t+1 exists and belongs to the same example as t.
    next_in_example = np.zeros(tokens.shape, bool)
    next_in_example[:, :-1] = (seg[:, 1:] == seg[:, :-1]) & (seg[:, :-1] > 0)
    targets = np.zeros_like(tokens)
    targets[:, :-1] = np.where(next_in_example[:, :-1], tokens[:, 1:], 0)
    new_weights = np.zeros_like(weights)
    new_weights[:, :-1] = np.where(next_in_example[:, :-1], weights[:, 1:], 0)
    return {
        "decoder_input_tokens": tokens,
        "decoder_target_tokens": targets,
        "decoder_loss_weights": new_weights,
        "decoder_segment_ids": np.asarray(seg, np.int32),
        "decoder_positions": np.asarray(positions, np.int32),
    }


# Token id 0 while SeqIO converts: its packer cuts an example at its count of non-zero
# tokens and gives zeros segment 0 (padding). Tokenizers with a real token 0 (Qwen2's
# and Llama 3's "!") would lose the example's last tokens and split its segment.
ZERO_ALIAS = -1


class ZeroSafePrefixLM(seqio.PrefixLMFeatureConverter):
    """seqio.PrefixLMFeatureConverter for vocabularies whose id 0 is a real token.

    Token 0 travels through trimming, packing and the masks as ZERO_ALIAS and is 0
    again in the output (SeqIO's own converter swaps `inputs_width` zeros the same
    way); padding stays 0, told apart by segment id 0 and loss weight 0.
    """

    TOKEN_FEATURES = ("decoder_input_tokens", "decoder_target_tokens")

    def _convert_features(self, ds, task_feature_lengths):
        def hide(ex):
            return {
                k: tf.where(tf.equal(v, 0), ZERO_ALIAS, v) if k in ("inputs", "targets") else v
                for k, v in ex.items()
            }

        def restore(ex):
            return {
                k: tf.where(tf.equal(v, ZERO_ALIAS), 0, v) if k in self.TOKEN_FEATURES else v
                for k, v in ex.items()
            }

        ds = super()._convert_features(ds.map(hide), task_feature_lengths)
        return ds.map(restore)


def _shard_dataset(
    config: DataConfig, shard: seqio.ShardInfo | None, num_epochs: int | None = None
) -> tf.data.Dataset:
    """The converted (packed) examples of one shard (None: all), repeated unless
    `num_epochs` is given."""
    converter = ZeroSafePrefixLM(pack=config.pack, loss_on_targets_only=True)
    lengths = dict(config.task_feature_lengths)
    try:
        # seqio.get_dataset, without SeqIO's in-memory cache of small tasks: it would keep
        # the first epoch's order of a source that shuffles its whole split every epoch
        # (tasks/ecom_instruct.py), leaving only SeqIO's 1000-example buffer to vary it.
        # The JSON source holds its split in memory anyway.
        provider = seqio.get_mixture_or_task(config.mixture_or_task_name)
        read = dict(
            sequence_length=lengths,
            split=config.split,
            use_cached=False,
            shuffle=config.shuffle,
            seed=config.seed,
            shard_info=shard,
            num_epochs=num_epochs,
            try_in_mem_cache=False,
        )
        if isinstance(provider, seqio.Mixture):
            ds = _mixed(provider, read, _pick_seed(config.seed, shard))
        else:
            ds = provider.get_dataset(**read)
        ds = converter(ds, task_feature_lengths=lengths)
    except ValueError as e:
        raise DataError(f"mixture {config.mixture_or_task_name!r}: {_first_line(e)}") from None
    return ds


# Shard i > 0 picks its mixture's tasks with seed + i * _PICK_SEED_STRIDE (shard 0, and a
# single host, with the seed itself).
_PICK_SEED_STRIDE = 1_000_003


def _pick_seed(seed: int, shard: seqio.ShardInfo | None) -> int:
    return seed if shard is None else seed + _PICK_SEED_STRIDE * shard.index


def _mixed(mixture: seqio.Mixture, read: dict, pick_seed: int) -> tf.data.Dataset:
    """`mixture.get_dataset(**read)`, except for how tasks are picked.

    SeqIO seeds the picks with the tasks' shuffle seed, the same in every shard: every
    host would then pick the same task at each draw, so a global batch held one task
    sequence per host, copied, and how well tasks mix would depend on the host count.
    Here each shard picks with its own seed (`pick_seed`); the tasks' shuffles keep the
    common seed, which keeps the shards of a task disjoint. A task with no example in
    this shard (fewer examples than shards) is left out of its picks, where SeqIO's
    sampling would end the whole stream at its first pick, stopping training there.
    """
    tasks = [task for task in mixture.tasks if read["split"] in task.splits]
    if not tasks:
        raise ValueError(f"No datasets have a {read['split']!r} split")
    keys = set(mixture.output_features)
    datasets = [mixture.get_task_dataset(task, keys, **read) for task in tasks]
    rates = [mixture.get_rate(task) for task in tasks]
    return tf.data.Dataset.sample_from_datasets(
        datasets, weights=rates, seed=pick_seed, stop_on_empty_dataset=False
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _source_kind(source, split: str) -> str:
    """The source's class, and its `signature(split)` where it has one (the JSON source:
    its read order and file size, so that a resume after either changed sees it)."""
    kind = type(source).__name__
    return f"{kind}/{source.signature(split)}" if hasattr(source, "signature") else kind


def sources_digest(config: DataConfig) -> str:
    """16 hex digits naming what `config`'s mixture reads: its tasks, their rates and each
    one's data source (the JSON files, with the split file's size, or a prepared TFDS
    copy, which reads in another order), and whether it shuffles. Kept in DataPosition:
    under the same mixture name a resume may find other tasks (another data root), edited
    data, a copy prepared since, or one gone stale (then the JSON files are read), and
    `batches_consumed` then counts another stream. (Registered tasks needed.)"""
    provider = seqio.get_mixture_or_task(config.mixture_or_task_name)
    if isinstance(provider, seqio.Mixture):
        members = [(task, provider.get_rate(task)) for task in provider.tasks]
    else:
        members = [(provider, 1.0)]
    split = config.split
    rows = sorted((t.name, round(float(r), 9), _source_kind(t.source, split)) for t, r in members)
    text = json.dumps([rows, bool(config.shuffle)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class InputIterator:
    """Iterator of global batches: dict name -> jax.Array [global_batch, length].

    `position` is the number of global batches this iterator has produced
    (plus the `start` it was created at): store it, and pass it back as `start`.
    """

    def __init__(self, config: DataConfig, mesh: jax.sharding.Mesh, start: int = 0):
        self.config = config
        self.position = int(start)
        b, length = int(config.global_batch_size), config.sequence_length
        num_shards = int(config.num_shards or jax.process_count())
        if b % num_shards:
            raise DataError(
                f"BATCH_SIZE {b} is not divisible by the {num_shards} data shards "
                "(one per process unless DataConfig.num_shards is set)"
            )
        self.sharding = partitioning.data_sharding(mesh)
        self.global_shape = (b, length)
        self._rows = _rows_of_process(self.sharding, self.global_shape)
        rows_per_shard = b // num_shards
        shard_ids = sorted({int(r) // rows_per_shard for r in self._rows})
        self._row_offset = shard_ids[0] * rows_per_shard
        # Rows of the loaded shards, relative to the first loaded shard.
        self._take = self._rows - self._row_offset
        if shard_ids != list(range(shard_ids[0], shard_ids[-1] + 1)):
            raise DataError(
                f"process {jax.process_index()} holds rows of non-adjacent data shards "
                f"{shard_ids}; choose a num_shards that matches the mesh's batch layout"
            )
        datasets = []
        for s in shard_ids:
            ds = _shard_dataset(config, seqio.ShardInfo(index=s, num_shards=num_shards))
            ds = ds.map(lambda ex: {k: ex[k] for k in MODEL_FEATURES if k in ex})
            ds = ds.batch(rows_per_shard, drop_remainder=True)
            datasets.append(ds.skip(self.position))
        ds = tf.data.Dataset.zip(tuple(datasets))
        ds = ds.map(lambda *parts: {k: tf.concat([p[k] for p in parts], 0) for k in parts[0]})
        self._it = iter(ds.prefetch(2).as_numpy_iterator())

    def local_batch(self) -> dict[str, np.ndarray]:
        """The next batch's rows held by this process, as numpy (advances the position):
        {feature: [local rows, L]} for each of MODEL_FEATURES."""
        try:
            batch = next(self._it)
        except StopIteration:
            raise DataError(
                f"mixture {self.config.mixture_or_task_name!r} split {self.config.split!r} "
                "yields no examples (is the data directory right? does every task have "
                "this split?)"
            ) from None
        except tf.errors.OpError as e:  # e.g. DataLossError: a truncated TFRecord
            raise DataError(
                f"reading mixture {self.config.mixture_or_task_name!r} failed after "
                f"{self.position} batches: {type(e).__name__}: {_first_line(e)} (a prepared "
                "TFDS file damaged or removed? prepare it again, replacing it: python -m "
                "tasks.tfds_builder --force --data_dir DATA_DIR [--tfds_data_dir TFDS_DATA_DIR])"
            ) from None
        self.position += 1
        return next_token_layout({k: v[self._take] for k, v in batch.items()})

    def __iter__(self) -> Iterator[dict[str, jax.Array]]:
        return self

    def __next__(self) -> dict[str, jax.Array]:
        return _global_batch(self.local_batch(), self.sharding, self.global_shape)


def _global_batch(local, sharding, global_shape) -> dict[str, jax.Array]:
    """This process's rows (numpy) -> global arrays [global_batch, length] over the mesh."""
    return {
        k: jax.make_array_from_process_local_data(sharding, v, global_shape + v.shape[2:])
        for k, v in local.items()
    }


def _task_names(name: str) -> list[str]:
    """The SeqIO tasks of a mixture (sorted), or [name] for a task."""
    provider = seqio.get_mixture_or_task(name)
    if isinstance(provider, seqio.Mixture):
        return sorted(task.name for task in provider.tasks)
    return [provider.name]


class EvalBatches:
    """Fixed batches for the teacher-forced loss on held-out data, task by task.

    Each task of `config.mixture_or_task_name` (its `config.split`) is read once in a
    fixed order (no shuffling, one epoch: file order from the JSON files, TFDS's own
    fixed order from prepared shards), converted and packed as for training, and cut
    into global batches of `global_batch_size` rows, the last one padded with empty rows
    (loss weight 0). The first `max_batches` batches of each task are kept as numpy and
    replayed by every evaluation, so that successive losses are comparable.

    Every process reads the whole task and keeps the rows its devices hold: processes
    agree on the number of batches whatever the task's size, as jitted collectives need.
    Iterating yields (task name, batch: dict name -> jax.Array [global_batch, length]).
    """

    def __init__(self, config: DataConfig, mesh: jax.sharding.Mesh, max_batches: int):
        if not positive_int(max_batches):
            raise DataError(f"EVAL_LOSS_BATCHES must be an integer >= 1, got {max_batches!r}")
        b = int(config.global_batch_size)
        self.sharding = partitioning.data_sharding(mesh)
        self.global_shape = (b, config.sequence_length)
        rows = _rows_of_process(self.sharding, self.global_shape)
        try:
            names = _task_names(config.mixture_or_task_name)
        except ValueError as e:
            raise DataError(f"mixture {config.mixture_or_task_name!r}: {_first_line(e)}") from None
        self.tasks: dict[str, list[dict[str, np.ndarray]]] = {}
        for name in names:
            task_config = dataclasses.replace(config, mixture_or_task_name=name, shuffle=False)
            ds = _shard_dataset(task_config, None, num_epochs=1)
            ds = ds.map(lambda ex: {k: ex[k] for k in MODEL_FEATURES if k in ex})
            batches = ds.batch(b).take(int(max_batches)).as_numpy_iterator()
            self.tasks[name] = [
                next_token_layout({k: _pad_rows(v, b)[rows] for k, v in batch.items()})
                for batch in batches
            ]
            if not self.tasks[name]:
                raise DataError(f"task {name!r} split {config.split!r} yields no examples")

    def __iter__(self) -> Iterator[tuple[str, dict[str, jax.Array]]]:
        for name, batches in self.tasks.items():
            for local in batches:
                yield name, _global_batch(local, self.sharding, self.global_shape)


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """[n, ...] -> [rows, ...] with zero rows appended (an empty row has weight 0)."""
    return np.concatenate([x, np.zeros((rows - len(x),) + x.shape[1:], x.dtype)])
