"""Tests for the deterministic sample generator (ecominstruct/make_sample.py)."""

import json
import pathlib

import pytest
import sentencepiece as spm
from conftest import SAMPLE_HELD_IN, SAMPLE_HELD_OUT

from ecomgpt_jax.ecominstruct import make_sample, reader

SAMPLE = make_sample.SAMPLE_DIR

# Contract section 6: the paper's twelve held-out tasks.
PAPER_HELD_OUT = {
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
}


def _files(root: pathlib.Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != make_sample.SPM_FILE
    }


@pytest.fixture(scope="module")
def tasks():
    return reader.discover_tasks(SAMPLE)


def test_write_data_is_byte_identical_and_matches_bundled_sample(tmp_path):
    first = make_sample.write_data(tmp_path / "a")
    make_sample.write_data(tmp_path / "b")
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(first) == len(a) == 12 * 3 + 6 * 2
    assert a == b
    # The committed sample is what the generator writes (regenerate it if this fails).
    assert _files(SAMPLE) == a


def test_task_names_and_split_sizes(tasks):
    assert sorted(tasks) == sorted(SAMPLE_HELD_IN + SAMPLE_HELD_OUT)
    assert set(SAMPLE_HELD_OUT) <= PAPER_HELD_OUT
    assert not set(SAMPLE_HELD_IN) & PAPER_HELD_OUT
    assert {t.lang for t in tasks.values()} == {"EN", "ZH"}
    assert {t.type for t in tasks.values()} == set(reader.TASK_TYPES)
    for name in SAMPLE_HELD_IN:
        assert len(reader.read_examples(tasks[name], "train")) == 300
        assert len(reader.read_examples(tasks[name], "test")) == 40
    for name in SAMPLE_HELD_OUT:
        assert not tasks[name].has_split("train")
        assert len(reader.read_examples(tasks[name], "test")) == 30


def test_meta_info_has_the_real_format(tasks):
    for task in tasks.values():
        meta = json.loads((task.path / "meta-info.json").read_text(encoding="utf-8"))
        assert meta["task"] == task.name
        assert meta["label_sep"] == ", "
        assert meta["test_prompt"]["instruction"].endswith("### Response:")
        if task.type in ("CLS", "NER", "Condition_Extract"):
            assert meta["label_key"] in meta["label_set"]
    absa = tasks["EN-ABSA-CLS-review_topic_category"]
    assert absa.label_set == ["Food", "Service", "Price", "Ambience", "Anecdotes/Miscellaneous"]


def test_sample_is_small():
    total = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert total < 1_500_000


def test_spm_model_ids_and_lossless_round_trip():
    sp = spm.SentencePieceProcessor(model_file=str(SAMPLE / make_sample.SPM_FILE))
    assert sp.get_piece_size() == make_sample.SPM_VOCAB_SIZE == 2000
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    assert sum(sp.is_byte(i) for i in range(sp.get_piece_size())) == 256
    texts = make_sample.spm_corpus(SAMPLE)
    assert len(texts) == 2 * (12 * 340 + 6 * 30)
    assert all(sp.decode(sp.encode(t)) == t for t in texts)
    assert sp.encode("\n") == [sp.piece_to_id("\n")]


def test_spm_training_is_deterministic():
    texts = make_sample.spm_corpus(SAMPLE)
    model = make_sample.train_spm(texts)
    assert model == make_sample.train_spm(texts)
    assert model == (SAMPLE / make_sample.SPM_FILE).read_bytes()
    # What main() writes: trained on a temporary copy of the sample files alone.
    assert make_sample.sample_spm(make_sample.sample_files(), 2000) == model


def test_main_writes_everything(tmp_path):
    make_sample.main(["--out", str(tmp_path), "--no-spm"])
    assert _files(tmp_path) == _files(SAMPLE)
    assert not (tmp_path / make_sample.SPM_FILE).exists()
    # Regenerating onto identical content is fine (nothing differs).
    assert make_sample.main(["--out", str(tmp_path), "--no-spm"]) == 0


def test_main_never_overwrites_other_data(tmp_path, capsys):
    """The held-out stand-ins use real EcomInstruct folder names: a real test.json under
    --out is refused, before anything is written."""
    real = tmp_path / "ABSA" / "tasks" / "EN-ABSA-CLS-review_topic_category" / "test.json"
    real.parent.mkdir(parents=True)
    real.write_text('{"sentences": "real"}\n')
    assert make_sample.main(["--out", str(tmp_path), "--no-spm"]) == 2
    assert capsys.readouterr().err == (
        f"error: {real} exists and differs from the sample; refusing to overwrite "
        "(use an empty --out)\n"
    )
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [real]
    assert real.read_text() == '{"sentences": "real"}\n'
    # A file where --out or one of its folders must go.
    (tmp_path / "file").write_text("x")
    assert make_sample.main(["--out", str(tmp_path / "file"), "--no-spm"]) == 2
    assert capsys.readouterr().err == (
        f"error: --out {tmp_path / 'file'} is a file, not a folder (use an empty --out)\n"
    )
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "Shop_QA").write_text("x")
    assert make_sample.main(["--out", str(tmp_path / "b"), "--no-spm"]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'b' / 'Shop_QA'} is a file, not a folder (use an empty --out)\n"
    )
    # The bundled sample belongs to the generator: it is rewritten whatever it holds.
    make_sample.check_out(SAMPLE, {"Shop_QA/tasks/x/test.json": b"differs"})


def test_main_checks_the_vocabulary_size_before_writing(tmp_path, capsys):
    out = tmp_path / "out"
    assert make_sample.main(["--out", str(out), "--vocab-size", "10"]) == 2
    assert (
        capsys.readouterr().err
        == "error: --vocab-size 10 is too small: the sample needs at least 608\n"
    )
    assert make_sample.main(["--out", str(out), "--vocab-size", "99999"]) == 2
    assert capsys.readouterr().err == (
        "error: --vocab-size 99999 is too large: the sample allows at most 12844\n"
    )
    assert not out.exists()
    assert make_sample.main(["--out", str(out), "--vocab-size", "0"]) == 2
    assert capsys.readouterr().err == "error: --vocab-size 0 is not a positive integer\n"
    # A different spm.model is refused like a data file.
    out.mkdir()
    (out / make_sample.SPM_FILE).write_bytes(b"another model")
    assert make_sample.main(["--out", str(out), "--vocab-size", "608"]) == 2
    assert capsys.readouterr().err == (
        f"error: {out / make_sample.SPM_FILE} exists and differs from the sample; refusing to "
        "overwrite (use an empty --out)\n"
    )
    assert [p.name for p in out.iterdir()] == [make_sample.SPM_FILE]
