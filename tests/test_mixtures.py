"""Tests for tasks/mixtures.py: membership, rates, missing-task warning, none-present error."""

import logging
import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest
import seqio
from conftest import REAL_DATA_DIR

import tasks
from ecomgpt_jax import vocabularies
from ecomgpt_jax.ecominstruct import instructions, make_sample, reader
from tasks import mixtures

SAMPLE = make_sample.SAMPLE_DIR
REAL = REAL_DATA_DIR

SHOP = {
    "EN": [
        "EN:Shop_Product:CLS:product_category",
        "EN:Shop_Product:Condition_Extract:attribute_detection",
        "EN:Shop_Product:Generate:title_generate",
        "EN:Shop_Product:NER:product_entity",
        "EN:Shop_QA:Extract:answer_extract",
        "EN:Shop_Review:CLS:review_sentiment",
    ],
    "ZH": [
        "ZH:Shop_Product:CLS:product_category",
        "ZH:Shop_Product:Condition_Extract:attribute_detection",
        "ZH:Shop_Product:Generate:description_generate",
        "ZH:Shop_Product:NER:attribute_extraction",
        "ZH:Shop_QA:Extract:answer_extract",
        "ZH:Shop_Review:CLS:review_sentiment",
    ],
}
HELD_IN = sorted("ecom:" + n for n in SHOP["EN"] + SHOP["ZH"])
SAMPLE_HELD_OUT = [
    "ecom:EN:ABSA:CLS:review_topic_category",
    "ecom:EN:Lenovo:Condition_Extract:Condition_Extract",
    "ecom:ZH:MEPAVE:NER:attribute_value_extraction",
    "ecom:ZH:Multi_CPR:Extract:product_select_2",
    "ecom:ZH:OpenBG_Align:CLS:item_coarse_classify",
    "ecom:ZH:OpenBG_Align:Generate:title_generate",
]
SAMPLE_MISSING = (
    "EN-Lenovo-NER-NER, ZH-MEPAVE-Condition_Extract-attribute_value_detection, "
    "EN-Reddit_QA-Extract-Extract_QA, ZH-OpenBG_Align-CLS-item_align, "
    "ZH-OpenBG_Align-CLS-title_attribute_matching, ZH-OpenBG_Align-CLS-item_fine_classify"
)


pytestmark = pytest.mark.usefixtures("sample_tasks")


def _members(name: str) -> dict[str, float]:
    mixture = tasks.get(name)
    assert isinstance(mixture, seqio.Mixture)
    return {t.name: mixture.get_rate(t) for t in mixture.tasks}


def test_mixture_names():
    assert mixtures.MIXTURE_NAMES == (
        "ecom_instruct_held_out",
        "ecom_instruct_held_in",
        "ecom_instruct_en",
        "ecom_instruct_zh",
        "ecom_instruct_cls",
        "ecom_instruct_ner",
        "ecom_instruct_extract",
        "ecom_instruct_condition_extract",
        "ecom_instruct_generate",
    )
    assert len(mixtures.HELD_OUT_TASKS) == 12
    assert tasks.registration().mixtures == mixtures.MIXTURE_NAMES
    assert tasks.registration().unavailable == {}


def test_membership_and_rates_on_the_sample():
    assert _members("ecom_instruct_held_in") == {n: 300.0 for n in HELD_IN}
    # Held-out: evaluation only, rates from the test split.
    assert _members("ecom_instruct_held_out") == {n: 30.0 for n in SAMPLE_HELD_OUT}
    assert sorted(_members("ecom_instruct_en")) == ["ecom:" + n for n in SHOP["EN"]]
    assert sorted(_members("ecom_instruct_zh")) == ["ecom:" + n for n in SHOP["ZH"]]
    assert sorted(_members("ecom_instruct_cls")) == [
        "ecom:EN:Shop_Product:CLS:product_category",
        "ecom:EN:Shop_Review:CLS:review_sentiment",
        "ecom:ZH:Shop_Product:CLS:product_category",
        "ecom:ZH:Shop_Review:CLS:review_sentiment",
    ]
    for kind in ("ner", "extract", "condition_extract", "generate"):
        members = sorted(_members(f"ecom_instruct_{kind}"))
        assert len(members) == 2
        assert all(n.split(":")[3].lower() == kind for n in members)


