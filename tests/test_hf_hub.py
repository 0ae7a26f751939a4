"""Hub paths (ecomgpt_jax/hf_hub.py): parsing, what is fetched, one-line errors, and the
entry points that take them (train's INIT_FROM_HF, eval's HF_DIR, convert's --hf_dir /
--tokenizer_dir). The tests have no network: `huggingface_hub.snapshot_download` is
replaced by a stand-in that records its arguments and returns a local folder."""

import dataclasses
import json
import pathlib
import types

import gin
import huggingface_hub
import jax
import numpy as np
import pytest
from huggingface_hub.utils import filter_repo_objects
from trainer_helpers import run_in_process, train_in_process

from ecomgpt_jax import checkpointing, convert, hf_hub
from ecomgpt_jax import eval as eval_main
from ecomgpt_jax.ecominstruct import make_sample
from ecomgpt_jax.models import config as model_config
from ecomgpt_jax.models import decoder, hf_io

# A tiny BLOOM for the bundled SentencePiece vocabulary, narrower than tiny_bloom.gin's,
# so that a run's model_config.json shows where its architecture came from.
SMALL = dataclasses.replace(
    model_config.get_preset("tiny-bloom"), hidden=32, heads=4, kv_heads=4, head_dim=8, mlp_dim=128
)


class FakeHub:
    """snapshot_download's stand-in: the snapshot is `folder`, or `error` is raised."""

    def __init__(self, folder, error=None):
        self.folder, self.error, self.calls = folder, error, []

    def __call__(self, repo_id, **kwargs):
        self.calls.append((repo_id, kwargs))
        if self.error is not None:
            raise self.error
        return str(self.folder)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """SMALL with random weights as a HF folder (config.json + model.safetensors)."""
    path = tmp_path_factory.mktemp("hub_snapshot")
    rs = np.random.RandomState(0)
    host = jax.tree.map(
        lambda a: (0.02 * rs.normal(size=a.shape)).astype(np.float32),
        decoder.abstract_params(SMALL),
    )
    hf_io.save_hf(SMALL, host, path)
    (path / "tokenizer.json").write_text('{"stand": "in"}')  # copied along by convert
    return path, host


@pytest.fixture
def in_repo(monkeypatch):
    """The repository root as the working folder (gin file paths), gin cleared after."""
    monkeypatch.chdir(pathlib.Path(__file__).resolve().parent.parent)
    yield
    gin.clear_config()


@pytest.fixture
def hub(monkeypatch, hf_folder):
    fake = FakeHub(hf_folder[0])
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return fake


@pytest.mark.parametrize(
    "path, parsed",
    [
        ("hf://bigscience/bloomz-560m", ("bigscience/bloomz-560m", None)),
        ("hf://Qwen/Qwen2.5-0.5B-Instruct@main", ("Qwen/Qwen2.5-0.5B-Instruct", "main")),
        ("hf://gpt2@a1b2c3", ("gpt2", "a1b2c3")),
    ],
)
def test_hub_paths_name_a_repository_and_a_revision(path, parsed):
    assert hf_hub.is_hub_path(path)
    assert hf_hub.parse(path) == parsed


@pytest.mark.parametrize("path", ["hf://", "hf://a/b/c", "hf://org/name@", "hf:///abs", "hf://a b"])
def test_a_malformed_hub_path_is_one_line(path, hub):
    with pytest.raises(hf_hub.HubError) as info:
        hf_hub.local_dir(path)
    assert hub.calls == []  # refused before any download
    assert str(info.value) == (
        f"{path}: not a hub path; expected hf://ORG/NAME or hf://ORG/NAME@REVISION "
        "(a branch, tag or commit)"
    )


MODEL = {"allow_patterns": list(hf_hub.MODEL_FILES), "ignore_patterns": ["*/*"]}
TOKENIZER = {"allow_patterns": list(hf_hub.TOKENIZER_FILES), "ignore_patterns": ["*/*"]}


