"""MODEL_DIR (model_dir.py): the checks that it can be a run's folder, the tokenizer a
resume reads there, and the files a run writes beside its checkpoints."""

import pathlib
import types

import pytest

from ecomgpt_jax import checkpointing, model_dir, run_config
from ecomgpt_jax.models import config as model_config


def test_model_dir_that_cannot_be_a_folder(tmp_path):
    (tmp_path / "file").write_text("")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    for folder, what in [
        (tmp_path / "file", "is a file"),
        (tmp_path / "file" / "run", f"is inside {tmp_path / 'file'}, a file"),
        (tmp_path / "dangling", "is a link to nothing"),
    ]:
        with pytest.raises(run_config.UserError) as info:
            model_dir.check(str(folder))
        assert str(info.value) == f"MODEL_DIR {folder} {what}: give a folder"
    model_dir.check(str(tmp_path / "new" / "run"))  # to be made: fine
    model_dir.check("gs://bucket/run")  # not checked here


def test_an_evaluations_folder_is_not_a_model_dir(tmp_path):
    """Its tensorboard/ and logs would mix with the evaluation's (eval refuses a training
    run's folder the other way round)."""
    (tmp_path / "predictions").mkdir()
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(run_config.UserError) as info:
        model_dir.check(str(tmp_path))
    assert str(info.value) == (
        f"MODEL_DIR {tmp_path} is an evaluation's folder (it has metrics.json and "
        "predictions/): give a training run's folder"
    )
    (tmp_path / "metrics.json").unlink()
    model_dir.check(str(tmp_path))  # predictions/ alone: a training run may have one


def test_a_model_dir_that_cannot_be_written_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(run_config.UserError) as info:
        model_dir.make(str(tmp_path / "file" / "run"))
    where = tmp_path / "file" / "run"
    assert str(info.value).startswith(f"MODEL_DIR {where}: cannot write there (")
    model_dir.make(str(tmp_path / "new" / "run"))
    assert (tmp_path / "new" / "run").is_dir()


def test_a_resume_reads_the_tokenizer_model_dir_holds(tmp_path):
    """MODEL_DIR is the tokenizer's folder once it holds a finished checkpoint and the
    copied tokenizer.json; before that (or without the copy) the caller's own choice."""
    assert model_dir.tokenizer_dir(str(tmp_path)) is None  # nothing there yet
    (tmp_path / "tokenizer.json").write_text("{}")
    assert model_dir.tokenizer_dir(str(tmp_path)) is None  # no checkpoint: a fresh start
    (tmp_path / "checkpoints" / "7").mkdir(parents=True)  # a finished local save's name
    assert model_dir.tokenizer_dir(str(tmp_path)) == str(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    assert model_dir.tokenizer_dir(str(tmp_path)) is None


def test_a_resume_does_not_copy_model_dirs_tokenizer_onto_itself(tmp_path, monkeypatch):
    """A resume's HF vocabulary is MODEL_DIR's own tokenizer.json (the only copy, maybe):
    rewriting it in place could cut it short. A fresh start copies the files."""
    source, run_dir = tmp_path / "hf", tmp_path / "run"
    source.mkdir()
    (source / "tokenizer.json").write_text("{}")
    (source / "tokenizer_config.json").write_text("{}")
    written = []
    write = checkpointing.write_atomically

    def recording(path, data):
        written.append(pathlib.Path(str(path)).name)
        write(path, data)

    monkeypatch.setattr(checkpointing, "write_atomically", recording)
    cfg = model_config.get_preset("tiny-bloom")
    vocab = types.SimpleNamespace(path=source / "tokenizer.json")
    model_dir.write_run_files(str(run_dir), cfg, "# config", vocab)
    assert written == ["tokenizer.json", "tokenizer_config.json", "config.gin", "model_config.json"]
    written.clear()
    vocab = types.SimpleNamespace(path=run_dir / "tokenizer.json")
    model_dir.write_run_files(str(run_dir), cfg, "# config", vocab, start=5)
    assert written == ["config.gin", "model_config.json"]
    assert (run_dir / "tokenizer.json").read_text() == "{}"
