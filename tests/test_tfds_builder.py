"""Tests for tasks/tfds_builder.py: prepared TFDS copies equal the JSON source; staleness."""

import json
import logging
import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds
from conftest import seqio_examples

import tasks
from ecomgpt_jax.ecominstruct import make_sample, reader
from tasks import ecom_instruct, tfds_builder

SAMPLE = make_sample.SAMPLE_DIR


pytestmark = pytest.mark.usefixtures("sample_tasks")


def test_tfds_builder_prepares_identical_examples(tmp_path, caplog):
    tfds.disable_progress_bar()
    root = tmp_path / "root"
    shutil.copytree(SAMPLE / "Shop_Review", root / "Shop_Review")
    shutil.copytree(SAMPLE / "Multi_CPR", root / "Multi_CPR")
    names = tasks.register_ecom_tasks(root)
    json_data = {(n, s): seqio_examples(n, s) for n in names for s in tasks.get(n).splits}
    assert all(isinstance(tasks.get(n).source, ecom_instruct.JsonInstructionSource) for n in names)

    prepared = tfds_builder.prepare(root)
    assert prepared == [
        root / "_tfds/ecom_instruct" / f / "1.0.0"
        for f in [
            "EN-Shop_Review-CLS-review_sentiment",
            "ZH-Multi_CPR-Extract-product_select_2",
            "ZH-Shop_Review-CLS-review_sentiment",
        ]
    ]
    assert tasks.register_ecom_tasks(root) == names
    for name in names:
        task = tasks.get(name)
        assert isinstance(task.source, seqio.TfdsDataSource)
        for split in task.splits:
            got = seqio_examples(name, split)
            assert task.num_input_examples(split) == len(got)
            want = json_data[(name, split)]
            assert len(got) == len(want)
            for a, b in zip(got, want, strict=True):
                assert set(a) == set(b)
                for key in a:
                    assert np.asarray(a[key]).tolist() == np.asarray(b[key]).tolist(), (name, key)

    # Any edit makes the prepared copy stale (back to JSON, with a warning): a same-size
    # change of one data byte, and a changed definition in meta-info.json.
    folder = root / "Multi_CPR/tasks/ZH-Multi_CPR-Extract-product_select_2"
    stale = "prepared TFDS data of task ZH-Multi_CPR-Extract-product_select_2 is stale"
    before = json.loads((prepared[1] / "dataset_info.json").read_text())["configDescription"]
    assert before == tfds_builder.fingerprint(reader.discover_tasks(root)[folder.name])
    assert before.startswith("meta-info.json=") and ",test.json=" in before
    original = (folder / "test.json").read_bytes()
    meta = json.loads((folder / "meta-info.json").read_text(encoding="utf-8"))
    meta["defi"] += " (edited)"
    edits = [
        ("test.json", original.replace(b"}", b" }", 1).replace(b", ", b",", 1)),
        ("meta-info.json", json.dumps(meta, ensure_ascii=False).encode()),
    ]
    for name, data in edits:
        saved = (folder / name).read_bytes()
        if name == "test.json":
            assert len(data) == len(saved) and data != saved
        (folder / name).write_bytes(data)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tasks.tfds_builder"):
            tasks.register_ecom_tasks(root)
        assert stale in caplog.text, name
        source = tasks.get("ecom:ZH:Multi_CPR:Extract:product_select_2").source
        assert isinstance(source, ecom_instruct.JsonInstructionSource), name
        (folder / name).write_bytes(saved)
    # Restored files: the prepared copy is current again.
    tasks.register_ecom_tasks(root)
    assert isinstance(
        tasks.get("ecom:ZH:Multi_CPR:Extract:product_select_2").source, seqio.TfdsDataSource
    )


def test_tfds_prepare_rejects_unknown_task(tmp_path):
    with pytest.raises(reader.DataError, match="no such task folder"):
        tfds_builder.prepare(SAMPLE, tmp_path, folders=["EN-X-CLS-y"])