def test_only_top_level_config_tokenizer_and_safetensors_files_are_fetched(hub):
    """The patterns as the hub library applies them: no pickles, no other weights, nothing
    from subfolders; for a tokenizer, its files alone (not gigabytes of weights)."""
    files = [
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "merges.txt",
        "vocab.json",
        "chat_template.jinja",
        "pytorch_model.bin",
        "flax_model.msgpack",
        "onnx/model.safetensors",
        "onnx/config.json",
        "README.md",
    ]

    def fetched(patterns):
        return list(filter_repo_objects(files, **patterns))

    assert fetched(MODEL) == files[:10]
    assert fetched(TOKENIZER) == [files[i] for i in (1, 4, 5, 6, 7, 8, 9)]
    assert hf_hub.local_dir("hf://org/tiny@v2") == str(hub.folder)
    assert hf_hub.local_dir("hf://org/tok", hf_hub.TOKENIZER_FILES) == str(hub.folder)
    assert hub.calls == [
        ("org/tiny", {"revision": "v2", **MODEL}),
        ("org/tok", {"revision": None, **TOKENIZER}),
    ]


def test_local_paths_are_left_alone(hub, tmp_path):
    for path in (str(tmp_path), "runs/x", None):
        assert hf_hub.local_dir(path) == path
    assert hub.calls == []


def test_a_failed_download_is_one_line(monkeypatch, tmp_path):
    error = OSError("We couldn't connect to 'https://huggingface.co'.\nCheck your connection.")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", FakeHub(tmp_path, error))
    with pytest.raises(hf_hub.HubError) as info:
        hf_hub.local_dir("hf://org/tiny")
    assert str(info.value) == (
        "hf://org/tiny: cannot download it from the Hugging Face hub (OSError: We couldn't "
        "connect to 'https://huggingface.co'.)"
    )


def test_training_starts_from_hub_weights_and_resumes_without_the_hub(
    hub, hf_folder, tmp_path, monkeypatch, capsys
):
    run_dir = tmp_path / "run"
    args = ["--gin.INIT_FROM_HF='hf://org/tiny'", "--gin.EVAL_LOSS_EVERY_STEPS=0"]
    train_in_process(run_dir, *args, "--gin.TRAIN_STEPS=1")
    assert hub.calls == [("org/tiny", {"revision": None, **MODEL})]
    trained = checkpointing.load_model_config(run_dir)  # the weights' architecture
    fields = ("vocab_size", "hidden", "layers", "heads", "mlp_dim")
    assert [getattr(trained, f) for f in fields] == [getattr(SMALL, f) for f in fields]
    out = capsys.readouterr().out
    assert "hidden=96 (weights: 32)" in out and "finished step 1" in out
    # The resume reads MODEL_DIR only: no download (the hub is unreachable now).
    monkeypatch.setattr(huggingface_hub, "snapshot_download", FakeHub(None, OSError("offline")))
    train_in_process(run_dir, *args, "--gin.TRAIN_STEPS=2")
    assert "finished step 2" in capsys.readouterr().out
    # A fresh run needs the hub: one line naming the macro.
    assert run_in_process(tmp_path / "fresh", *args) == (
        "error: INIT_FROM_HF hf://org/tiny: cannot download it from the Hugging Face hub "
        "(OSError: offline)"
    )


def test_evaluation_of_a_hub_model_equals_that_of_its_folder(hub, hf_folder, tmp_path, in_repo):
    sample = make_sample.SAMPLE_DIR
    common = [
        f"DATA_DIR = '{sample}'",
        "MIXTURE_OR_TASK_NAME = 'ecom:EN:ABSA:CLS:review_topic_category'",
        "EVAL_MAX_EXAMPLES = 2",
        "DecodeConfig.max_new_tokens = 4",
    ]
    outputs = {}
    for name, source in (("hub", "hf://org/tiny@main"), ("folder", str(hf_folder[0]))):
        out = tmp_path / name
        bindings = [f"HF_DIR = '{source}'", f"EVAL_DIR = '{out}'", *common]
        eval_main.run_eval(["gin_configs/eval.gin"], bindings, progress=False)
        outputs[name] = json.loads((out / "metrics.json").read_text())
    assert outputs["hub"] == outputs["folder"]
    assert hub.calls[0][0] == "org/tiny" and hub.calls[0][1]["revision"] == "main"


def test_a_hub_model_eval_cannot_download_is_one_line(monkeypatch, tmp_path, in_repo):
    monkeypatch.setattr(huggingface_hub, "snapshot_download", FakeHub(None, OSError("offline")))
    with pytest.raises(eval_main.evaluation.EvalError) as info:
        eval_main.run_eval(["gin_configs/eval.gin"], ["HF_DIR = 'hf://org/gone'"])
    assert str(info.value) == (
        "HF_DIR hf://org/gone: cannot download it from the Hugging Face hub (OSError: offline)"
    )


