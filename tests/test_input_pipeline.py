"""Input pipeline: packed rows, answer-only loss weights, shards, determinism, resume."""

import dataclasses

import jax
import numpy as np
import pytest
import seqio

import tasks
from ecomgpt_jax import input_pipeline as ip
from ecomgpt_jax import partitioning as P
from ecomgpt_jax import vocabularies
from ecomgpt_jax.ecominstruct import instructions, reader

TASK_FOLDER = "EN-Shop_Product-NER-product_entity"
TASK = tasks.seqio_task_name(TASK_FOLDER)
# Rows of 192 tokens hold two ~75-token NER examples (prompt <= 62, answer <= 17 + EOS).
LENGTHS = {"inputs": 160, "targets": 32}


def config(**kw) -> ip.DataConfig:
    base = dict(mixture_or_task_name=TASK, task_feature_lengths=LENGTHS, global_batch_size=8)
    base.update(kw)
    return ip.DataConfig(**base)


def one_device_mesh():
    return P.make_mesh(P.MeshConfig((1, 1, 1)), jax.devices()[:1])


def test_segments_are_prompt_then_answer_with_weights_on_answer_only():
    vocab = vocabularies.make_vocabulary()
    info = reader.discover_tasks(reader.default_data_dir())[TASK_FOLDER]
    expected = {
        (tuple(vocab.encode(i.prompt)), tuple(vocab.encode(i.answer)) + (vocab.eos_id,))
        for i in instructions.task_instructions(info, "train")
    }
    batch = ip.InputIterator(config(), one_device_mesh()).local_batch()
    assert batch["decoder_target_tokens"].shape == (8, 192)
    seen = 0
    for row in range(8):
        seg = batch["decoder_segment_ids"][row]
        for s in range(1, seg.max() + 1):
            where = seg == s
            inputs = batch["decoder_input_tokens"][row][where]
            targets = batch["decoder_target_tokens"][row][where]
            weights = batch["decoder_loss_weights"][row][where]
            positions = batch["decoder_positions"][row][where]
            # The model reads the example itself (prompt, answer, EOS) from position 0 ...
            answer = tuple(targets[weights == 1])
            prompt = tuple(inputs[: len(inputs) - len(answer)])
            assert (prompt, answer) in expected
            assert list(positions) == list(range(len(inputs)))
            # ... and predicts the next token; the loss covers the answer and its EOS only.
            assert list(targets) == [*inputs[1:], 0]
            assert list(weights) == [0] * (len(prompt) - 1) + [1] * len(answer) + [0]
            seen += 1
        # Padding carries no loss.
        assert not batch["decoder_loss_weights"][row][seg == 0].any()
    assert seen >= 16  # two examples per packed row


def test_next_token_layout_packed_and_unpacked():
    # Two packed examples [7 8 | 5 1] and [9 | 4 1] (| = prompt/answer), then padding, in
    # SeqIO's shifted layout.
    seqio_batch = {
        "decoder_target_tokens": np.array([[7, 8, 5, 1, 9, 4, 1, 0]]),
        "decoder_input_tokens": np.array([[0, 7, 8, 5, 0, 9, 4, 0]]),
        "decoder_loss_weights": np.array([[0, 0, 1, 1, 0, 1, 1, 0]]),
        "decoder_segment_ids": np.array([[1, 1, 1, 1, 2, 2, 2, 0]]),
        "decoder_positions": np.array([[0, 1, 2, 3, 0, 1, 2, 0]]),
    }
    out = ip.next_token_layout(seqio_batch)
    np.testing.assert_array_equal(out["decoder_input_tokens"], [[7, 8, 5, 1, 9, 4, 1, 0]])
    np.testing.assert_array_equal(out["decoder_target_tokens"], [[8, 5, 1, 0, 4, 1, 0, 0]])
    np.testing.assert_array_equal(out["decoder_loss_weights"], [[0, 1, 1, 0, 1, 1, 0, 0]])
    np.testing.assert_array_equal(out["decoder_segment_ids"], seqio_batch["decoder_segment_ids"])
    np.testing.assert_array_equal(out["decoder_positions"], seqio_batch["decoder_positions"])
    unpacked = ip.next_token_layout(
        {k: seqio_batch[k][:, :4] for k in ("decoder_target_tokens", "decoder_loss_weights")}
        | {"decoder_input_tokens": seqio_batch["decoder_input_tokens"][:, :4]}
    )
    np.testing.assert_array_equal(unpacked["decoder_target_tokens"], [[8, 5, 1, 0]])
    np.testing.assert_array_equal(unpacked["decoder_segment_ids"], [[1, 1, 1, 1]])
    np.testing.assert_array_equal(unpacked["decoder_positions"], [[0, 1, 2, 3]])


