"""DataConfig: a task folder name read as its task; every bad field is one DataError
naming it, before any data is read; and the module loads without TensorFlow."""

import processes
import pytest

from ecomgpt_jax.data_config import DataConfig
from ecomgpt_jax.ecominstruct import reader

BASE = dict(
    mixture_or_task_name="ecom_instruct_held_in",
    task_feature_lengths={"inputs": 160, "targets": 32},
    global_batch_size=8,
)


def test_defaults_and_sequence_length():
    config = DataConfig(**BASE)
    assert (config.split, config.seed, config.shuffle, config.pack) == ("train", 0, True, True)
    assert config.num_shards is None
    assert config.sequence_length == 192


def test_a_task_folder_name_names_its_seqio_task():
    """What eval and the prediction files call a task works for training too (it was an
    unknown task or mixture)."""
    folder = DataConfig(mixture_or_task_name="EN-Shop_Review-CLS-review_sentiment")
    assert folder.mixture_or_task_name == "ecom:EN:Shop_Review:CLS:review_sentiment"
    for name in ("ecom_instruct_held_in", "ecom:EN:ABSA:CLS:review_topic_category", "a-b-c-d"):
        assert DataConfig(mixture_or_task_name=name).mixture_or_task_name == name


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"global_batch_size": 0}, "BATCH_SIZE must be an integer >= 1, got 0"),
        ({"global_batch_size": -4}, "BATCH_SIZE must be an integer >= 1, got -4"),
        ({"global_batch_size": 8.0}, "BATCH_SIZE must be an integer >= 1, got 8.0"),
        ({"seed": None}, "DataConfig.seed must be an integer >= 0, got None"),
        ({"pack": "False"}, "DataConfig.pack must be True or False, got 'False'"),
        ({"shuffle": 1}, "DataConfig.shuffle must be True or False, got 1"),
        ({"seed": 1.5}, "DataConfig.seed must be an integer >= 0, got 1.5"),
        (
            {"task_feature_lengths": {"input": 192, "targets": 64}},
            "TASK_FEATURE_LENGTHS needs keys 'inputs' and 'targets' (positive ints), got "
            "{'input': 192, 'targets': 64}",
        ),
        (
            {"task_feature_lengths": {"inputs": 0, "targets": 64}},
            "TASK_FEATURE_LENGTHS needs keys 'inputs' and 'targets' (positive ints), got "
            "{'inputs': 0, 'targets': 64}",
        ),
        (
            {"task_feature_lengths": {"inputs": 96, "targets": 32.5}},
            "TASK_FEATURE_LENGTHS needs keys 'inputs' and 'targets' (positive ints), got "
            "{'inputs': 96, 'targets': 32.5}",
        ),
        ({"num_shards": 0}, "DataConfig.num_shards must be None or an integer >= 1, got 0"),
        ({"num_shards": 3}, "BATCH_SIZE 8 is not divisible by DataConfig.num_shards 3"),
    ],
)
def test_config_errors_are_found_before_any_data_is_read(fields, message):
    with pytest.raises(reader.DataError) as info:
        DataConfig(**{**BASE, **fields})
    assert str(info.value) == message


def test_neither_data_config_nor_train_loads_tensorflow():
    """Importing train.py (which registers DataConfig with gin) loads no TensorFlow, so a
    Ctrl-C in those first seconds is main's one line, not a trace from TensorFlow's
    import (run() imports it, inside main's handling)."""
    statement = "import ecomgpt_jax.data_config, ecomgpt_jax.train"
    assert processes.loaded_by(statement, {"tensorflow", "seqio", "tasks"}) == []