def test_convert_takes_hub_paths(hub, hf_folder, tmp_path, monkeypatch, capsys):
    _, host = hf_folder
    out = tmp_path / "orbax"
    assert convert.main(["hf-to-orbax", "--hf_dir", "hf://org/tiny", "--output", str(out)]) == 0
    params = checkpointing.restore_params(out, decoder.abstract_params(SMALL))
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(host), strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)
    back = tmp_path / "back"
    argv = ["orbax-to-hf", "--checkpoint", str(out), "--output", str(back)]
    assert convert.main([*argv, "--tokenizer_dir", "hf://org/tiny"]) == 0
    assert (back / "tokenizer.json").read_text() == '{"stand": "in"}'
    assert hub.calls == [("org/tiny", {"revision": None, **MODEL})] + [
        ("org/tiny", {"revision": None, **TOKENIZER})
    ]
    monkeypatch.setattr(huggingface_hub, "snapshot_download", FakeHub(None, OSError("offline")))
    capsys.readouterr()
    argv = ["hf-to-orbax", "--hf_dir", "hf://org/gone", "--output", str(tmp_path / "x")]
    assert convert.main(argv) == 2
    assert capsys.readouterr().err == (
        "error: hf://org/gone: cannot download it from the Hugging Face hub (OSError: offline)\n"
    )


class FakeApi:
    """huggingface_hub.HfApi's stand-in: records the calls; `error` fails the upload."""

    calls: list = []
    error: Exception | None = None

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", sorted(p.name for p in _files(kwargs)), kwargs))
        if self.error is not None:
            raise self.error
        return types.SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/c/1")


def _files(kwargs):
    return pathlib.Path(kwargs["folder_path"]).iterdir()


def test_an_export_goes_to_the_hub(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(FakeApi, "calls", [])
    orbax = tmp_path / "orbax"
    assert convert.main(["hf-to-orbax", "--hf_dir", "hf://org/tiny", "--output", str(orbax)]) == 0
    export = ["orbax-to-hf", "--checkpoint", str(orbax), "--tokenizer_dir", "hf://org/tiny"]
    argv = [*export, "--output", str(tmp_path / "a"), "--push_to_hub", "me/ecomgpt", "--private"]
    assert convert.main(argv) == 0
    files = ["config.json", "model.safetensors", "tokenizer.json"]
    assert FakeApi.calls == [
        ("create_repo", "me/ecomgpt", {"repo_type": "model", "private": True, "exist_ok": True}),
        (
            "upload_folder",
            files,
            {
                "repo_id": "me/ecomgpt",
                "repo_type": "model",
                "folder_path": str(tmp_path / "a"),
                "commit_message": "Upload an ecomgpt-jax export",
            },
        ),
    ]
    assert capsys.readouterr().out.splitlines()[-1] == (
        "uploaded: https://huggingface.co/me/ecomgpt/c/1"
    )
    # Without --private a new repository takes its organisation's default (None, not False).
    FakeApi.calls.clear()
    assert convert.main([*export, "--output", str(tmp_path / "p"), "--push_to_hub", "me/y"]) == 0
    assert FakeApi.calls[0] == (
        "create_repo",
        "me/y",
        {"repo_type": "model", "private": None, "exist_ok": True},
    )
    capsys.readouterr()
    # A failed upload is one line, and the export stays for another try.
    monkeypatch.setattr(FakeApi, "error", OSError("401 Client Error: Unauthorized\nmore"))
    assert convert.main([*export, "--output", str(tmp_path / "b"), "--push_to_hub", "me/x"]) == 2
    assert capsys.readouterr().err == (
        f"error: --push_to_hub me/x: upload failed (OSError: 401 Client Error: Unauthorized); "
        f"{tmp_path / 'b'} is kept, try again\n"
    )
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == files
    # A repository id that cannot be one: refused before anything is written.
    assert convert.main([*export, "--output", str(tmp_path / "c"), "--push_to_hub", "x"]) == 2
    assert capsys.readouterr().err == (
        "error: --push_to_hub x: expected a repository id, ORG/NAME\n"
    )
    assert not (tmp_path / "c").exists()