def test_deterministic_and_resume_skips_consumed_batches():
    mesh = one_device_mesh()
    it = ip.InputIterator(config(), mesh)
    first = [it.local_batch() for _ in range(4)]
    assert it.position == 4
    again = ip.InputIterator(config(), mesh).local_batch()
    np.testing.assert_array_equal(again["decoder_target_tokens"], first[0]["decoder_target_tokens"])
    resumed = ip.InputIterator(config(), mesh, start=2)
    assert resumed.position == 2
    for want in first[2:]:
        got = resumed.local_batch()
        for key in ip.MODEL_FEATURES:
            np.testing.assert_array_equal(got[key], want[key])
    assert resumed.position == 4
    other_seed = ip.InputIterator(config(seed=1), mesh).local_batch()
    assert not np.array_equal(
        other_seed["decoder_target_tokens"], first[0]["decoder_target_tokens"]
    )


@pytest.mark.parametrize("pack", [True, False])
def test_token_id_zero_survives_conversion(pack):
    """Qwen2's and Llama 3's id 0 is "!". SeqIO's packer cuts such an example short (it
    counts non-zero tokens) and splits its segment, and its loss weights skip answer
    zeros; ZeroSafePrefixLM keeps every token, segment and weight."""
    import tensorflow as tf

    examples = [([3, 0, 4], [7, 0, 8, 1]), ([5], [0, 1])]  # (prompt, answer + EOS 1)
    ds = tf.data.Dataset.from_generator(
        lambda: ({"inputs": i, "targets": t} for i, t in examples),
        output_signature={
            "inputs": tf.TensorSpec([None], tf.int32),
            "targets": tf.TensorSpec([None], tf.int32),
        },
    )
    lengths = {"inputs": 4, "targets": 6}  # rows of 10: both examples fit in one

    def rows(converter):
        out = converter(ds, lengths).batch(2).as_numpy_iterator()
        batch = next(out)
        return ip.next_token_layout({k: v for k, v in batch.items() if k in ip.MODEL_FEATURES})

    got = rows(ip.ZeroSafePrefixLM(pack=pack, loss_on_targets_only=True))
    if pack:
        want = {
            "decoder_input_tokens": [[3, 0, 4, 7, 0, 8, 1, 5, 0, 1]],
            "decoder_target_tokens": [[0, 4, 7, 0, 8, 1, 0, 0, 1, 0]],
            "decoder_loss_weights": [[0, 0, 1, 1, 1, 1, 0, 1, 1, 0]],
            "decoder_segment_ids": [[1, 1, 1, 1, 1, 1, 1, 2, 2, 2]],
            "decoder_positions": [[0, 1, 2, 3, 4, 5, 6, 0, 1, 2]],
        }
    else:
        want = {
            "decoder_input_tokens": [[3, 0, 4, 7, 0, 8, 1, 0, 0, 0], [5, 0, 1] + [0] * 7],
            "decoder_target_tokens": [[0, 4, 7, 0, 8, 1] + [0] * 4, [0, 1] + [0] * 8],
            "decoder_loss_weights": [[0, 0, 1, 1, 1, 1] + [0] * 4, [1, 1] + [0] * 8],
            "decoder_segment_ids": [[1] * 7 + [0] * 3, [1] * 3 + [0] * 7],
            "decoder_positions": [list(range(10))] * 2,
        }
    assert {k: v.tolist() for k, v in got.items()} == want
    plain = rows(seqio.PrefixLMFeatureConverter(pack=pack, loss_on_targets_only=True))
    assert plain["decoder_loss_weights"].tolist() != want["decoder_loss_weights"]


def test_every_epoch_is_a_new_order(monkeypatch):
    """The JSON source shuffles its whole split each epoch; SeqIO's in-memory cache of
    small tasks would replay epoch 1's order (only its 1000-example buffer varying it,
    here 1 to show the source's own order)."""
    task = seqio.get_mixture_or_task(TASK)
    monkeypatch.setattr(task, "_shuffle_buffer_size", 1)
    n = task.source.num_input_examples("train")
    cfg = config(pack=False, task_feature_lengths={"inputs": 160, "targets": 32})
    rows = [
        tuple(ex["decoder_target_tokens"])
        for ex in ip._shard_dataset(cfg, None, num_epochs=2).as_numpy_iterator()
    ]
    assert len(rows) == 2 * n and sorted(rows[:n]) == sorted(rows[n:])
    assert rows[:n] != rows[n:]


