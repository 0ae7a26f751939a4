"""Tests for tasks/tfds_builder.py: prepared TFDS copies equal the JSON source; staleness;
shuffled training reads; the command line."""

import json
import logging
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds
from conftest import seqio_examples

import tasks
from ecomgpt_jax import input_pipeline as ip
from ecomgpt_jax import partitioning as P
from ecomgpt_jax import vocabularies
from ecomgpt_jax.ecominstruct import instructions, make_sample, reader
from tasks import ecom_instruct, tfds_builder

SAMPLE = make_sample.SAMPLE_DIR
REPO = pathlib.Path(__file__).resolve().parents[1]


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
            # TFDS's write order is not file order (see the module docstring): join on index.
            got = sorted(seqio_examples(name, split), key=lambda ex: int(ex["index"]))
            assert task.num_input_examples(split) == len(got)
            want = json_data[(name, split)]
            assert [int(ex["index"]) for ex in want] == list(range(len(want)))
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
    assert before.endswith(f",code={tfds_builder.format_digest()}")
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


def test_preparing_a_stale_copy_again_renews_it(tmp_path):
    """TFDS keeps a prepared version folder as it is: `prepare` replaced nothing, and the
    stale copy was skipped by every run after the edit that made it stale."""
    tfds.disable_progress_bar()
    root = tmp_path / "root"
    shutil.copytree(SAMPLE / "ABSA", root / "ABSA")
    tfds_builder.prepare(root)
    test_json = root / "ABSA/tasks/EN-ABSA-CLS-review_topic_category/test.json"
    lines = test_json.read_text(encoding="utf-8").splitlines(keepends=True)
    test_json.write_text("".join(lines[:-1]), encoding="utf-8")
    name = "ecom:EN:ABSA:CLS:review_topic_category"
    tasks.register_ecom_tasks(root)
    assert isinstance(tasks.get(name).source, ecom_instruct.JsonInstructionSource)  # stale
    tfds_builder.prepare(root)
    tasks.register_ecom_tasks(root)
    task = tasks.get(name)
    assert isinstance(task.source, seqio.TfdsDataSource)
    got = sorted(int(ex["index"]) for ex in seqio_examples(name, "test"))
    assert task.num_input_examples("test") == len(got) == len(lines) - 1
    assert got == list(range(len(lines) - 1))


