"""Deterministic generator of the bundled EcomInstruct sample (data + SentencePiece model).

Regenerate everything under ``ecomgpt_jax/ecominstruct/sample/`` with::

    python -m ecomgpt_jax.ecominstruct.make_sample            # data + sample/spm.model
    python -m ecomgpt_jax.ecominstruct.make_sample --out DIR  # somewhere else
    python -m ecomgpt_jax.ecominstruct.make_sample --no-spm   # data files only

The content is synthetic: e-commerce titles, reviews, queries and attribute lists assembled
from small word pools and templates with a fixed seed (pure Python, no copied data). Running
it twice gives byte-identical files. The layout is the real EcomInstruct one
(``<root>/<Dataset>/tasks/<LANG>-<Dataset>-<TYPE>-<name>/{meta-info,train,test}.json``):

* 12 held-in tasks (English and Chinese, all five TYPEs) with ``train.json`` (300 lines) and
  ``test.json`` (40 lines); their Dataset names start with ``Shop_`` so they never collide
  with a real EcomInstruct folder.
* 6 synthetic stand-ins for the paper's held-out tasks, under their exact folder names, with
  only ``test.json`` (30 lines), so the ``ecom_instruct_held_out`` mixture evaluates on the
  sample out of the box.

Nothing is overwritten outside the bundled sample: an ``--out`` that holds a different file
at one of the sample's paths (e.g. real EcomInstruct data: the stand-ins above use the real
held-out folder names) is refused before anything is written.

``sample/spm.model`` is a byte-fallback BPE SentencePiece model trained on the prompts and
answers of every split (``instructions.task_instructions(..., seed=0)``): identity
normalisation (but for U+FFFF, a noncharacter, read as U+FFFD: see `train_spm`), no dummy
prefix, whitespace runs and ``"\\n"`` kept, so decoding is lossless.
Ids: pad 0, eos 1, unk 2, no bos; 256 byte pieces.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import pathlib
import random
import re
import sys
import tempfile
from collections.abc import Sequence

from ecomgpt_jax.ecominstruct import reader
from ecomgpt_jax.ecominstruct import sample_generators as sg

SEED = 20230814
TRAIN_SIZE = 300
TEST_SIZE = 40
HELD_OUT_TEST_SIZE = 30
SPM_VOCAB_SIZE = 2000
SAMPLE_DIR = reader.SAMPLE_DIR
SPM_FILE = "spm.model"


# ----------------------------------------------------------------------------- task table
@dataclasses.dataclass(frozen=True)
class SampleTask:
    """One generated task folder.

    Attributes:
      folder: the task folder name ``<LANG>-<Dataset>-<TYPE>-<name>``.
      defi: meta ``defi``.
      body: the instruction text after ``{sentences}`` (see `template`).
      gen: example generator ``rng -> example dict``.
      label_set / label_key: meta fields (CLS, NER and Condition_Extract tasks).
      held_out: a stand-in for a paper held-out task: test split only.
      template: full ``test_prompt.instruction``; None = the usual
        ``"### Instruction:\n{sentences}\n" + body + "\n### Response:"``.
    """

    folder: str
    defi: str
    body: str
    gen: sg.Gen
    label_set: dict | None = None
    label_key: str | None = None
    held_out: bool = False
    template: str | None = None

    def meta(self) -> dict:
        """meta-info.json content, in the real files' key order."""
        template = (
            self.template or "### Instruction:\n{sentences}\n" + self.body + "\n### Response:"
        )
        meta = {"task": self.folder, "defi": self.defi, "test_prompt": {"instruction": template}}
        if self.label_set is not None:
            meta.update(label_set=self.label_set, label_key=self.label_key)
        meta["label_sep"] = ", "
        return meta


_SENTIMENT_EN = {"en": ["negative", "neutral", "positive"]}
_PRODUCT_TYPES = {
    "en": ["Brand", "Color", "Material", "Product"],
    "cn": ["品牌", "颜色", "材质", "商品"],
}
_LENOVO_TYPES = {
    "en": ["Attribute", "Brand", "Component", "Product"],
    "cn": ["商品属性", "商品品牌", "组件", "商品名"],
}
_ABSA_TOPICS = ["Food", "Service", "Price", "Ambience", "Anecdotes/Miscellaneous"]
_COARSE_SET = {
    "coarse": ["美妆洗护", "大服饰", "消费电子", "食品", "大百货"],
    "fine": sg.PRODUCTS_ZH + sg._FOOD_ZH,
}
_CANDIDATES = "Candidates: {label_set}. "

