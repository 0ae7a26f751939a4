"""Tests for the SeqIO tasks (tasks/ecom_instruct.py); registering them (tasks/__init__.py)
is tested in test_tasks.py."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest
import seqio
import tokenizers
from conftest import REAL_DATA_DIR, SAMPLE_TASKS, seqio_examples
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

import tasks
from ecomgpt_jax import vocabularies
from ecomgpt_jax.ecominstruct import instructions, make_sample, reader

SAMPLE = make_sample.SAMPLE_DIR
REAL = REAL_DATA_DIR
REAL_TASKS = [
    "ecom:EN:ABSA:CLS:review_topic_category",
    "ecom:EN:Lenovo:Condition_Extract:Condition_Extract",
    "ecom:ZH:MEPAVE:Condition_Extract:attribute_value_detection",
    "ecom:ZH:MEPAVE:NER:attribute_value_extraction",
    "ecom:ZH:Multi_CPR:CLS:query_item_matching",
    "ecom:ZH:Multi_CPR:Extract:product_select_2",
    "ecom:ZH:OpenBG_Align:CLS:item_align",
    "ecom:ZH:OpenBG_Align:CLS:item_coarse_classify",
    "ecom:ZH:OpenBG_Align:CLS:title_attribute_matching",
    "ecom:ZH:OpenBG_Align:Generate:title_generate",
]


pytestmark = pytest.mark.usefixtures("sample_tasks")


def _check_against_instructions(name, split, vocab, root, limit=None):
    folder = tasks.folder_name(name)
    expected = instructions.task_instructions(reader.discover_tasks(root)[folder], split)
    got = seqio_examples(name, split)
    assert len(got) == len(expected)
    prefix = list(vocabularies.prompt_prefix(vocab))  # Llama's BOS; none for the others
    for ex, ins in list(zip(got, expected, strict=True))[:limit]:
        assert vocab.decode(ex["inputs"][len(prefix) :].tolist()) == ins.prompt
        assert ex["inputs"].tolist() == prefix + list(vocab.encode(ins.prompt))
        assert ex["targets"].tolist() == list(vocab.encode(ins.answer)) + [vocab.eos_id]
        assert vocab.decode(ex["targets"].tolist()) == ins.answer
        assert ex["inputs_pretokenized"].decode("utf-8") == ins.prompt
        assert ex["targets_pretokenized"].decode("utf-8") == ins.answer
        assert (ex["task"].decode(), int(ex["index"])) == (folder, ins.index)


def test_name_mapping():
    folder = "EN-ABSA-CLS-review_topic_category"
    assert tasks.seqio_task_name(folder) == "ecom:EN:ABSA:CLS:review_topic_category"
    assert tasks.folder_name("ecom:EN:ABSA:CLS:review_topic_category") == folder
    assert tasks.folder_name(tasks.seqio_task_name("ZH-Multi_CPR-Extract-product_select_2")) == (
        "ZH-Multi_CPR-Extract-product_select_2"
    )
    with pytest.raises(reader.DataError, match="contains ':'"):
        tasks.seqio_task_name("EN-A:B-CLS-x")
    with pytest.raises(ValueError, match="no 'ecom:'"):
        tasks.folder_name("glue_cola_v2")


def test_sample_tasks():
    state = tasks.registration()
    assert state.data_dir == SAMPLE and list(state.tasks) == SAMPLE_TASKS
    assert set(SAMPLE_TASKS) <= set(seqio.TaskRegistry.names())
    task = tasks.get("ecom:EN:Shop_Review:CLS:review_sentiment")
    assert task.splits == ("train", "test")
    assert task.num_input_examples("train") == 300
    assert task.num_input_examples("test") == 40
    held_out = tasks.get("ecom:EN:ABSA:CLS:review_topic_category")
    assert held_out.splits == ("test",) and held_out.num_input_examples("test") == 30
    assert set(task.output_features) == {"inputs", "targets"}
    assert not task.output_features["inputs"].add_eos
    assert task.output_features["targets"].add_eos
    assert task.output_features["targets"].vocabulary.eos_id == 1


def test_examples_decode_to_the_instructions(caplog):
    vocab = vocabularies.make_vocabulary()
    for name in SAMPLE_TASKS:
        _check_against_instructions(name, "test", vocab, SAMPLE)
    _check_against_instructions(
        "ecom:ZH:Shop_Product:NER:attribute_extraction", "train", vocab, SAMPLE
    )


def test_another_seed_changes_only_cls_candidates():
    vocab = vocabularies.make_vocabulary()
    tasks.register_ecom_tasks(SAMPLE, vocab, seed=3)
    name = "ecom:EN:Shop_Product:CLS:product_category"
    task = reader.discover_tasks(SAMPLE)["EN-Shop_Product-CLS-product_category"]
    expected = instructions.task_instructions(task, "test", seed=3)
    got = [vocab.decode(ex["inputs"].tolist()) for ex in seqio_examples(name, "test")]
    assert got == [ins.prompt for ins in expected]
    assert got != [ins.prompt for ins in instructions.task_instructions(task, "test", seed=0)]


def _tiny_hf_tokenizer(path, bos: bool = False):
    """A tiny byte-level BPE tokenizer.json; `bos`: its post-processor puts "<s>" before
    every text, as Llama's does."""
    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["Below is an instruction", "颜色：红色，材质：棉。"], trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    tok.save(str(path))
    return path


