"""Tests for ecomgpt_jax/vocabularies.py: lossless SentencePiece and Hugging Face vocabularies."""

import copy
import json
import os
import pickle

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest
import seqio
import tensorflow as tf
import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from ecomgpt_jax import vocabularies
from ecomgpt_jax.ecominstruct import instructions, reader

HARD_TEXTS = [
    "  two  leading spaces\n\n\ttab\t and trailing  ",
    "颜色：红色，材质：棉。！？（）；",
    "价格 123.45 元 / 2023年 0007",
    "emoji 😀👍🏽 ok ✓",
    "### Instruction:\nPick one.\n### Response:",
    "Brand: None\nColor: red, blue",
    "",
    " ",
    "\n",
    "\r\n",
]


def _sample_texts(n: int = 40) -> list[str]:
    texts = []
    for task in reader.discover_tasks(vocabularies.DEFAULT_SPM_PATH.parent).values():
        for ins in instructions.task_instructions(task, "test")[:2]:
            texts += [ins.prompt, ins.answer]
    return texts[:n]


@pytest.fixture(scope="module")
def spm_vocab():
    return vocabularies.make_vocabulary()


def _build_hf_tokenizer(path, special=("<unk>", "<s>", "</s>", "<pad>")):
    """A tiny byte-level BPE tokenizer.json, built like BLOOM's / Qwen's (no normalizer)."""
    tok = tokenizers.Tokenizer(models.BPE(unk_token=special[0] if "<unk>" in special else None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=list(special),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_sample_texts(200) * 3, trainer)
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def hf_path(tmp_path_factory):
    return _build_hf_tokenizer(tmp_path_factory.mktemp("bloomish") / "tokenizer.json")


@pytest.fixture(scope="module")
def hf_vocab(hf_path):
    return vocabularies.make_vocabulary("huggingface", hf_path)


def test_sentencepiece_ids(spm_vocab):
    assert isinstance(spm_vocab, seqio.SentencePieceVocabulary)
    assert (spm_vocab.vocab_size, spm_vocab.pad_id, spm_vocab.eos_id, spm_vocab.unk_id) == (
        2000,
        0,
        1,
        2,
    )
    with_extra = vocabularies.make_vocabulary(extra_ids=10)
    assert with_extra.vocab_size == 2010


@pytest.mark.parametrize("kind", ["sentencepiece", "huggingface"])
def test_lossless_round_trip_python_and_tf(kind, spm_vocab, hf_vocab):
    vocab = spm_vocab if kind == "sentencepiece" else hf_vocab
    for text in HARD_TEXTS + _sample_texts():
        ids = list(vocab.encode(text))
        assert vocab.decode(ids) == text
        tf_ids = vocab.encode_tf(tf.constant(text)).numpy().tolist()
        assert tf_ids == ids
        if ids:
            assert vocab.decode_tf(tf.constant(ids, tf.int32)).numpy().decode("utf-8") == text


@pytest.mark.parametrize("kind", ["sentencepiece", "huggingface"])
def test_decode_stops_at_eos(kind, spm_vocab, hf_vocab):
    vocab = spm_vocab if kind == "sentencepiece" else hf_vocab
    a, b = list(vocab.encode("红色，OK")), list(vocab.encode(" tail"))
    assert vocab.decode(a + [vocab.eos_id] + b) == "红色，OK"
    # Batched TF decode: rows padded with 0 after their eos.
    width = len(a) + len(b) + 1
    rows = [a + [vocab.eos_id] + [0] * len(b), a + b + [vocab.eos_id]]
    rows = [r + [0] * (width - len(r)) for r in rows]
    out = vocab.decode_tf(tf.constant(rows, tf.int32)).numpy().tolist()
    assert [o.decode("utf-8") for o in out] == ["红色，OK", "红色，OK tail"]


def test_huggingface_ids(hf_vocab, hf_path):
    assert isinstance(hf_vocab, seqio.Vocabulary)
    assert hf_vocab.eos_id == 2  # "</s>", BLOOM's layout: <unk>=0, <s>=1, </s>=2, <pad>=3
    assert hf_vocab.unk_id == 0
    assert hf_vocab.pad_id == 0
    assert hf_vocab.bos_id is None
    assert hf_vocab.vocab_size == 600
    assert vocabularies.make_vocabulary("hf", hf_path, extra_ids=4).vocab_size == 604
    # The directory form works too.
    assert vocabularies.make_vocabulary("hf", hf_path.parent).eos_id == 2
    assert hf_vocab.encode("</s>") == [2]  # special tokens in text stay themselves
    assert hf_vocab.decode(hf_vocab.encode("x</s>y")) == "x"  # ... and end the decode


def test_huggingface_decode_equals_tokenizers_on_any_ids(hf_vocab, hf_path):
    """Arbitrary ids (what a model emits, not only encode's output) decode exactly as the
    `tokenizers` library decodes them up to the first EOS: verbatim, nothing stripped."""
    import numpy as np

    reference = tokenizers.Tokenizer.from_file(str(hf_path))
    rng = np.random.RandomState(0)
    space, newline = reference.token_to_id("Ġ"), reference.token_to_id("Ċ")
    size = reference.get_vocab_size(with_added_tokens=True)
    for _ in range(50):
        ids = rng.randint(3, 600, size=rng.randint(1, 30)).tolist()
        # A padded embedding's rows past the tokenizer (BLOOM has 200 of them): dropped.
        ids[rng.randint(len(ids))] = size + int(rng.randint(200))
        ids = [space, newline] + ids + [space, space, newline]  # edges the model may emit
        cut = ids + [hf_vocab.eos_id] + rng.randint(3, 600, size=5).tolist()
        want = reference.decode(ids, skip_special_tokens=False)
        assert hf_vocab.decode(cut) == want and want.startswith(" \n") and want.endswith("  \n")
        # The TF path reads the same (seqio's decode_tf made the dropped ids unk first).
        assert hf_vocab.decode_tf(tf.constant(cut)).numpy().decode("utf-8") == want
        batch = hf_vocab.decode_tf(tf.constant([cut, cut]))
        assert [t.decode("utf-8") for t in batch.numpy()] == [want, want]
    assert hf_vocab.decode_tf(tf.zeros([2, 0], tf.int32)).numpy().tolist() == [b"", b""]


def test_huggingface_tokenizer_settings_saved_in_the_file_are_ignored(tmp_path, hf_path):
    """A tokenizer.json saved with truncation or padding on (from a training script):
    encode would cut or pad prompts silently; transformers turns both off per call."""
    text = " ".join(_sample_texts(3))
    whole = tokenizers.Tokenizer.from_file(str(hf_path)).encode(text).ids
    assert len(whole) > 40
    for setting in ("truncation", "padding"):
        tok = tokenizers.Tokenizer.from_file(str(hf_path))
        if setting == "truncation":
            tok.enable_truncation(8)
        else:
            tok.enable_padding(length=len(whole) + 20, pad_id=3, pad_token="<pad>")
        path = tmp_path / setting / "tokenizer.json"
        path.parent.mkdir()
        tok.save(str(path))
        assert len(tok.encode(text).ids) != len(whole)  # the file's setting is live
        vocab = vocabularies.make_vocabulary("huggingface", path)
        assert vocab.encode(text) == whole, setting


def test_huggingface_eos_from_tokenizer_config(tmp_path):
    path = _build_hf_tokenizer(tmp_path / "tokenizer.json", ("<|endoftext|>", "<|im_end|>"))
    vocab = vocabularies.HuggingFaceVocabulary(path)
    assert vocab.eos_id == 0 and vocab.unk_id is None  # Qwen-like: first candidate present
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": {"content": "<|im_end|>"}}), encoding="utf-8"
    )
    assert vocabularies.HuggingFaceVocabulary(path).eos_id == 1
    assert vocabularies.HuggingFaceVocabulary(path, eos_token="<|endoftext|>").eos_id == 0
    assert vocabularies.HuggingFaceVocabulary(path, eos_id=5).eos_id == 5
    # Named only in special_tokens_map.json (some exports), or in both files: the same
    # token as transformers' AutoTokenizer (special_tokens_map.json wins).
    fast = {"tokenizer_class": "PreTrainedTokenizerFast"}
    for config, special in [
        ({}, {"eos_token": "<|im_end|>"}),
        ({"eos_token": "<|endoftext|>"}, {"eos_token": {"content": "<|im_end|>"}}),
        ({"eos_token": "<|im_end|>"}, {"eos_token": "<|endoftext|>"}),
        ({"eos_token": "<|im_end|>"}, {"pad_token": "<|endoftext|>"}),
    ]:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(fast | config))
        (tmp_path / "special_tokens_map.json").write_text(json.dumps(special))
        reference = transformers.AutoTokenizer.from_pretrained(tmp_path).eos_token_id
        assert vocabularies.HuggingFaceVocabulary(path).eos_id == reference, (config, special)
    (tmp_path / "special_tokens_map.json").write_text("[]", encoding="utf-8")
    (tmp_path / "tokenizer_config.json").unlink()
    with pytest.raises(vocabularies.VocabularyError) as e:
        vocabularies.HuggingFaceVocabulary(path).eos_id  # noqa: B018
    assert str(e.value) == f"{tmp_path / 'special_tokens_map.json'}: not a JSON object"
    # Id 0 is a real token here: padding after eos must not decode to text.
    ids = vocab.encode("OK!") + [0, 0]
    assert vocab.decode_tf(tf.constant(ids, tf.int32)).numpy().decode() == "OK!"