def test_the_stale_warnings_command_renews_that_copy(tmp_path, caplog):
    """The warning's command names this copy's folder, task and seed: a copy prepared
    elsewhere (--tfds_data_dir) was left stale by the bare --data_dir it used to give."""
    tfds.disable_progress_bar()
    root, fast = tmp_path / "root", tmp_path / "fast"
    shutil.copytree(SAMPLE / "ABSA", root / "ABSA")
    tfds_builder.prepare(root, fast, seed=1)
    test_json = root / "ABSA/tasks/EN-ABSA-CLS-review_topic_category/test.json"
    test_json.write_text(test_json.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    name = "ecom:EN:ABSA:CLS:review_topic_category"
    with caplog.at_level(logging.WARNING, logger="tasks.tfds_builder"):
        tasks.register_ecom_tasks(root, seed=1, tfds_data_dir=fast)
    assert isinstance(tasks.get(name).source, ecom_instruct.JsonInstructionSource)
    command = caplog.text.split("Renew it: ")[1].splitlines()[0]
    assert command == (
        f"python -m tasks.tfds_builder --data_dir {root} --tfds_data_dir {fast} "
        "--task EN-ABSA-CLS-review_topic_category --seed 1"
    )
    assert tfds_builder.main(shlex.split(command)[3:]) == 0
    tasks.register_ecom_tasks(root, seed=1, tfds_data_dir=fast)
    assert isinstance(tasks.get(name).source, seqio.TfdsDataSource)


def test_a_split_without_examples_is_not_prepared_and_the_rest_is(tmp_path):
    """A blank test.json is valid (a task without test examples yet): TFDS cannot write an
    empty split, and the preparation used to stop there for this and every later task."""
    tfds.disable_progress_bar()
    root = tmp_path / "root"
    shutil.copytree(SAMPLE / "Shop_Review", root / "Shop_Review")
    blank = root / "Shop_Review/tasks/EN-Shop_Review-CLS-review_sentiment/test.json"
    blank.write_text("\n\n")
    assert tfds_builder.main(["--data_dir", str(root)]) == 0
    tasks.register_ecom_tasks(root)
    en = tasks.get("ecom:EN:Shop_Review:CLS:review_sentiment")
    zh = tasks.get("ecom:ZH:Shop_Review:CLS:review_sentiment")
    assert isinstance(en.source, seqio.TfdsDataSource) and en.splits == ("train",)
    assert isinstance(zh.source, seqio.TfdsDataSource) and set(zh.splits) == {"train", "test"}


def test_changed_prompt_code_makes_prepared_copies_stale(tmp_path, monkeypatch, caplog):
    """The JSON files are unchanged, but the code that builds prompts from them is not."""
    tfds.disable_progress_bar()
    root = tmp_path / "root"
    shutil.copytree(SAMPLE / "ABSA", root / "ABSA")
    tfds_builder.prepare(root)
    name = "ecom:EN:ABSA:CLS:review_topic_category"
    tasks.register_ecom_tasks(root)
    assert isinstance(tasks.get(name).source, seqio.TfdsDataSource)

    edited = tmp_path / "instructions.py"
    source = pathlib.Path(instructions.__file__).read_text(encoding="utf-8")
    edited.write_text(source.replace("Below is an instruction", "Here is an instruction", 1))
    monkeypatch.setattr(tfds_builder, "FORMAT_SOURCES", (edited, pathlib.Path(reader.__file__)))
    with caplog.at_level(logging.WARNING, logger="tasks.tfds_builder"):
        tasks.register_ecom_tasks(root)
    assert (
        f"{root}/_tfds/ecom_instruct/EN-ABSA-CLS-review_topic_category/1.0.0: prepared TFDS "
        "data of task EN-ABSA-CLS-review_topic_category is stale (JSON files or prompt code "
        "changed); reading JSON."
    ) in caplog.text
    assert isinstance(tasks.get(name).source, ecom_instruct.JsonInstructionSource)


def test_shuffled_training_read_of_prepared_data(tmp_path):
    """Training reads through InputIterator with shuffle=True (shuffle_files=True for TFDS)."""
    tfds.disable_progress_bar()
    root = tmp_path / "root"
    shutil.copytree(SAMPLE / "Shop_Review", root / "Shop_Review")
    tfds_builder.prepare(root)
    tasks.register_ecom_tasks(root)
    mixture = tasks.get("ecom_instruct_held_in")
    assert [type(t.source) for t in mixture.tasks] == [seqio.TfdsDataSource] * 2
    # Each training row, unpacked: prompt tokens, answer tokens, EOS, padding (id 0).
    vocab = vocabularies.make_vocabulary()
    where = {}
    for folder, info in reader.discover_tasks(root).items():
        for ins in instructions.task_instructions(info, "train"):
            tokens = [*vocab.encode(ins.prompt), *vocab.encode(ins.answer), vocab.eos_id]
            where[tuple(tokens)] = (folder, ins.index)
    assert max(map(len, where)) <= 256 + 16  # no row is cut
    config = ip.DataConfig(
        mixture_or_task_name="ecom_instruct_held_in",
        task_feature_lengths={"inputs": 256, "targets": 16},
        global_batch_size=8,
        pack=False,
    )
    mesh = P.make_mesh(P.MeshConfig((1, 1, 1)), jax.devices()[:1])
    assert config.shuffle

    def first_batch():
        batch = ip.InputIterator(config, mesh).local_batch()
        return [where[tuple(row[row > 0].tolist())] for row in batch["decoder_input_tokens"]]

    rows = first_batch()
    assert len(set(rows)) == 8
    assert {folder for folder, _ in rows} == {
        "EN-Shop_Review-CLS-review_sentiment",
        "ZH-Shop_Review-CLS-review_sentiment",
    }
    assert max(index for _, index in rows) >= 8  # not the first examples of the files
    assert first_batch() == rows  # the same seed draws the same batch


def test_cli_bad_data_dir_is_one_error_line(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert tfds_builder.main(["--data_dir", str(missing)]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {missing}: data directory does not exist\n"
    assert captured.out == ""
    # As a module: the same line last, no traceback, and no runpy warning about the module
    # that `import tasks` had already imported.
    proc = subprocess.run(
        [sys.executable, "-m", "tasks.tfds_builder", "--data_dir", str(missing)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == f"error: {missing}: data directory does not exist"
    assert "Traceback" not in proc.stderr and "RuntimeWarning" not in proc.stderr
    assert proc.stdout == ""


def test_cli_takes_seqio_task_names(tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(SAMPLE / "Multi_CPR", root / "Multi_CPR")
    argv = ["--data_dir", str(root), "--tfds_data_dir", str(tmp_path / "tfds")]
    assert tfds_builder.main([*argv, "--task", "ecom:ZH:Multi_CPR:Extract:product_select_2"]) == 0
    prepared = tfds_builder.prepared_dir(tmp_path / "tfds", "ZH-Multi_CPR-Extract-product_select_2")
    # (TFDS's own progress lines come first.)
    assert capsys.readouterr().out.endswith(f"\n{prepared}\n") and prepared.is_dir()


def test_tfds_prepare_rejects_unknown_task(tmp_path):
    with pytest.raises(reader.DataError) as e:
        tfds_builder.prepare(SAMPLE, tmp_path, folders=["EN-X-CLS-y"])
    # The message names the missing folder and the ones there are, so a user who gave the
    # dataset's outer folder (ABSA) sees the names it expects.
    have = ", ".join(reader.discover_tasks(SAMPLE))
    assert f"no such task folder(s): EN-X-CLS-y (task folders here: {have})" in str(e.value)


def test_cli_names_itself_and_the_expected_layout(tmp_path, capsys):
    with pytest.raises(SystemExit):
        tfds_builder.main(["--help"])
    assert capsys.readouterr().out.startswith("usage: python -m tasks.tfds_builder ")
    # An empty root used to prepare nothing and exit 0.
    assert tfds_builder.main(["--data_dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path}: no task folders found; expected "
        "<root>/<Dataset>/tasks/<LANG>-<Dataset>-<TYPE>-<name>/meta-info.json\n"
    )
