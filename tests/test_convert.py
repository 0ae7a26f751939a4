"""HF <-> orbax conversion: CLI, exact round trips through transformers, refusals."""

import dataclasses
import json
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from hf_reference import make_hf_model

from ecomgpt_jax import checkpointing, convert, hf_hub
from ecomgpt_jax.models import config as mc
from ecomgpt_jax.models import decoder, hf_io

TOL = 1e-4


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


IDS = np.random.RandomState(0).randint(0, 1024, (2, 20))


@pytest.mark.parametrize("preset", ["tiny-bloom", "tiny-qwen2", "tiny-llama"])
def test_cli_round_trip_reproduces_transformers_logits(tmp_path, preset):
    hf_model = make_hf_model(preset)
    hf_model.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").write_text('{"fake": "tokenizer"}')
    ref = hf_logits(hf_model, IDS)

    assert (
        convert.main(
            ["hf-to-orbax", "--hf_dir", str(tmp_path / "hf"), "--output", str(tmp_path / "ox")]
        )
        == 0
    )
    assert (tmp_path / "ox" / "params").is_dir()
    cfg = checkpointing.load_model_config(tmp_path / "ox")
    assert cfg.hf_model_type == mc.get_preset(preset).hf_model_type
    # The trainer's restore path reads the converted checkpoint.
    params = checkpointing.restore_params(tmp_path / "ox", decoder.abstract_params(cfg))
    ours = np.asarray(jax.jit(decoder.Decoder(cfg).apply)({"params": params}, jnp.asarray(IDS)))
    assert np.abs(ours - ref).max() <= TOL

    argv = ["orbax-to-hf", "--checkpoint", str(tmp_path / "ox"), "--output", str(tmp_path / "back")]
    assert convert.main([*argv, "--tokenizer_dir", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "back" / "tokenizer.json").read_text() == '{"fake": "tokenizer"}'
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert type(back) is type(hf_model)
    assert np.abs(hf_logits(back, IDS) - ref).max() <= TOL
    # Same tensors, bit for bit (float32 all the way).
    for name, tensor in hf_model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue
        np.testing.assert_array_equal(back.state_dict()[name].numpy(), tensor.numpy(), name)


def test_pickle_checkpoints_are_refused(tmp_path, capsys):
    make_hf_model("tiny-qwen2").config.to_json_file(tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(hf_io.CheckpointFormatError, match="arbitrary code.*safe_serialization"):
        hf_io.load_hf_params(tmp_path)
    argv = ["hf-to-orbax", "--hf_dir", str(tmp_path), "--output", str(tmp_path / "o")]
    assert convert.main(argv) == 2
    assert "pytorch_model.bin" in capsys.readouterr().err


def test_unsupported_architecture_is_named(tmp_path, capsys):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    )
    with pytest.raises(mc.ConfigError, match=r"config.json.*'gpt2'.*GPT2LMHeadModel"):
        hf_io.load_hf_params(tmp_path)
    argv = ["hf-to-orbax", "--hf_dir", str(tmp_path), "--output", str(tmp_path / "o")]
    assert convert.main(argv) == 2
    assert "GPT2LMHeadModel" in capsys.readouterr().err


def test_existing_output_and_missing_config(tmp_path):
    hf_model = make_hf_model("tiny-llama")
    hf_model.save_pretrained(tmp_path / "hf")
    (tmp_path / "out" / "params").mkdir(parents=True)
    with pytest.raises(hf_io.CheckpointFormatError, match="already exists"):
        convert.hf_to_orbax(tmp_path / "hf", tmp_path / "out")
    shutil.rmtree(tmp_path / "out")
    convert.hf_to_orbax(tmp_path / "hf", tmp_path / "out")
    (tmp_path / "out" / "model_config.json").unlink()
    argv = ["orbax-to-hf", "--checkpoint", str(tmp_path / "out"), "--output", str(tmp_path / "b")]
    with pytest.raises(mc.ConfigError, match="model_config.json"):
        convert.orbax_to_hf(tmp_path / "out", tmp_path / "b")
    # --preset supplies the config instead: the export is the source model, bit for bit.
    assert convert.main([*argv, "--preset", "tiny-llama"]) == 0
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "b").eval()
    assert type(back) is type(hf_model)
    assert back.state_dict().keys() == hf_model.state_dict().keys()
    for name, tensor in hf_model.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[name].numpy(), tensor.numpy(), name)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A tiny-llama HF folder (`hf`) and its orbax conversion (`ox`)."""
    root = tmp_path_factory.mktemp("converted")
    make_hf_model("tiny-llama").save_pretrained(root / "hf")
    convert.hf_to_orbax(root / "hf", root / "ox")
    return root


def _cli(capsys, *argv) -> tuple[int, str]:
    status = convert.main([str(a) for a in argv])
    return status, capsys.readouterr().err


def test_orbax_to_hf_refusals_come_before_anything_is_written(converted, tmp_path, capsys):
    argv = ["orbax-to-hf", "--checkpoint", converted / "ox", "--output"]
    # A stale shard index would outlive a new single-file export (and win on import).
    old = tmp_path / "old"
    old.mkdir()
    (old / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    assert _cli(capsys, *argv, old) == (
        2,
        f"error: --output {old} already holds a model (model.safetensors.index.json); "
        "choose an empty folder\n",
    )
    assert [p.name for p in old.iterdir()] == ["model.safetensors.index.json"]
    (tmp_path / "file").write_text("x")
    assert _cli(capsys, *argv, tmp_path / "file") == (
        2,
        f"error: --output {tmp_path / 'file'} is a file, not a folder\n",
    )
    # Without tokenizer files: refused before the weights are written.
    (tmp_path / "no_tokenizer").mkdir()
    new = tmp_path / "new"
    assert _cli(capsys, *argv, new, "--tokenizer_dir", tmp_path / "no_tokenizer") == (
        2,
        f"error: --tokenizer_dir {tmp_path / 'no_tokenizer'}: none of "
        + ", ".join(hf_hub.TOKENIZER_FILES)
        + " found\n",
    )
    assert not new.exists()
    # An empty existing folder is fine.
    new.mkdir()
    assert _cli(capsys, *argv, new) == (0, "")
    assert sorted(p.name for p in new.iterdir()) == ["config.json", "model.safetensors"]


def test_hf_to_orbax_names_a_broken_file(converted, tmp_path, capsys):
    hf = tmp_path / "hf"
    shutil.copytree(converted / "hf", hf)
    argv = ["hf-to-orbax", "--hf_dir", hf, "--output", tmp_path / "out"]
    (hf / "config.json").write_text('{\n "model_type": ,\n}')
    assert _cli(capsys, *argv) == (
        2,
        f"error: {hf}/config.json:2: not valid JSON (Expecting value, column 16)\n",
    )
    shutil.copy(converted / "hf" / "config.json", hf / "config.json")
    weights = (hf / "model.safetensors").read_bytes()
    (hf / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    assert _cli(capsys, *argv) == (
        2,
        f"error: {hf}/model.safetensors: damaged safetensors file (Error while deserializing "
        "header: incomplete metadata, file not fully covered)\n",
    )
    assert not (tmp_path / "out").exists()


def test_orbax_to_hf_missing_checkpoint_is_said_first(tmp_path, capsys):
    """Not "no model_config.json found at or above it; pass --preset" for a mistyped path."""
    missing = tmp_path / "nope"
    argv = ["orbax-to-hf", "--checkpoint", missing, "--output", tmp_path / "b"]
    expect = (2, f"error: checkpoint path {missing} does not exist\n")
    assert _cli(capsys, *argv) == expect
    assert _cli(capsys, *argv, "--preset", "tiny-llama") == expect
    assert not (tmp_path / "b").exists()


def test_help_keeps_the_usage_lines(capsys):
    with pytest.raises(SystemExit):
        convert.main(["--help"])
    lines = capsys.readouterr().out.splitlines()
    assert "    python -m ecomgpt_jax.convert orbax-to-hf --checkpoint CKPT --output DIR" in lines
    with pytest.raises(SystemExit):
        convert.main(["orbax-to-hf", "--help"])
    assert "converted directory, training run directory or step" in capsys.readouterr().out


def test_orbax_to_hf_refuses_both_preset_and_model_config(tmp_path, capsys):
    """--preset and --model_config both name the architecture: argparse refuses the pair
    (one used to win silently) before anything is read or written."""
    argv = ["orbax-to-hf", "--checkpoint", str(tmp_path / "ox"), "--output", str(tmp_path / "b")]
    with pytest.raises(SystemExit) as e:
        convert.main([*argv, "--preset", "tiny-llama", "--model_config", str(tmp_path / "c")])
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (
        "python -m ecomgpt_jax.convert orbax-to-hf: error: argument --model_config: not "
        "allowed with argument --preset"
    )
    assert not (tmp_path / "b").exists()


def test_orbax_to_hf_of_a_damaged_checkpoint_is_one_line(converted, tmp_path, capsys):
    """Cut-short data files or a lost _METADATA: one line saying so, not tensorstore's trace
    nor "the checkpoint lacks" every parameter; no output folder."""
    ox = tmp_path / "ox"
    shutil.copytree(converted / "ox", ox)
    argv = ["orbax-to-hf", "--checkpoint", ox, "--output", tmp_path / "b"]
    damaged = f"error: {ox / 'params'}: checkpoint cannot be read, damaged or incomplete"
    for data_file in (ox / "params").glob("ocdbt.process_*/d/*"):
        data_file.write_bytes(data_file.read_bytes()[:20])
    status, err = _cli(capsys, *argv)
    assert status == 2
    assert re.fullmatch(
        rf'{re.escape(damaged)} \([A-Z_]+: Error reading "[^"]+" in OCDBT database at local '
        rf'file "{re.escape(str(ox / "params"))}/": [^\n]+\)\n',
        err,
    )
    (ox / "params" / "_METADATA").unlink()
    assert _cli(capsys, *argv) == (2, f"{damaged} (no readable metadata in params/)\n")
    assert not (tmp_path / "b").exists()


def test_hf_to_orbax_refuses_an_unwritable_output_before_reading(converted, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "out"
    argv = ["hf-to-orbax", "--hf_dir", tmp_path / "no_model_here", "--output", out]
    # The output is checked first: the (missing) model is never looked at.
    assert _cli(capsys, *argv) == (
        2,
        f"error: --output {out} is inside {tmp_path / 'file'}, a file\n",
    )


def test_a_failed_hf_to_orbax_removes_only_the_folders_it_made(converted, tmp_path, monkeypatch):
    """Folders it made go (parents included); a folder that was there stays as it was,
    without orbax's half-written params; --output is checked before a hub download."""
    missing = tmp_path / "no_model_here"
    with pytest.raises(hf_io.CheckpointFormatError):
        convert.hf_to_orbax(missing, tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    (mine / "params.orbax-checkpoint-tmp").mkdir()  # as a failed save leaves it
    with pytest.raises(hf_io.CheckpointFormatError):
        convert.hf_to_orbax(missing, mine)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert (mine / "notes.txt").read_text() == "keep"

    def no_download(*args, **kwargs):
        pytest.fail("downloaded before --output was checked")

    monkeypatch.setattr(hf_hub, "local_dir", no_download)
    (tmp_path / "file").write_text("x")
    argv = ["hf-to-orbax", "--hf_dir", "hf://org/model", "--output", str(tmp_path / "file")]
    assert convert.main(argv) == 2


def test_hf_to_orbax_that_cannot_write_stops_with_one_line(converted, tmp_path):
    """A full disk (here: RLIMIT_FSIZE, writes fail with EFBIG) while the parameters are
    written: one error line and exit 2. Before, the failed asynchronous save left orbax
    threads running and the process never exited, after two traces."""
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, resource.RLIM_INFINITY))\n"
        "from ecomgpt_jax import convert\n"
        "sys.exit(convert.main(sys.argv[1:]))\n"
    )
    out = tmp_path / "out"
    argv = ["hf-to-orbax", "--hf_dir", str(converted / "hf"), "--output", str(out)]
    proc = subprocess.run(
        [sys.executable, "-c", script, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=pathlib.Path(__file__).parent.parent,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = f"error: {out / 'params'}: could not be written (File too large)"
    assert proc.stderr.strip().splitlines()[-1] == last
    assert "Traceback" not in proc.stderr
    assert not out.exists()  # it made the folder, and removed it with the half-written params


def test_orbax_to_hf_with_another_model_is_one_line(converted, tmp_path, capsys):
    """A --preset (or --model_config) of another model than the checkpoint's own
    model_config.json says: one line naming the differences, before anything is read
    (shapes alike, as llama-3-8b's on a Llama 3.1 run, its rope scaling and eos ids would
    have been exported as the model's). Without that file, parameters of other shapes
    are one line too (was a ModelMismatch trace, exit 1)."""
    argv = ["orbax-to-hf", "--checkpoint", converted / "ox", "--output", tmp_path / "b"]
    stored = convert.find_model_config(converted / "ox")
    other = dataclasses.replace(stored, eos_id=7, rope_theta=10000.0, remat_policy="full")
    checkpointing.save_model_config(tmp_path / "other", other)
    status, err = _cli(capsys, *argv, "--model_config", tmp_path / "other" / "model_config.json")
    assert (status, err) == (
        2,
        f"error: the given model config differs from {converted / 'ox' / 'model_config.json'}, "
        "what the checkpoint holds: rope_theta 500000.0 -> 10000.0, eos_id 1 -> 7; leave out "
        "--preset / --model_config to export it as it is, or edit or remove that file to "
        "override it\n",
    )
    # Fields the family does not use (a BLOOM's rope settings) and run settings: fine.
    make_hf_model("tiny-bloom").save_pretrained(tmp_path / "bloom_hf")
    convert.hf_to_orbax(tmp_path / "bloom_hf", tmp_path / "bloom")
    bloom = convert.find_model_config(tmp_path / "bloom")
    unused = dataclasses.replace(bloom, rope_theta=1.0, qkv_bias=True, remat_policy="full")
    checkpointing.save_model_config(tmp_path / "unused", unused)
    capsys.readouterr()  # the HF save's progress bar
    args = ["orbax-to-hf", "--checkpoint", tmp_path / "bloom", "--output", tmp_path / "b2"]
    status, err = _cli(capsys, *args, "--model_config", tmp_path / "unused" / "model_config.json")
    assert (status, err) == (0, "")
    assert _cli(capsys, *argv, "--preset", "tiny-llama") == (0, "")  # the same: fine
    bare = tmp_path / "bare"
    shutil.copytree(converted / "ox", bare)
    (bare / "model_config.json").unlink()
    argv = ["orbax-to-hf", "--checkpoint", bare, "--output", tmp_path / "c"]
    status, err = _cli(capsys, *argv, "--preset", "tiny-qwen2")
    assert status == 2
    assert err.startswith(f"error: {bare / 'params'}: parameters do not match the model (")
    assert err.count("\n") == 1
    assert not (tmp_path / "c" / "model.safetensors").exists()


def test_orbax_to_hf_of_damaged_files_is_one_line_in_a_process(converted, tmp_path):
    """No manifest.ocdbt, or cut-short data files: one line and exit 2. orbax's failed
    reads printed up to 16 "Event loop is closed" traces after it (not every run: the
    reads race the exit), and its "Failed to get item metadata" warning before it."""
    damaged = []
    for case in ("no_manifest", "cut_short"):
        ox = tmp_path / case
        shutil.copytree(converted / "ox", ox)
        if case == "no_manifest":
            (ox / "params" / "manifest.ocdbt").unlink()
        for data_file in (ox / "params").glob("ocdbt.process_*/d/*"):
            data_file.write_bytes(data_file.read_bytes()[:100])
        argv = ["orbax-to-hf", "--checkpoint", str(ox), "--output", str(tmp_path / "b")]
        proc = subprocess.run(
            [sys.executable, "-m", "ecomgpt_jax.convert", *argv],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=pathlib.Path(__file__).parent.parent,
        )
        assert proc.returncode == 2
        prefix = f"error: {ox / 'params'}: checkpoint cannot be read, damaged or incomplete ("
        lines = [x for x in proc.stderr.splitlines() if "absl" in x or x.startswith("error")]
        assert len(lines) == 1 and lines[0].startswith(prefix), proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        damaged.append(lines[0][len(prefix) :])
    assert damaged[0] == "params/manifest.ocdbt is missing)"


def test_an_eos_list_reaches_the_export(tmp_path, capsys):
    """A config.json listing several EOS ids (Llama 3.1 Instruct) exports them all:
    transformers' generation config of the export stops at each, as the original's."""
    hf_model = make_hf_model("tiny-llama")
    hf_model.config.eos_token_id = hf_model.generation_config.eos_token_id = [2, 5, 9]
    hf_model.save_pretrained(tmp_path / "hf")
    assert (
        _cli(capsys, "hf-to-orbax", "--hf_dir", tmp_path / "hf", "--output", tmp_path / "ox")[0]
        == 0
    )
    assert (
        _cli(capsys, "orbax-to-hf", "--checkpoint", tmp_path / "ox", "--output", tmp_path / "b")[0]
        == 0
    )
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "b")
    original = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert back.config.eos_token_id == original.config.eos_token_id == [2, 5, 9]
    assert back.generation_config.eos_token_id == original.generation_config.eos_token_id
    assert not (tmp_path / "b" / "generation_config.json").exists()  # it comes from config.json