def test_huggingface_vocab_in_a_seqio_pipeline(hf_vocab):
    ds = tf.data.Dataset.from_tensor_slices({"inputs": HARD_TEXTS[:4], "targets": HARD_TEXTS[4:8]})
    features = {
        "inputs": seqio.Feature(hf_vocab, add_eos=False),
        "targets": seqio.Feature(hf_vocab, add_eos=True),
    }
    ds = seqio.preprocessors.tokenize(ds, features, copy_pretokenized=True)
    ds = seqio.preprocessors.append_eos_after_trim(ds, output_features=features)
    for ex, inp, tgt in zip(ds.as_numpy_iterator(), HARD_TEXTS[:4], HARD_TEXTS[4:8], strict=True):
        assert ex["inputs"].tolist() == list(hf_vocab.encode(inp))
        assert ex["targets"].tolist() == list(hf_vocab.encode(tgt)) + [hf_vocab.eos_id]
        assert hf_vocab.decode(ex["targets"].tolist()) == tgt
    batched = hf_vocab.encode_tf(tf.constant(HARD_TEXTS[:3]))
    assert isinstance(batched, tf.RaggedTensor)
    assert batched.to_list() == [list(hf_vocab.encode(t)) for t in HARD_TEXTS[:3]]


def test_huggingface_vocab_pickles_without_native_state(hf_vocab):
    hf_vocab.encode("load it")
    clone = pickle.loads(pickle.dumps(hf_vocab))
    assert clone == hf_vocab
    assert clone.decode(clone.encode(HARD_TEXTS[1])) == HARD_TEXTS[1]
    assert copy.deepcopy(hf_vocab).eos_id == 2