def test_a_tokenizer_that_adds_bos_starts_every_prompt_with_it(tmp_path):
    """Llama's tokenizer puts BOS before a text (transformers' `tokenizer(prompt)` has
    it): prompts start with it, also when cut from the left; answers do not."""
    path = _tiny_hf_tokenizer(tmp_path / "t.json", bos=True)
    vocab = vocabularies.make_vocabulary("huggingface", path)
    assert vocab.prompt_prefix == (1,)  # (against transformers: test_vocabularies.py)
    tasks.register_ecom_tasks(SAMPLE, vocab)
    name = "ecom:ZH:MEPAVE:NER:attribute_value_extraction"
    _check_against_instructions(name, "test", vocab, SAMPLE, limit=5)
    whole = seqio_examples(name, "test")[:3]
    ds = tasks.get(name).get_dataset(
        sequence_length={"inputs": 12, "targets": 512}, split="test", shuffle=False
    )
    for ex, full in zip(ds.take(3).as_numpy_iterator(), whole, strict=True):
        assert len(full["inputs"]) > 12
        assert ex["inputs"].tolist() == [1, *full["inputs"][-11:].tolist()]
        assert ex["targets"].tolist() == full["targets"].tolist()
        assert ex["targets"][0] != 1


def test_register_with_a_hugging_face_vocabulary(tmp_path):
    vocab = vocabularies.make_vocabulary("huggingface", _tiny_hf_tokenizer(tmp_path / "t.json"))
    tasks.register_ecom_tasks(SAMPLE, vocab)
    name = "ecom:ZH:MEPAVE:NER:attribute_value_extraction"
    assert seqio.get_mixture_or_task(name).output_features["targets"].vocabulary is vocab
    _check_against_instructions(name, "test", vocab, SAMPLE, limit=5)
    assert seqio_examples(name, "test")[0]["targets"][-1] == 2  # "</s>"


@pytest.mark.skipif(not REAL, reason="ECOMGPT_DATA_DIR is not set (real held-out data)")
def test_real_held_out_data():
    names = tasks.register_ecom_tasks(REAL)
    assert names == REAL_TASKS
    vocab = vocabularies.make_vocabulary()
    for name in names:
        task = tasks.get(name)
        assert task.splits == ("test",)
        assert task.num_input_examples("test") == 500
    for name in [
        "ecom:EN:ABSA:CLS:review_topic_category",
        "ecom:ZH:MEPAVE:NER:attribute_value_extraction",
    ]:
        _check_against_instructions(name, "test", vocab, REAL, limit=20)


def test_shuffle_and_shard():
    name = "ecom:EN:Shop_Review:CLS:review_sentiment"
    task = tasks.get(name)
    ordered = [int(ex["index"]) for ex in seqio_examples(name, "train")]
    assert ordered == list(range(300))

    def indices(**kwargs):
        ds = task.get_dataset(sequence_length=None, split="train", **kwargs)
        return [int(ex["index"]) for ex in ds.as_numpy_iterator()]

    shuffled = indices(shuffle=True, seed=7)
    assert sorted(shuffled) == ordered and shuffled != ordered
    assert indices(shuffle=True, seed=7) == shuffled  # deterministic for a seed
    shard = indices(shuffle=False, shard_info=seqio.ShardInfo(index=1, num_shards=3))
    assert shard == list(range(1, 300, 3))
    # Another task of the same size (its ZH twin) comes in another order with the same
    # seed: with the run's seed alone, every 300-example task had this very permutation.
    twin = tasks.get("ecom:ZH:Shop_Review:CLS:review_sentiment")
    ds = twin.get_dataset(sequence_length=None, split="train", shuffle=True, seed=7)
    twin_order = [int(ex["index"]) for ex in ds.as_numpy_iterator()]
    assert sorted(twin_order) == ordered
    same_place = sum(a == b for a, b in zip(twin_order, shuffled, strict=True))
    assert same_place < 10  # a random pair of permutations of 300 agrees in ~1 place


def test_long_prompts_keep_their_end_and_answers_their_start():
    name = "ecom:ZH:Shop_Product:Generate:description_generate"
    vocab = vocabularies.make_vocabulary()
    full = seqio_examples(name, "train")[:5]
    ds = tasks.get(name).get_dataset(
        sequence_length={"inputs": 12, "targets": 4}, split="train", shuffle=False
    )
    for ex, whole in zip(ds.take(5).as_numpy_iterator(), full, strict=True):
        assert len(whole["inputs"]) > 12 and len(whole["targets"]) > 4
        # The prompt's last 12 tokens (its "### Response:" line), as evaluation cuts it.
        assert ex["inputs"].tolist() == whole["inputs"][-12:].tolist()
        assert vocab.decode(ex["inputs"].tolist()).endswith("### Response:")
        # The answer's first 3 tokens and EOS (SeqIO's append_eos_after_trim).
        assert ex["targets"].tolist() == whole["targets"][:3].tolist() + [1]
