"""Tests for registering the SeqIO tasks and mixtures (tasks/__init__.py: register_ecom_tasks,
get, registration): at import, again for another root, errors, empty data files."""

import shutil

import pytest
import seqio
from conftest import SAMPLE_TASKS

import tasks
from ecomgpt_jax.ecominstruct import make_sample, reader

SAMPLE = make_sample.SAMPLE_DIR
# What `import tasks` registered (test modules are imported before any test runs).
IMPORT_STATE = tasks.registration()


pytestmark = pytest.mark.usefixtures("sample_tasks")


def test_import_registers_the_default_root():
    assert IMPORT_STATE.data_dir == reader.default_data_dir()
    assert IMPORT_STATE.error is None
    # conftest keeps ECOMGPT_DATA_DIR out of the environment: the default is the sample.
    assert list(IMPORT_STATE.tasks) == SAMPLE_TASKS


def test_register_is_idempotent_and_replaces_the_previous_root(tmp_path):
    assert tasks.register_ecom_tasks(SAMPLE) == SAMPLE_TASKS
    assert tasks.register_ecom_tasks(SAMPLE) == SAMPLE_TASKS
    root = tmp_path / "root"
    shutil.copytree(SAMPLE / "ABSA", root / "ABSA")
    assert tasks.register_ecom_tasks(root) == ["ecom:EN:ABSA:CLS:review_topic_category"]
    assert "ecom:EN:Shop_Review:CLS:review_sentiment" not in seqio.TaskRegistry.names()
    with pytest.raises(reader.DataError, match="no task folder 'EN-Shop_Review-CLS-review_sen"):
        tasks.get("ecom:EN:Shop_Review:CLS:review_sentiment")


def test_bad_root_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown task or mixture 'bogus'"):
        tasks.get("bogus")
    missing = tmp_path / "nope"
    with pytest.raises(reader.DataError) as error:
        tasks.register_ecom_tasks(missing)
    assert str(error.value) == f"{missing}: data directory does not exist"
    state = tasks.registration()
    assert (state.data_dir, state.tasks, state.error) == (missing, (), error.value)
    # The sample's mixtures went with the old registration: get() repeats why, rather
    # than call a mixture it lists as an EcomInstruct mixture "unknown".
    for name in ("ecom_instruct_held_in", "ecom:EN:ABSA:CLS:review_topic_category"):
        with pytest.raises(reader.DataError) as error:
            tasks.get(name)
        assert str(error.value) == (
            f"no task or mixture {name!r}: registering EcomInstruct tasks failed: "
            f"{missing}: data directory does not exist"
        )
    # A later successful registration clears the error.
    tasks.register_ecom_tasks(SAMPLE)
    assert tasks.registration().error is None
    assert tasks.get("ecom_instruct_held_in").name == "ecom_instruct_held_in"


def test_empty_data_files_are_named_once(tmp_path, caplog):
    import logging

    for dataset in ("Shop_Review", "Multi_CPR"):
        shutil.copytree(SAMPLE / dataset, tmp_path / dataset)
    tasks_dir = tmp_path / "Shop_Review/tasks"
    (tasks_dir / "EN-Shop_Review-CLS-review_sentiment/train.json").write_bytes(b"")
    # Blank lines are no examples either (the reader skips them).
    (tasks_dir / "ZH-Shop_Review-CLS-review_sentiment/test.json").write_text(
        "\ufeff\n \r\n", encoding="utf-8"
    )
    with caplog.at_level(logging.WARNING, logger="tasks"):
        tasks.register_ecom_tasks(tmp_path)
    warnings = [r.getMessage() for r in caplog.records if "empty data files" in r.getMessage()]
    assert warnings == [
        "empty data files (no examples, left out of mixtures): "
        "EN-Shop_Review-CLS-review_sentiment/train.json, "
        "ZH-Shop_Review-CLS-review_sentiment/test.json"
    ]


def test_mixtures_follow_a_reregistration(tmp_path):
    """Mixtures hold Task objects: re-registering must rebuild them with the new tasks."""
    tasks.register_ecom_tasks(SAMPLE, seed=5)
    new_task = seqio.get_mixture_or_task("ecom:EN:Shop_Review:CLS:review_sentiment")
    assert new_task in tasks.get("ecom_instruct_held_in").tasks