@pytest.mark.parametrize(
    ("template", "prefix"),
    [
        ("<s> $A", ("<s>",)),  # Llama's BOS
        ("<s> $A </s>", ("<s>",)),  # a suffix (EOS) is not the prompt's: answers end with it
        ("$A </s>", ()),
        (None, ()),  # BLOOM's and Qwen's: no post-processor
    ],
)
def test_prompt_prefix_is_what_transformers_puts_before_a_text(tmp_path, template, prefix):
    path = _build_hf_tokenizer(tmp_path / "tokenizer.json")
    tok = tokenizers.Tokenizer.from_file(str(path))
    if template:
        specials = [(t, tok.token_to_id(t)) for t in ("<s>", "</s>")]
        tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=specials)
    tok.save(str(path))
    vocab = vocabularies.make_vocabulary("huggingface", path)
    ids = tuple(tok.token_to_id(t) for t in prefix)
    assert vocab.prompt_prefix == vocabularies.prompt_prefix(vocab) == ids
    assert vocab.bos_id == (ids[0] if ids else None)
    text = "Red dress, 红色长裙"
    reference = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))(text).input_ids
    assert reference[: len(ids)] == list(ids)
    assert reference[len(ids) : len(ids) + len(vocab.encode(text))] == list(vocab.encode(text))