TASKS: tuple[SampleTask, ...] = (
    SampleTask(
        "EN-Shop_Review-CLS-review_sentiment",
        "review sentiment classification",
        "What is the sentiment of the above review? " + _CANDIDATES,
        sg.en_review_sentiment,
        _SENTIMENT_EN,
        "en",
    ),
    SampleTask(
        "EN-Shop_Product-CLS-product_category",
        "product category classification",
        "Which category does this product belong to? " + _CANDIDATES,
        sg.en_product_category,
        {"en": list(sg.CATEGORIES_EN)},
        "en",
    ),
    SampleTask(
        "EN-Shop_Product-NER-product_entity",
        "product title entity recognition",
        "Extract all entities of the types {label_set} from the product title. ",
        sg.en_product_ner,
        {"en": _PRODUCT_TYPES["en"]},
        "en",
    ),
    SampleTask(
        "EN-Shop_QA-Extract-answer_extract",
        "product question answering",
        "Answer the question with a span copied from the context. ",
        sg.en_qa_extract,
    ),
    SampleTask(
        "EN-Shop_Product-Condition_Extract-attribute_detection",
        "attribute span detection",
        "Detect all product attributes about {label_set} in the sentence. ",
        sg.en_attribute_detection,
        _PRODUCT_TYPES,
        "en",
    ),
    SampleTask(
        "EN-Shop_Product-Generate-title_generate",
        "product title generation",
        "Write a product title from the attributes above. ",
        sg.en_title_generate,
    ),
    SampleTask(
        "ZH-Shop_Review-CLS-review_sentiment",
        "review sentiment classification",
        "Determine the sentiment of the review. " + _CANDIDATES,
        sg.zh_review_sentiment,
        {**_SENTIMENT_EN, "zh": ["负面", "中性", "正面"]},
        "zh",
    ),
    SampleTask(
        "ZH-Shop_Product-CLS-product_category",
        "product category classification",
        "Classify the product title into a category. " + _CANDIDATES,
        sg.zh_product_category,
        {"zh": sorted(sg.CATEGORIES_ZH)},
        "zh",
    ),
    SampleTask(
        "ZH-Shop_Product-NER-attribute_extraction",
        "attribute value extraction",
        "Extract all attribute values of the types {label_set} from the title. ",
        sg.zh_attribute_ner,
        {"cn": ["品牌", "风格", "颜色", "材质", "商品"]},
        "cn",
    ),
    SampleTask(
        "ZH-Shop_QA-Extract-answer_extract",
        "product question answering",
        "Answer the question with a span copied from the description. ",
        sg.zh_qa_extract,
    ),
    SampleTask(
        "ZH-Shop_Product-Condition_Extract-attribute_detection",
        "attribute value detection",
        "Detect all attribute value about {label_set} in the sentence. ",
        sg.zh_attribute_detection,
        {"cn": ["适用季节", "风格", "颜色", "材质"]},
        "cn",
    ),
    SampleTask(
        "ZH-Shop_Product-Generate-description_generate",
        "product description generation",
        "Write a one-sentence product description from the attributes above. ",
        sg.zh_description_generate,
    ),
    # Synthetic stand-ins for six of the paper's twelve held-out tasks (test split only).
    SampleTask(
        "EN-ABSA-CLS-review_topic_category",
        "review topic category",
        "Select category for the above sentences from the following topics: {label_set}. ",
        sg.absa_topic,
        {"default": _ABSA_TOPICS},
        "default",
        held_out=True,
    ),
    SampleTask(
        "EN-Lenovo-Condition_Extract-Condition_Extract",
        "entity span detection",
        "Detect all named entity about {label_set} in the sentence. ",
        sg.lenovo_condition_extract,
        _LENOVO_TYPES,
        "en",
        held_out=True,
    ),
    SampleTask(
        "ZH-MEPAVE-NER-attribute_value_extraction",
        "attribute value detection",
        "Extract all attribute value with attribute name about {label_set} in the sentence. ",
        sg.mepave_ner,
        {"cn": ["领型", "袖长", "颜色", "图案", "风格"]},
        "cn",
        held_out=True,
    ),
    SampleTask(
        "ZH-Multi_CPR-Extract-product_select_2",
        "product select",
        "",
        sg.multi_cpr_select,
        held_out=True,
        template="### Instruction:\nSelect documents from the candidates that best match the "
        "product query.\n{sentences}\nOutput the document content only.\n### Response:",
    ),
    SampleTask(
        "ZH-OpenBG_Align-CLS-item_coarse_classify",
        "product item category",
        "Categorize product items. Candidates: {label_set}",
        sg.openbg_coarse_classify,
        _COARSE_SET,
        "coarse",
        held_out=True,
    ),
    SampleTask(
        "ZH-OpenBG_Align-Generate-title_generate",
        "product title generation",
        "",
        sg.openbg_title_generate,
        held_out=True,
        template="{sentences}\nGenerate a product title based on the above attribute "
        "information. \n### Response:",
    ),
)