def test_rate_cap():
    tasks.register_ecom_tasks(SAMPLE, rate_maximum=100)
    assert set(_members("ecom_instruct_held_in").values()) == {100.0}
    assert set(_members("ecom_instruct_held_out").values()) == {30.0}
    tasks.register_ecom_tasks(SAMPLE, rate_maximum=None)
    assert set(_members("ecom_instruct_held_in").values()) == {300.0}


def test_one_warning_lists_the_missing_held_out_tasks(caplog, tmp_path):
    """A warning for a data root; for the bundled sample, which lacks them by design, the
    same line at INFO (absl shows WARNING and above by default)."""
    shutil.copytree(SAMPLE, tmp_path / "copy")
    log_name = mixtures.log.name
    for root in (tmp_path / "copy", SAMPLE):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="tasks.mixtures"):
            tasks.register_ecom_tasks(root)
        logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == log_name]
        assert logged == [
            (
                "INFO" if root == SAMPLE else "WARNING",
                f"mixture 'ecom_instruct_held_out': 6 of its 12 tasks have no test data under "
                f"{root}; using the 6 present. Missing: {SAMPLE_MISSING}",
            )
        ]


def test_tasks_without_examples_are_not_members(tmp_path, caplog):
    """An empty (or blank) split file would be a rate-0 member that evaluation finds empty."""
    for dataset in ("ABSA", "Lenovo", "Shop_Review"):
        shutil.copytree(SAMPLE / dataset, tmp_path / dataset)
    (tmp_path / "ABSA/tasks/EN-ABSA-CLS-review_topic_category/test.json").write_bytes(b"")
    blank = tmp_path / "Shop_Review/tasks/EN-Shop_Review-CLS-review_sentiment/train.json"
    blank.write_bytes(b"\n  \n\n")
    with caplog.at_level(logging.WARNING, logger="tasks.mixtures"):
        tasks.register_ecom_tasks(tmp_path)
    # Both tasks stay registered (their other splits have examples) ...
    assert "ecom:EN:ABSA:CLS:review_topic_category" in tasks.registration().tasks
    assert "ecom:EN:Shop_Review:CLS:review_sentiment" in tasks.registration().tasks
    # ... but no mixture reads their empty split, and the held-out warning counts it missing.
    assert _members("ecom_instruct_held_out") == {
        "ecom:EN:Lenovo:Condition_Extract:Condition_Extract": 30.0
    }
    assert _members("ecom_instruct_held_in") == {"ecom:ZH:Shop_Review:CLS:review_sentiment": 300.0}
    assert "ecom_instruct_en" in tasks.registration().unavailable  # its only member left
    assert [r.getMessage() for r in caplog.records if r.name == "tasks.mixtures"] == [
        f"mixture 'ecom_instruct_held_out': 11 of its 12 tasks have no test data under "
        f"{tmp_path}; using the 1 present. Missing: EN-Lenovo-NER-NER, "
        "ZH-MEPAVE-NER-attribute_value_extraction, "
        "ZH-MEPAVE-Condition_Extract-attribute_value_detection, "
        "ZH-Multi_CPR-Extract-product_select_2, EN-Reddit_QA-Extract-Extract_QA, "
        "ZH-OpenBG_Align-Generate-title_generate, ZH-OpenBG_Align-CLS-item_align, "
        "ZH-OpenBG_Align-CLS-title_attribute_matching, "
        "ZH-OpenBG_Align-CLS-item_coarse_classify, ZH-OpenBG_Align-CLS-item_fine_classify, "
        "EN-ABSA-CLS-review_topic_category"
    ]


def _prompt_to_task(names):
    """prompt -> folder of every test example of the SeqIO tasks `names`."""
    infos = reader.discover_tasks(SAMPLE)
    return {
        ins.prompt: ins.task
        for n in names
        for ins in instructions.task_instructions(infos[tasks.folder_name(n)], "test")
    }