def test_logical_shards_fill_fixed_row_blocks():
    """Shard s of S fills rows [s*B/S, (s+1)*B/S) whatever the process count, so a
    2-host run sees the same global batches as a 1-host run with num_shards=2."""
    batch = ip.InputIterator(config(num_shards=2), one_device_mesh()).local_batch()
    task = seqio.get_mixture_or_task(TASK)
    converter = seqio.PrefixLMFeatureConverter(pack=True)

    def shard(s, **kw):
        return task.get_dataset(
            LENGTHS,
            shuffle=True,
            seed=0,
            shard_info=seqio.ShardInfo(s, 2),
            try_in_mem_cache=False,
            **kw,
        )

    for s in range(2):
        ref = converter(shard(s, num_epochs=None), LENGTHS)
        ref = ip.next_token_layout(next(iter(ref.batch(4).as_numpy_iterator())))
        for key in ip.MODEL_FEATURES:
            np.testing.assert_array_equal(batch[key][4 * s : 4 * s + 4], ref[key])
    # The shards split the examples: disjoint, and together the whole split.
    seen = [[int(ex["index"]) for ex in shard(s, num_epochs=1).as_numpy_iterator()] for s in (0, 1)]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(task.source.num_input_examples("train")))


def test_global_batch_is_sharded_over_data_and_fsdp():
    mesh = P.make_mesh(P.MeshConfig((2, 2, 2)))
    it = ip.InputIterator(config(), mesh)
    local = ip.InputIterator(config(), mesh).local_batch()
    batch = next(it)
    for key in ip.MODEL_FEATURES:
        assert batch[key].shape == (8, 192)
        assert batch[key].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
        np.testing.assert_array_equal(np.asarray(batch[key]), local[key])
    # Each device holds 2 of the 8 rows (4-way batch split, replicated over tensor).
    shard_rows = {s.data.shape[0] for s in batch["decoder_target_tokens"].addressable_shards}
    assert shard_rows == {2}


def segments(batch) -> list[tuple[tuple, tuple]]:
    """(prompt tokens, answer tokens with EOS) of each packed example, row by row."""
    found = []
    for row in range(batch["decoder_segment_ids"].shape[0]):
        seg = batch["decoder_segment_ids"][row]
        for s in range(1, seg.max() + 1):
            inputs = batch["decoder_input_tokens"][row][seg == s]
            weights = batch["decoder_loss_weights"][row][seg == s]
            answer = tuple(batch["decoder_target_tokens"][row][seg == s][weights == 1])
            found.append((tuple(inputs[: len(inputs) - len(answer)]), answer))
    return found