# ----------------------------------------------------------------------------- writing
def _unique_examples(gen: sg.Gen, rng: random.Random, count: int, folder: str) -> list[sg.Example]:
    """`count` examples with pairwise distinct `sentences` (so test never repeats train)."""
    seen, out = set(), []
    for _ in range(count * 50):
        ex = gen(rng)
        if ex["sentences"] not in seen:
            seen.add(ex["sentences"])
            out.append(ex)
            if len(out) == count:
                return out
    raise RuntimeError(f"{folder}: generator cannot produce {count} distinct examples")


def _lines(examples: Sequence[sg.Example]) -> bytes:
    return "".join(json.dumps(ex, ensure_ascii=False) + "\n" for ex in examples).encode("utf-8")


def sample_files() -> dict[str, bytes]:
    """Every data file of the sample: relative POSIX path -> content, in writing order."""
    files = {}
    for task in TASKS:
        dataset = task.folder.split("-")[1]
        folder = f"{dataset}/tasks/{task.folder}"
        rng = random.Random(f"{SEED}:{task.folder}")  # per task: adding a task changes no other
        meta_text = json.dumps(task.meta(), ensure_ascii=False, indent=4) + "\n"
        files[f"{folder}/meta-info.json"] = meta_text.encode("utf-8")
        if task.held_out:
            splits = {"test": _unique_examples(task.gen, rng, HELD_OUT_TEST_SIZE, task.folder)}
        else:
            examples = _unique_examples(task.gen, rng, TRAIN_SIZE + TEST_SIZE, task.folder)
            splits = {"train": examples[:TRAIN_SIZE], "test": examples[TRAIN_SIZE:]}
        for split, examples in splits.items():
            files[f"{folder}/{split}.json"] = _lines(examples)
    return files


def _write(out_dir: pathlib.Path, files: dict[str, bytes]) -> list[pathlib.Path]:
    written = []
    for rel, content in files.items():
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        written.append(path)
    return sorted(written)