def test_mixture_datasets_mix_the_tasks():
    # Mixtures keep only the output features (inputs, targets): find tasks by their prompt.
    lengths = {"inputs": 256, "targets": 64}  # longer than every sample prompt / answer
    vocab = vocabularies.make_vocabulary()
    prompts = _prompt_to_task(SAMPLE_HELD_OUT)
    mixture = tasks.get("ecom_instruct_held_out")
    ds = mixture.get_dataset(lengths, split="test", shuffle=False, seed=0).take(90)
    seen = [prompts[vocab.decode(ex["inputs"].tolist())] for ex in ds.as_numpy_iterator()]
    assert len(seen) == 90  # (a mixture repeats its tasks: num_epochs=None)
    assert sorted(set(seen)) == sorted(tasks.folder_name(n) for n in SAMPLE_HELD_OUT)
    ds = tasks.get("ecom_instruct_zh").get_dataset(lengths, split="train", shuffle=True, seed=1)
    ex = next(ds.as_numpy_iterator())
    assert "### Response:" in vocab.decode(ex["inputs"].tolist())
    assert ex["targets"][-1] == vocab.eos_id == 1


def test_none_present_error_names_the_root(tmp_path):
    root = tmp_path / "only_held_out"
    shutil.copytree(SAMPLE / "ABSA", root / "ABSA")
    tasks.register_ecom_tasks(root)
    assert tasks.registration().mixtures == ("ecom_instruct_held_out",)
    assert "ecom_instruct_held_in" not in seqio.MixtureRegistry.names()
    with pytest.raises(reader.DataError) as error:
        tasks.get("ecom_instruct_held_in")
    assert str(error.value) == (
        f"mixture 'ecom_instruct_held_in' has no tasks under {root}: it needs task folders "
        "with a train.json that are not among the paper's held-out tasks "
        "(<root>/<Dataset>/tasks/<task>/train.json); point DATA_DIR (train, eval) or "
        "$ECOMGPT_DATA_DIR at a root that has them"
    )
    with pytest.raises(reader.DataError, match=f"'ecom_instruct_zh' has no tasks under {root}: "):
        tasks.get("ecom_instruct_zh")

    empty = tmp_path / "empty"
    empty.mkdir()
    assert tasks.register_ecom_tasks(empty) == []
    assert tasks.registration().mixtures == ()
    with pytest.raises(reader.DataError, match="'ecom_instruct_held_out' has no tasks under"):
        tasks.get("ecom_instruct_held_out")


@pytest.mark.skipif(not REAL, reason="ECOMGPT_DATA_DIR is not set (real held-out data)")
def test_real_held_out_data(caplog):
    with caplog.at_level(logging.WARNING, logger="tasks.mixtures"):
        tasks.register_ecom_tasks(REAL)
    assert _members("ecom_instruct_held_out") == {
        "ecom:" + n: 500.0
        for n in [
            "EN:ABSA:CLS:review_topic_category",
            "EN:Lenovo:Condition_Extract:Condition_Extract",
            "ZH:MEPAVE:Condition_Extract:attribute_value_detection",
            "ZH:MEPAVE:NER:attribute_value_extraction",
            "ZH:Multi_CPR:Extract:product_select_2",
            "ZH:OpenBG_Align:CLS:item_align",
            "ZH:OpenBG_Align:CLS:item_coarse_classify",
            "ZH:OpenBG_Align:CLS:title_attribute_matching",
            "ZH:OpenBG_Align:Generate:title_generate",
        ]
    }
    assert [r.getMessage() for r in caplog.records if r.name == "tasks.mixtures"] == [
        f"mixture 'ecom_instruct_held_out': 3 of its 12 tasks have no test data under {REAL}; "
        "using the 9 present. Missing: EN-Lenovo-NER-NER, EN-Reddit_QA-Extract-Extract_QA, "
        "ZH-OpenBG_Align-CLS-item_fine_classify"
    ]
    # The release has test splits only: no training mixture exists there.
    assert tasks.registration().mixtures == ("ecom_instruct_held_out",)
    with pytest.raises(reader.DataError, match="'ecom_instruct_held_in' has no tasks under"):
        tasks.get("ecom_instruct_held_in")