def test_eval_batches_hold_each_test_example_once_in_file_order():
    vocab = vocabularies.make_vocabulary()
    info = reader.discover_tasks(reader.default_data_dir())[TASK_FOLDER]
    expected = [
        (tuple(vocab.encode(i.prompt)), tuple(vocab.encode(i.answer)) + (vocab.eos_id,))
        for i in instructions.task_instructions(info, "test")
    ]
    assert len(expected) == 40
    mesh = P.make_mesh(P.MeshConfig((2, 2, 2)))  # rows over 4 batch shards: all in-process
    evals = ip.EvalBatches(config(split="test", shuffle=True), mesh, max_batches=100)
    assert list(evals.tasks) == [TASK]
    batches = evals.tasks[TASK]
    # One epoch, unshuffled: every example once, in file order, the last batch padded.
    assert sum((segments(b) for b in batches), []) == expected
    rows = sum(int((b["decoder_segment_ids"] > 0).any(1).sum()) for b in batches)
    assert len(batches) == -(-rows // 8) and rows % 8  # the last batch has empty rows
    last = batches[-1]
    empty = ~(last["decoder_segment_ids"] > 0).any(1)
    assert empty.any() and not last["decoder_loss_weights"][empty].any()
    # Iterating gives the same rows as global arrays over the mesh, every time.
    for _ in range(2):
        pairs = list(evals)
        assert [name for name, _ in pairs] == [TASK] * len(batches)
        for (_, got), want in zip(pairs, batches, strict=True):
            for key in ip.MODEL_FEATURES:
                assert got[key].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
                np.testing.assert_array_equal(np.asarray(got[key]), want[key])
    # max_batches keeps the first ones.
    first = ip.EvalBatches(config(split="test"), one_device_mesh(), max_batches=1).tasks[TASK]
    assert len(first) == 1 and segments(first[0]) == segments(batches[0])


def test_eval_batches_errors_name_the_problem():
    with pytest.raises(reader.DataError, match="EVAL_LOSS_BATCHES must be an integer >= 1, got 0"):
        ip.EvalBatches(config(split="test"), one_device_mesh(), max_batches=0)
    with pytest.raises(reader.DataError, match="mixture 'no_such_mixture'"):
        ip.EvalBatches(config(mixture_or_task_name="no_such_mixture"), one_device_mesh(), 1)
    with pytest.raises(reader.DataError, match="has no 'validation' split"):
        ip.EvalBatches(config(split="validation"), one_device_mesh(), 1)


def test_errors_name_the_problem():
    with pytest.raises(reader.DataError, match="mixture 'no_such_mixture'"):
        ip.InputIterator(config(mixture_or_task_name="no_such_mixture"), one_device_mesh())
    with pytest.raises(reader.DataError, match="BATCH_SIZE 6 is not divisible by Data"):
        ip.InputIterator(config(global_batch_size=6, num_shards=4), one_device_mesh())


def test_a_damaged_prepared_file_is_one_data_error(tmp_path, sample_tasks):
    """A truncated TFRecord (a copy cut short, a disk error) fails inside tf.data; the
    error names the mixture and says how to mend it, not a TensorFlow trace."""
    import shutil

    from ecomgpt_jax.ecominstruct import make_sample
    from tasks import tfds_builder

    root = tmp_path / "root"
    shutil.copytree(make_sample.SAMPLE_DIR / "Shop_Review", root / "Shop_Review")
    tfds_builder.prepare(root)
    for record in (root / "_tfds").rglob("*train.tfrecord*"):
        record.write_bytes(record.read_bytes()[:100])
    sample_tasks.register_ecom_tasks(root)  # the fingerprint holds: the copy counts as current
    data = config(mixture_or_task_name="ecom_instruct_held_in", pack=False)
    with pytest.raises(reader.DataError) as info:
        ip.InputIterator(data, one_device_mesh()).local_batch()
    message = str(info.value)
    assert message.startswith(
        "reading mixture 'ecom_instruct_held_in' failed after 0 batches: DataLossError: "
    )
    assert message.endswith(
        "(a prepared TFDS file damaged or removed? prepare it again, replacing it: python -m "
        "tasks.tfds_builder --force --data_dir DATA_DIR [--tfds_data_dir TFDS_DATA_DIR])"
    )
    assert "\n" not in message
    # The advice mends it: without --force TFDS would keep the damaged files.
    tfds_builder.prepare(root)
    with pytest.raises(reader.DataError):
        ip.InputIterator(data, one_device_mesh()).local_batch()
    tfds_builder.prepare(root, force=True)
    sample_tasks.register_ecom_tasks(root)
    assert ip.InputIterator(data, one_device_mesh()).local_batch()["decoder_loss_weights"].sum() > 0


def _prompt(example) -> tuple[int, ...]:
    """An unpacked converted example's prompt tokens (the targets before the answer's)."""
    return tuple(example["decoder_target_tokens"][: np.argmax(example["decoder_loss_weights"])])


def test_the_shards_of_a_mixture_pick_their_tasks_independently(sample_tasks):
    """Each shard (host) picks the mixture's tasks with its own seed: with SeqIO's common
    seed every host picked the same task at each draw. Shard 0 (a single host) reads as
    SeqIO's Mixture.get_dataset does."""
    data = config(
        mixture_or_task_name="ecom_instruct_held_in",
        task_feature_lengths={"inputs": 192, "targets": 64},
        pack=False,
    )
    vocab = vocabularies.make_vocabulary()
    owner = {}
    for folder, info in reader.discover_tasks(reader.default_data_dir()).items():
        if info.has_split("train"):
            for ins in instructions.task_instructions(info, "train"):
                owner[tuple(vocab.encode(ins.prompt))] = folder

    def picks(shard):
        ds = ip._shard_dataset(data, seqio.ShardInfo(shard, 2))
        return [owner[_prompt(ex)] for ex in ds.take(30).as_numpy_iterator()]

    first, second = picks(0), picks(1)
    assert picks(1) == second  # seeded: the same on every run
    assert len(set(first)) >= 6 and len(set(second)) >= 6  # both mix many tasks ...
    assert sum(a == b for a, b in zip(first, second, strict=True)) < 10  # ... not together
    mixture = seqio.get_mixture_or_task("ecom_instruct_held_in")
    seqio_picks = mixture.get_dataset(
        data.task_feature_lengths,
        shuffle=True,
        seed=data.seed,
        shard_info=seqio.ShardInfo(0, 2),
        try_in_mem_cache=False,
    )
    converter = ip.ZeroSafePrefixLM(pack=False, loss_on_targets_only=True)
    converted = converter(seqio_picks, task_feature_lengths=data.task_feature_lengths)
    assert [owner[_prompt(ex)] for ex in converted.take(30).as_numpy_iterator()] == first


def test_a_task_with_fewer_examples_than_shards_leaves_the_other_shards_reading(
    tmp_path, sample_tasks
):
    """One example and two shards: shard 1 has none of that task. It reads the other task
    on; SeqIO's sampling ended shard 1's stream at its first pick of the empty task, and
    the run stopped there with "yields no examples"."""
    import shutil

    from ecomgpt_jax.ecominstruct import make_sample

    root = tmp_path / "root"
    shutil.copytree(make_sample.SAMPLE_DIR / "Shop_Review", root / "Shop_Review")
    tiny = root / "Shop_Review/tasks/ZH-Shop_Review-CLS-review_sentiment/train.json"
    tiny.write_text(tiny.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    sample_tasks.register_ecom_tasks(root)
    en, zh = (
        tasks.seqio_task_name(f"{lang}-Shop_Review-CLS-review_sentiment") for lang in ("EN", "ZH")
    )
    seqio.MixtureRegistry.add("test_one_example_task", [(en, 1.0), (zh, 1.0)])
    try:
        data = config(mixture_or_task_name="test_one_example_task", pack=False)
        shards = [
            list(ip._shard_dataset(data, seqio.ShardInfo(s, 2)).take(40).as_numpy_iterator())
            for s in (0, 1)
        ]
    finally:
        seqio.MixtureRegistry.remove("test_one_example_task")
    vocab = vocabularies.make_vocabulary()
    found = reader.discover_tasks(root)

    def prompts(lang):
        info = found[f"{lang}-Shop_Review-CLS-review_sentiment"]
        return {
            tuple(vocab.encode(i.prompt)) for i in instructions.task_instructions(info, "train")
        }

    (zh_prompt,) = prompts("ZH")
    read = [[_prompt(ex) for ex in shard] for shard in shards]
    assert len(read[0]) == len(read[1]) == 40
    assert zh_prompt in read[0]  # shard 0 holds the one ZH example (repeated) ...
    assert set(read[1]) <= prompts("EN")  # ... shard 1 reads EN examples on


def test_the_sources_digest_follows_what_the_mixture_reads(tmp_path, sample_tasks):
    """Same mixture name, other tasks, rates or sources (a TFDS copy prepared since): the
    digest a resume compares changes; registering the same data again keeps it."""
    import shutil

    from ecomgpt_jax.ecominstruct import make_sample
    from tasks import tfds_builder

    data = config(mixture_or_task_name="ecom_instruct_held_in")
    root = tmp_path / "root"
    shutil.copytree(make_sample.SAMPLE_DIR / "Shop_Review", root / "Shop_Review")
    digests = []
    train_json = root / "Shop_Review/tasks/EN-Shop_Review-CLS-review_sentiment/train.json"
    lines = train_json.read_text(encoding="utf-8").splitlines(keepends=True)
    for step in ("json", "again", "rate cap", "edited", "tfds", "one task"):
        if step == "edited":  # one example less: the stream a resume would skip through
            train_json.write_text("".join(lines[:-1]), encoding="utf-8")
        if step == "tfds":
            tfds_builder.prepare(root)
        if step == "one task":
            shutil.rmtree(root / "Shop_Review/tasks/ZH-Shop_Review-CLS-review_sentiment")
        cap = 100 if step in ("rate cap", "edited") else None  # rates equal: the edit alone
        sample_tasks.register_ecom_tasks(root, rate_maximum=cap)
        digests.append(ip.sources_digest(data))
    assert [len(d) for d in digests] == [16] * 6
    assert digests[0] == digests[1]
    assert len(set(digests)) == 5
    assert ip.sources_digest(dataclasses.replace(data, shuffle=False)) != digests[-1]