def write_data(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Writes every task folder under `out_dir`; returns the written files, sorted."""
    return _write(pathlib.Path(out_dir), sample_files())


def spm_corpus(root: pathlib.Path, seed: int = 0) -> list[str]:
    """Prompts and answers of every task and split under `root`, in a fixed order."""
    from ecomgpt_jax.ecominstruct import instructions

    texts = []
    for task in reader.discover_tasks(root).values():
        for split in ("train", "test"):
            if task.has_split(split):
                for ins in instructions.task_instructions(task, split, seed=seed):
                    texts.extend([ins.prompt, ins.answer])
    return texts


def train_spm(texts: Sequence[str], vocab_size: int = SPM_VOCAB_SIZE) -> bytes:
    """Serialized byte-fallback BPE SentencePiece model for `texts` (deterministic)."""
    import sentencepiece as spm

    spm.set_random_generator_seed(SEED)
    model = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp:
        # Identity normalisation but for one rule, U+FFFF (a noncharacter: no text holds
        # it) -> U+FFFD. A plain identity model has an empty character map, and every
        # load of it logs "precompiled_charsmap is empty" (TensorFlow's copy of the
        # library, once per task and feature in tf.data, cannot be silenced).
        rules = pathlib.Path(tmp) / "rules.tsv"
        rules.write_text("FFFF\tFFFD\n", encoding="utf-8")
        _train(texts, vocab_size, model, str(rules))
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    proto.normalizer_spec.normalization_rule_tsv = rules.name  # not the temporary folder
    return proto.SerializeToString()


def _train(texts: Sequence[str], vocab_size: int, model: io.BytesIO, rules: str) -> None:
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        # Lossless: no NFKC, no dummy "▁" prefix, whitespace runs kept as pieces.
        normalization_rule_tsv=rules,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        byte_fallback=True,  # any character outside the vocabulary -> UTF-8 byte pieces
        user_defined_symbols=["\n"],  # one piece per newline (prompts are multi-line)
        character_coverage=0.9995,
        max_sentence_length=1 << 16,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
    )


class SampleError(Exception):
    """A bad --out or --vocab-size: reported as one line, exit status 2."""


def check_out(out_dir: pathlib.Path, files: dict[str, bytes]) -> None:
    """Raises SampleError unless every file in `files` can be written under `out_dir`
    without replacing different content (the stand-ins for held-out tasks use the real
    EcomInstruct folder names, so an --out holding real data would lose its test files).

    The bundled sample itself is regenerated in place whatever it holds: the generator
    owns it, and git keeps its previous content.
    """
    if out_dir.resolve() == SAMPLE_DIR:
        return
    for rel, content in files.items():
        path = out_dir / rel
        # A file where a folder must go (`path.exists()` would just say False).
        folders = [out_dir]
        for part in pathlib.PurePosixPath(rel).parent.parts:
            folders.append(folders[-1] / part)
        for folder in folders:
            if folder.exists() and not folder.is_dir():
                what = f"--out {folder}" if folder == out_dir else str(folder)
                raise SampleError(f"{what} is a file, not a folder (use an empty --out)")
        if path.is_dir() or (path.exists() and path.read_bytes() != content):
            raise SampleError(
                f"{path} exists and differs from the sample; refusing to overwrite "
                "(use an empty --out)"
            )


def _spm_error(vocab_size: int, error: RuntimeError) -> SampleError:
    """sentencepiece's size complaints ("INTERNAL: file(line) [check] text") as one line."""
    text = str(error)
    if m := re.search(r"smaller than required_chars\. \d+ vs (\d+)", text):
        return SampleError(
            f"--vocab-size {vocab_size} is too small: the sample needs at least {m[1]}"
        )
    if m := re.search(r"value <= (\d+)", text):
        return SampleError(
            f"--vocab-size {vocab_size} is too large: the sample allows at most {m[1]}"
        )
    return SampleError(f"--vocab-size {vocab_size}: sentencepiece: {text.rsplit('] ', 1)[-1]}")


def sample_spm(files: dict[str, bytes], vocab_size: int) -> bytes:
    """The SentencePiece model of the sample `files`, trained before anything is written
    (a bad --vocab-size must not leave data behind): from a temporary copy, so the corpus
    is the sample alone whatever else --out holds."""
    with tempfile.TemporaryDirectory() as tmp:
        _write(pathlib.Path(tmp), files)
        texts = spm_corpus(pathlib.Path(tmp))
    try:
        return train_spm(texts, vocab_size)
    except RuntimeError as e:
        raise _spm_error(vocab_size, e) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 with one line on stderr for bad options)."""
    parser = argparse.ArgumentParser(
        prog="python -m ecomgpt_jax.ecominstruct.make_sample", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=pathlib.Path, default=SAMPLE_DIR, help="output root")
    parser.add_argument("--no-spm", action="store_true", help="write the data files only")
    parser.add_argument("--vocab-size", type=int, default=SPM_VOCAB_SIZE)
    args = parser.parse_args(argv)
    out = args.out
    try:
        files = sample_files()
        if args.vocab_size < 1:
            raise SampleError(f"--vocab-size {args.vocab_size} is not a positive integer")
        check_out(out, files)  # before the SentencePiece training: fail fast
        spm_model = None if args.no_spm else sample_spm(files, args.vocab_size)
        if spm_model is not None:
            check_out(out, {SPM_FILE: spm_model})
        written = _write(out, files)
        print(f"wrote {len(written)} data files under {out}")
        if spm_model is not None:
            (out / SPM_FILE).write_bytes(spm_model)
            print(f"wrote {out / SPM_FILE}")
    except (SampleError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