def test_errors_name_what_and_where(tmp_path, hf_path):
    # VocabularyError (a ValueError): what the entry points report as one line.
    with pytest.raises(vocabularies.VocabularyError) as info:
        vocabularies.make_vocabulary("bpe")
    assert str(info.value) == (
        "unknown vocabulary kind 'bpe'; expected one of "
        "('sentencepiece', 'spm', 'huggingface', 'hf', 'tokenizer.json')"
    )
    with pytest.raises(FileNotFoundError, match="tokenizer file not found: .*nope"):
        vocabularies.make_vocabulary("huggingface", tmp_path / "nope")
    with pytest.raises(vocabularies.VocabularyError, match="needs path="):
        vocabularies.make_vocabulary("huggingface")
    with pytest.raises(FileNotFoundError, match="SentencePiece model not found: .*x.model"):
        vocabularies.make_vocabulary("spm", tmp_path / "x.model")
    bad = tmp_path / "bad.json"
    bad.write_text("{", encoding="utf-8")
    with pytest.raises(
        vocabularies.VocabularyError, match="bad.json: cannot load Hugging Face tokenizer"
    ):
        vocabularies.HuggingFaceVocabulary(bad).eos_id  # noqa: B018
    with pytest.raises(
        vocabularies.VocabularyError, match=r"no end-of-sequence token among \['<eos>'\]"
    ):
        vocabularies.HuggingFaceVocabulary(hf_path, eos_token="<eos>").eos_id  # noqa: B018
    (tmp_path / "tokenizer_config.json").write_text("{", encoding="utf-8")
    (tmp_path / "tokenizer.json").write_bytes(hf_path.read_bytes())
    with pytest.raises(vocabularies.VocabularyError, match="tokenizer_config.json: not valid JSON"):
        vocabularies.HuggingFaceVocabulary(tmp_path).eos_id  # noqa: B018


def test_the_bundled_model_loads_in_tf_without_a_log_line(capfd):
    """An identity model with an empty character map logs "precompiled_charsmap is empty"
    from TensorFlow's SentencePiece at every load (24 lines a training run); the bundled
    model's one rule (U+FFFF -> U+FFFD) keeps the map non-empty and the ids identity's."""
    capfd.readouterr()
    vocab = vocabularies.make_vocabulary()  # a new instance: a new TF model load
    ids = vocab.encode_tf(tf.constant("Red dress, 红色长裙\n")).numpy().tolist()
    assert ids == vocab.encode("Red dress, 红色长裙\n")
    assert "precompiled_charsmap" not in capfd.readouterr().err
    assert vocab.decode(vocab.encode("a\uffffb")) == "a\ufffdb"  # the one rule


def test_a_tokenizer_in_a_bucket_is_read_there(tmp_path, monkeypatch, hf_path):
    """A run keeps its tokenizer's copy in MODEL_DIR, often gs://: tokenizer.json and the
    special-tokens file beside it are read through epath (pathlib made gs://b/run the
    local gs:/b/run: "file not found" on every resume). The bucket is epath's mock
    backend, which maps gs://bucket/run to ./gs:/bucket/run."""
    from etils.epath import gpath
    from etils.epath import testing as epath_testing

    folder = tmp_path / "gs:" / "bucket" / "run"
    folder.mkdir(parents=True)
    (folder / "tokenizer.json").write_bytes(hf_path.read_bytes())
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<pad>"}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # pathlib's gs:/bucket/run would not be found from here
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # else TF's gfile backend

    def in_tmp(original, path, *args, **kwargs):
        return original(str(path).replace("gs://", f"{tmp_path}/gs:/"), *args, **kwargs)

    calls = dict.fromkeys(("exists", "isdir", "open", "stat", "glob", "listdir"), in_tmp)
    with epath_testing.mock_epath(**calls):
        vocab = vocabularies.make_vocabulary("huggingface", "gs://bucket/run")
        assert str(vocab.path) == "gs://bucket/run/tokenizer.json"
        assert vocab.eos_id == 3  # "<pad>", named only in the bucket's special_tokens_map
        assert vocab.encode("OK!") == vocabularies.make_vocabulary("hf", hf_path).encode("OK!")
