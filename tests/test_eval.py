"""`python -m ecomgpt_jax.eval` end to end on the bundled sample: a HF folder and a checkpoint
written by `python -m ecomgpt_jax.train`; files, metrics.json equal to `python -m
ecomgpt_jax.score`, byte-identical reruns, two processes writing what one writes, one-line
errors."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import processes
import pytest
import torch
import transformers
from conftest import SAMPLE_HELD_OUT

from ecomgpt_jax import eval as eval_main
from ecomgpt_jax import evaluation, score
from ecomgpt_jax.ecominstruct import make_sample, reader
from ecomgpt_jax.models import config as mc
from ecomgpt_jax.models import hf_io

REPO = pathlib.Path(__file__).resolve().parent.parent
SAMPLE = make_sample.SAMPLE_DIR
# Small and fast: 3 examples per task, 6 new tokens, one prompt bucket.
SMALL = [
    f"--gin.DATA_DIR='{SAMPLE}'",
    "--gin.EVAL_MAX_EXAMPLES=3",
    "--gin.BATCH_SIZE=8",
    "--gin.DecodeConfig.max_new_tokens=6",
    "--gin.DecodeConfig.min_bucket=128",
]


def cli_env(**extra: str) -> dict:
    """The subprocesses' environment: the CPU, this checkout, no real-data root."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3", **extra}
    env["PYTHONPATH"] = str(REPO)
    env.pop("ECOMGPT_DATA_DIR", None)
    return env


def run_python(*argv: str, cwd=REPO) -> subprocess.CompletedProcess:
    """`python argv...` on the CPU, without the real-data root."""
    return subprocess.run(
        [sys.executable, *argv], cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=600
    )


def run_cli(module: str, *args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return run_python("-m", module, *args, cwd=cwd)


def run_cli_code(code: str, *args: str) -> subprocess.CompletedProcess:
    """`python -c code args` as run_cli runs a module."""
    return run_python("-c", code, *args)


def bindings(args):
    """--gin.X=V flags -> gin binding strings (as eval.main passes them)."""
    return [a.split("=", 1)[1] for a in eval_main.rewrite_gin_args(args)]


def score_cli_bytes(pred_dir: pathlib.Path, tmp: pathlib.Path) -> bytes:
    combined = tmp / "all_predictions.jsonl"
    combined.write_text(
        "".join(p.read_text(encoding="utf-8") for p in sorted(pred_dir.glob("*.jsonl"))),
        encoding="utf-8",
    )
    out = tmp / "score_cli.json"
    args = ["--data_dir", str(SAMPLE), "--predictions", str(combined), "--output", str(out)]
    assert score.main(args) == 0
    return out.read_bytes()


def check_eval_dir(out: pathlib.Path, tmp: pathlib.Path) -> dict:
    assert sorted(p.name for p in (out / "predictions").iterdir()) == [
        f"{t}.jsonl" for t in SAMPLE_HELD_OUT
    ]
    for task in SAMPLE_HELD_OUT:
        rows = (out / "predictions" / f"{task}.jsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(r)["index"] for r in rows] == [0, 1, 2]
    assert (out / "metrics.json").read_bytes() == score_cli_bytes(out / "predictions", tmp)
    metrics = json.loads((out / "metrics.json").read_text())
    assert [metrics[t]["n"] for t in SAMPLE_HELD_OUT] == [3] * 6 and "average" in metrics
    assert "beam search, 4 beams" in (out / "metrics.md").read_text()
    assert any((out / "tensorboard").iterdir())
    return metrics


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A random tiny Qwen2 for the bundled SentencePiece vocabulary (eos 1, pad 0)."""
    path = tmp_path_factory.mktemp("hf_tiny_qwen2")
    torch.manual_seed(0)
    cfg = dataclasses.replace(mc.get_preset("tiny-qwen2"), vocab_size=2048)
    model = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(**mc.to_hf_config(cfg)), dtype=torch.float32
    )
    with torch.no_grad():
        model.get_input_embeddings().weight[cfg.eos_id] *= 11.0  # some rows stop early
    model.save_pretrained(path)
    return path


def test_eval_cli_on_a_hf_folder_and_identical_rerun(hf_dir, tmp_path):
    out = tmp_path / "cli"
    args = [f"--gin.HF_DIR='{hf_dir}'", f"--gin.EVAL_DIR='{out}'", *SMALL]
    proc = run_cli("ecomgpt_jax.eval", "--gin_file=gin_configs/eval.gin", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "average" in proc.stdout and "examples/s" in proc.stdout
    check_eval_dir(out, tmp_path)
    # Same settings in this process: byte-identical predictions and metrics.
    again = tmp_path / "again"
    rerun_args = [f"--gin.HF_DIR='{hf_dir}'", f"--gin.EVAL_DIR='{again}'", *SMALL]
    eval_main.run_eval(["gin_configs/eval.gin"], bindings(rerun_args), progress=False)
    for path in [
        *(f"predictions/{t}.jsonl" for t in SAMPLE_HELD_OUT),
        "metrics.json",
        "metrics.md",
    ]:
        assert (again / path).read_bytes() == (out / path).read_bytes(), path


def test_eval_cli_on_a_trainer_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        "ecomgpt_jax.train",
        "--gin_file=gin_configs/ecom.gin",
        f"--gin.MODEL_DIR='{run_dir}'",
        "--gin.TRAIN_STEPS=1",
        "--gin.BATCH_SIZE=8",
        "--gin.SAVE_EVERY_STEPS=1",
        "--gin.EVAL_LOSS_EVERY_STEPS=0",  # tested in test_train
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    step_dir = run_dir / "checkpoints" / "1"
    assert step_dir.is_dir()
    # EVAL_DIR left unset: <run>/eval/<step>/<mixture> for a checkpoint of a training run.
    proc = run_cli(
        "ecomgpt_jax.eval",
        "--gin_file=gin_configs/eval.gin",
        f"--gin.CHECKPOINT='{step_dir}'",
        *SMALL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_eval_dir(run_dir / "eval" / "1" / "ecom_instruct_held_out", tmp_path)


def test_errors_are_one_line(tmp_path):
    with pytest.raises(evaluation.EvalError, match="exactly one of CHECKPOINT"):
        eval_main.run_eval(["gin_configs/eval.gin"], [f"EVAL_DIR = '{tmp_path}'"])
    with pytest.raises(evaluation.EvalError, match="set EVAL_DIR"):
        eval_main.run_eval(["gin_configs/eval.gin"], [f"HF_DIR = '{tmp_path}'"])
    with pytest.raises(evaluation.EvalError, match="gin config"):
        eval_main.run_eval(["gin_configs/eval.gin"], ["NoSuchThing.x = 1"])
    # Paths as numbers or None: one line (EVAL_DIR=5 wrote to ./5/, DATA_DIR=5 a trace).
    for binding, message in [
        ("EVAL_DIR = 5", "EVAL_DIR=5: must be a path or None"),
        ("CHECKPOINT = 5", "CHECKPOINT=5: must be a path or None"),
        ("DATA_DIR = 5", "EvalConfig.data_dir=5: must be a path or None"),
    ]:
        with pytest.raises(evaluation.EvalError) as info:
            eval_main.run_eval(["gin_configs/eval.gin"], [f"HF_DIR = '{tmp_path}'", binding])
        assert str(info.value).splitlines()[0] == message  # what the CLI prints
    bad_vocab = [f"CHECKPOINT = '{tmp_path}'", f"EVAL_DIR = '{tmp_path}'"]
    typo = (
        "VOCABULARY='sentencepeice': unknown vocabulary kind; expected one of sentencepiece, "
        "spm, huggingface, hf, tokenizer.json"
    )
    # With or without VOCABULARY_PATH: the kind is checked first, not reported as a
    # missing VOCABULARY_PATH.
    for extra in ([], [f"VOCABULARY_PATH = '{tmp_path}'"]):
        with pytest.raises(evaluation.EvalError) as info:
            eval_main.run_eval(
                ["gin_configs/eval.gin"], [*bad_vocab, *extra, "VOCABULARY = 'sentencepeice'"]
            )
        assert str(info.value) == typo
    # The data is checked before the model loads (CHECKPOINT here holds no checkpoint).
    no_data = [f"CHECKPOINT = '{tmp_path}'", f"EVAL_DIR = '{tmp_path}'", "DATA_DIR = '/no/data'"]
    with pytest.raises(reader.DataError, match="/no/data"):
        eval_main.run_eval(["gin_configs/eval.gin"], no_data)
    proc = run_cli("ecomgpt_jax.eval", "--gin_file=gin_configs/eval.gin", *SMALL)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: set exactly one of CHECKPOINT")
    assert "Traceback" not in proc.stderr


def test_a_vocabulary_larger_than_the_model_stops_before_the_model_loads(tmp_path, monkeypatch):
    """Ids past the embedding table would read NaN and decode garbage without an error."""
    small = tmp_path / "small"
    cfg = dataclasses.replace(mc.get_preset("tiny-qwen2"), vocab_size=1000)
    (small).mkdir()
    (small / "config.json").write_text(json.dumps(mc.to_hf_config(cfg)))
    (small / "model.safetensors").write_bytes(b"")  # never read: the check comes first

    def no_load(*args, **kwargs):
        pytest.fail("the model was loaded before its vocab_size was checked")

    monkeypatch.setattr(evaluation, "load_model", no_load)
    args = [f"HF_DIR = '{small}'", f"EVAL_DIR = '{tmp_path / 'out'}'", f"DATA_DIR = '{SAMPLE}'"]
    with pytest.raises(evaluation.EvalError) as info:
        eval_main.run_eval(["gin_configs/eval.gin"], args)
    message = (
        "the vocabulary has 2000 ids but the model's vocab_size is 1000: use the model's own "
        "tokenizer (VOCABULARY, VOCABULARY_PATH)"
    )
    assert str(info.value) == message
    assert not (tmp_path / "out").exists()
    # HF_DIR has its tokenizer, eval.gin's default vocabulary is the bundled one: a hint.
    (small / "tokenizer.json").write_text("{}")
    with pytest.raises(evaluation.EvalError) as info:
        eval_main.run_eval(["gin_configs/eval.gin"], args)
    assert str(info.value) == (
        f"{message}: HF_DIR has its tokenizer.json; include the model's "
        "gin_configs/models/*.gin file, or add --gin.VOCABULARY=\"'huggingface'\""
    )


def test_an_eval_dir_that_is_a_file_stops_before_the_model_loads(hf_dir, tmp_path, monkeypatch):
    """Not after decoding every task, in the first write. And weights that are not there
    stop it before EVAL_DIR is created."""

    def no_load(*args, **kwargs):
        pytest.fail("the model was loaded before EVAL_DIR was checked")

    monkeypatch.setattr(evaluation, "load_model", no_load)
    afile = tmp_path / "afile"
    afile.write_text("")
    args = [f"HF_DIR = '{hf_dir}'", f"EVAL_DIR = '{afile}'", f"DATA_DIR = '{SAMPLE}'"]
    with pytest.raises(evaluation.EvalError) as info:
        eval_main.run_eval(["gin_configs/eval.gin"], args)
    assert str(info.value) == f"EVAL_DIR {afile} is a file: give a folder"
    args = [f"HF_DIR = '{tmp_path}'", f"EVAL_DIR = '{tmp_path / 'out'}'", f"DATA_DIR = '{SAMPLE}'"]
    with pytest.raises(hf_io.CheckpointFormatError, match="config.json: not found"):
        eval_main.run_eval(["gin_configs/eval.gin"], args)
    assert not (tmp_path / "out").exists()


# Two real processes (jax.distributed over localhost, 2 simulated CPU devices each) against
# one process on 4 devices: the same global mesh, so the same programs and the same bytes.
# 5 examples per task do not divide over 2 processes or 4 devices: BATCH_SIZE 2 rounds up
# to 4 rows, so each task is a full batch and one of 1 real row and 3 dummy rows.
TWO_TASKS = "EN-ABSA-CLS-review_topic_category,ZH-OpenBG_Align-Generate-title_generate"
MULTI = [
    f"--gin.DATA_DIR='{SAMPLE}'",
    f"--gin.MIXTURE_OR_TASK_NAME='{TWO_TASKS}'",
    "--gin.EVAL_MAX_EXAMPLES=5",
    "--gin.BATCH_SIZE=2",
    "--gin.DecodeConfig.max_new_tokens=6",
    "--gin.DecodeConfig.min_bucket=128",
]


@pytest.fixture(scope="module")
def orbax_dir(hf_dir, tmp_path_factory):
    """hf_dir as an orbax checkpoint: every process restores its shards (the pod path)."""
    from ecomgpt_jax import convert

    path = tmp_path_factory.mktemp("orbax_tiny_qwen2")
    convert.hf_to_orbax(hf_dir, path)
    return path


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent XLA cache shared by the subprocesses (as in test_train)."""
    return str(tmp_path_factory.mktemp("xla_cache"))


def run_eval_processes(
    eval_dirs, devices: int, cache: str, logs: pathlib.Path, *args: str, only=None, timeout=300
) -> list[subprocess.CompletedProcess]:
    """The eval CLI as len(eval_dirs) processes (process i writes to eval_dirs[i], if it
    writes), `devices` CPU devices each; output through files in `logs` (a full pipe would
    stall a process that its peers then wait for). A hang fails the test: `timeout` s each.
    `only`: process index -> arguments that process alone gets, after `args`."""
    port = processes.free_port()
    n = len(eval_dirs)
    env = cli_env(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_COMPILATION_CACHE_DIR=cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    procs, files = [], []
    try:
        for i, eval_dir in enumerate(eval_dirs):
            cmd = [sys.executable, "-m", "ecomgpt_jax.eval", "--gin_file=gin_configs/eval.gin"]
            cmd += [*args, *(only or {}).get(i, []), f"--gin.EVAL_DIR='{eval_dir}'"]
            if n > 1:
                cmd += [f"--coordinator_address=localhost:{port}", f"--num_processes={n}"]
                cmd += [f"--process_id={i}"]
            out, err = logs / f"stdout{i}.txt", logs / f"stderr{i}.txt"
            files.append((out, err))
            with open(out, "w") as o, open(err, "w") as e:
                procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=o, stderr=e))
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [
        subprocess.CompletedProcess(p.args, code, out.read_text(), err.read_text())
        for p, code, (out, err) in zip(procs, codes, files, strict=True)
    ]


def test_two_processes_write_what_one_process_writes(orbax_dir, compile_cache, tmp_path):
    args = [f"--gin.CHECKPOINT='{orbax_dir}'", *MULTI]
    (tmp_path / "logs1").mkdir()
    [one] = run_eval_processes([tmp_path / "one"], 4, compile_cache, tmp_path / "logs1", *args)
    assert one.returncode == 0, one.stderr[-3000:]
    # Process 1 gets an EVAL_DIR of its own: on one shared disk, the only way to see that
    # it writes nothing (it never reads the setting but for an error message).
    dirs = [tmp_path / "two", tmp_path / "two_process_1"]
    (tmp_path / "logs2").mkdir()
    procs = run_eval_processes(dirs, 2, compile_cache, tmp_path / "logs2", *args)
    assert [p.returncode for p in procs] == [0, 0], [p.stderr[-3000:] for p in procs]
    assert not dirs[1].exists()
    # Process 0 reports, process 1 says nothing (jax's Gloo and TensorFlow print lines of
    # their own): no table, no progress bars.
    tasks = TWO_TASKS.split(",")
    assert "predictions:" in procs[0].stdout and "average" in procs[0].stdout
    assert all(f"{t}: 100%" in procs[0].stderr for t in tasks)
    assert "model:" not in procs[1].stdout and "average" not in procs[1].stdout
    assert not any(t in procs[1].stderr for t in tasks)
    assert "error:" not in procs[1].stderr and "Traceback" not in procs[1].stderr

    def files(root):
        """Every file under root; TensorBoard's is named by time and host, and holds
        wall times: only its presence is compared."""
        names = (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        return sorted(n.split(".")[0] if n.startswith("tensorboard/") else n for n in names)

    compared = [*(f"predictions/{t}.jsonl" for t in tasks), "metrics.json", "metrics.md"]
    assert files(dirs[0]) == files(tmp_path / "one") == sorted([*compared, "tensorboard/events"])
    for path in compared:
        assert (dirs[0] / path).read_bytes() == (tmp_path / "one" / path).read_bytes(), path
    for task in tasks:
        rows = (dirs[0] / "predictions" / f"{task}.jsonl").read_text(encoding="utf-8")
        assert [json.loads(r)["index"] for r in rows.splitlines()] == [0, 1, 2, 3, 4]
    metrics = json.loads((dirs[0] / "metrics.json").read_text())
    assert [metrics[t]["n"] for t in tasks] == [5, 5]


def test_two_processes_stop_in_one_line_when_process_0_cannot_write_eval_dir(
    orbax_dir, compile_cache, tmp_path
):
    """The stubbed test above for real: process 1 learns of process 0's failure through
    jax.distributed and stops too, before the model loads, instead of waiting for it."""
    afile = tmp_path / "afile"
    afile.write_text("")
    args = [f"--gin.CHECKPOINT='{orbax_dir}'", *MULTI]
    procs = run_eval_processes([afile, afile], 2, compile_cache, tmp_path, *args)
    assert [p.returncode for p in procs] == [2, 2], [p.stderr[-3000:] for p in procs]
    want = [
        f"error: EVAL_DIR {afile} is a file: give a folder",
        "error: process 0 stopped in set-up (its error says why); stopping too",
    ]
    assert_one_error_line_each(procs, want)
    assert afile.read_text() == ""


def assert_one_error_line_each(procs, lines):
    """Process i's stderr ends with lines[i], its only `error:` line, without a trace, and
    it never loaded the model."""
    processes.assert_one_error_line_each([p.stderr for p in procs], lines)
    assert not any("model:" in p.stdout for p in procs)


def test_a_set_up_error_on_process_1_alone_stops_both(orbax_dir, compile_cache, tmp_path):
    """Data missing on one host of a pod: process 0 would wait for process 1 in the first
    collective (a gloo deadline and a trace here after 30 s; longer on a pod)."""
    args = [f"--gin.CHECKPOINT='{orbax_dir}'", *MULTI]
    only = {1: [f"--gin.DATA_DIR='{tmp_path / 'no_data'}'"]}
    out = [tmp_path / "out", tmp_path / "out_1"]
    procs = run_eval_processes(out, 2, compile_cache, tmp_path, *args, only=only)
    assert [p.returncode for p in procs] == [2, 2], [p.stderr[-3000:] for p in procs]
    want = [
        "error: process 1 stopped in set-up (its error says why); stopping too",
        f"error: {tmp_path / 'no_data'}: data directory does not exist",
    ]
    assert_one_error_line_each(procs, want)


def test_a_write_failing_on_process_0_mid_run_stops_both_after_that_task(
    orbax_dir, compile_cache, tmp_path
):
    """Process 0 cannot write the first task's predictions (a folder where the file's
    temporary goes: unlike a folder in place of the file itself, nothing finds it before
    the write): process 1 used to go on to the second task's decoding and wait there for
    process 0 until a gloo deadline (~5 minutes) ended both with a trace."""
    first, second = TWO_TASKS.split(",")
    out = tmp_path / "out"
    (out / "predictions" / f"{first}.jsonl.tmp").mkdir(parents=True)
    args = [f"--gin.CHECKPOINT='{orbax_dir}'", *MULTI]
    procs = run_eval_processes(
        [out, tmp_path / "out_1"], 2, compile_cache, tmp_path, *args, timeout=120
    )
    assert [p.returncode for p in procs] == [2, 2], [p.stderr[-3000:] for p in procs]
    what = f"the predictions of {first}"
    want = [
        f"error: EVAL_DIR {out}: cannot write {what} "
        f"({out / 'predictions' / first}.jsonl.tmp: Is a directory)",
        f"error: process 0 stopped while writing {what} to EVAL_DIR (its error says why); "
        "stopping too",
    ]
    processes.assert_one_error_line_each([p.stderr for p in procs], want)
    assert f"{second}:" not in procs[0].stderr  # no progress bar: the second task never began
    assert not (out / "metrics.json").exists()


def test_weights_missing_on_process_1_alone_stop_both_before_the_model_loads(
    orbax_dir, compile_cache, tmp_path
):
    """A checkpoint on a local disk that one host lacks: process 0 used to restore alone
    and wait for process 1 in orbax's barrier until a timeout ended it with a trace."""
    args = [f"--gin.CHECKPOINT='{orbax_dir}'", *MULTI]
    only = {1: [f"--gin.CHECKPOINT='{tmp_path / 'gone'}'"]}
    out = [tmp_path / "out", tmp_path / "out_1"]
    procs = run_eval_processes(out, 2, compile_cache, tmp_path, *args, only=only, timeout=120)
    assert [p.returncode for p in procs] == [2, 2], [p.stderr[-3000:] for p in procs]
    want = [
        "error: process 1 stopped in set-up (its error says why); stopping too",
        f"error: checkpoint path {tmp_path / 'gone'} does not exist",
    ]
    assert_one_error_line_each(procs, want)


@pytest.mark.parametrize(
    "recipe",
    [
        "gin_configs/ecom.gin",
        *sorted(
            p.relative_to(REPO).as_posix() for p in (REPO / "gin_configs" / "runs").glob("*.gin")
        ),
    ],
)
def test_a_training_recipe_says_eval_takes_eval_gin(recipe):
    """gin alone says "No configurable matching 'TrainConfig' (did you mean EvalConfig?)";
    where train's configurables are registered too (a notebook that trained first) it
    reported an unused macro instead. The same message either way."""
    from ecomgpt_jax import train

    first = _first_training_binding(REPO / recipe)
    for registered in (False, True):
        if registered:
            train.register_configurables()
        with pytest.raises(evaluation.EvalError) as info:
            eval_main.run_eval([recipe], ["CHECKPOINT = '/tmp/x'"])
        assert str(info.value) == (
            f"gin config: {first}: TrainConfig is a training setting: eval takes "
            "--gin_file=gin_configs/eval.gin (plus gin_configs/models/*.gin files); ecom.gin "
            "and gin_configs/runs/*.gin are training recipes for python -m ecomgpt_jax.train"
        )
    # An eval typo keeps gin's suggestion.
    with pytest.raises(evaluation.EvalError, match=r"did you mean EvalConfig\?\)$"):
        eval_main.run_eval(["gin_configs/eval.gin"], ["EvalConfg.batch_size = 1"])


def _first_training_binding(path: pathlib.Path) -> str | None:
    """`file, line N` of the first `TrainConfig.` binding in `path` or its includes, in
    the order gin reads them (the recipe files bind TrainConfig before anything else of
    train's)."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("include "):
            included = REPO / "gin_configs" / line.split("'")[1]
            found = _first_training_binding(included) if included.exists() else None
            if found:
                return found
        if line.startswith("TrainConfig."):
            return f"{path.relative_to(REPO).as_posix()}, line {number}"
    return None


# The eval CLI, with a Ctrl-C (KeyboardInterrupt) raised when the third task's decoding
# starts: deterministic, unlike a SIGINT sent from here at some moment.
CTRL_C_AT_TASK_3 = """
import sys
from absl import app
from ecomgpt_jax import eval as eval_main, evaluation

real, calls = evaluation.get_generator, []

class StopAtTask3:
    def __init__(self, gen):
        self.gen = gen
    def shard_params(self, params):
        return self.gen.shard_params(params)
    def generate(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return self.gen.generate(*args, **kwargs)

evaluation.get_generator = lambda *args: StopAtTask3(real(*args))
app.run(eval_main.main, argv=eval_main.rewrite_gin_args(sys.argv))
"""


def test_ctrl_c_keeps_the_finished_tasks_and_says_so_in_one_line(hf_dir, tmp_path):
    out = tmp_path / "out"
    (out / "predictions").mkdir(parents=True)
    (out / "predictions" / "EN-Old-CLS-old.jsonl").write_text("{}\n")
    args = [f"--gin.HF_DIR='{hf_dir}'", f"--gin.EVAL_DIR='{out}'", *SMALL]
    proc = run_cli_code(CTRL_C_AT_TASK_3, "--gin_file=gin_configs/eval.gin", *args)
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr
    done = SAMPLE_HELD_OUT[:2]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == (
        f"interrupted: predictions of 2 of 6 tasks written to {out}/predictions/ "
        f"({', '.join(done)}); not scored (python -m ecomgpt_jax.score scores that folder)"
    )
    assert (
        f"replacing the previous evaluation's predictions in {out}/predictions/: removed 1 file "
        "of tasks not in this one (EN-Old-CLS-old.jsonl)"
    ) in lines
    assert sorted(p.name for p in (out / "predictions").iterdir()) == [f"{t}.jsonl" for t in done]
    for task in done:
        rows = (out / "predictions" / f"{task}.jsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(r)["index"] for r in rows] == [0, 1, 2]


# The eval CLI with a Ctrl-C landing in a __del__ while the vocabulary is made: Python
# drops such a KeyboardInterrupt (as in jax's gc callback) and would decode on.
CTRL_C_DROPPED_IN_SET_UP = """
import os, signal, sys
from absl import app
from ecomgpt_jax import eval as eval_main, evaluation

signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (see test_launch)

class CtrlCInDel:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10_000):
            pass

real = eval_main.make_vocabulary

def make_vocabulary(*args):
    CtrlCInDel()
    print("set-up went on", flush=True)
    return real(*args)

def evaluate(*args, **kwargs):
    raise AssertionError("decoded after the Ctrl-C")

eval_main.make_vocabulary, evaluation.evaluate = make_vocabulary, evaluate
app.run(eval_main.main, argv=eval_main.rewrite_gin_args(sys.argv))
"""


def test_a_ctrl_c_python_dropped_in_set_up_stops_before_decoding(hf_dir, tmp_path):
    args = [f"--gin.HF_DIR='{hf_dir}'", f"--gin.EVAL_DIR='{tmp_path / 'out'}'", *SMALL]
    proc = run_cli_code(CTRL_C_DROPPED_IN_SET_UP, "--gin_file=gin_configs/eval.gin", *args)
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "set-up went on" in proc.stdout  # the interrupt was dropped, not raised
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "interrupted before decoding: nothing written"


def test_bad_example_line_stops_before_the_model_loads(tmp_path, monkeypatch):
    """A malformed line of a task's test.json: one "file:line: field" error, no model load."""
    import shutil

    name = "EN-ABSA-CLS-review_topic_category"
    data = tmp_path / "data"
    shutil.copytree(SAMPLE / "ABSA", data / "ABSA")
    test_json = data / "ABSA" / "tasks" / name / "test.json"
    lines = test_json.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[2] = '{"sentences": "No labels here."}\n'
    test_json.write_text("".join(lines), encoding="utf-8")

    def no_load(*args, **kwargs):
        pytest.fail("the model was loaded before the data was checked")

    monkeypatch.setattr(evaluation, "load_model", no_load)
    args = [f"HF_DIR = '{tmp_path}'", f"EVAL_DIR = '{tmp_path / 'out'}'", f"DATA_DIR = '{data}'"]
    with pytest.raises(reader.DataError) as info:
        eval_main.run_eval(["gin_configs/eval.gin"], [*args, f"MIXTURE_OR_TASK_NAME = '{name}'"])
    assert str(info.value) == (
        f"{test_json}:3: missing field 'labels.default' (label_key of a CLS task)"
    )
    assert not (tmp_path / "out").exists()


def test_default_eval_dir_in_a_bucket(tmp_path, monkeypatch):
    """A checkpoint in gs:// gets its default EVAL_DIR in the same bucket run folder
    (epath's mock backend stands in for GCS: gs://b/x lives at ./gs:/b/x)."""
    from etils.epath import gpath
    from etils.epath import testing as epath_testing

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    params = tmp_path / "gs:" / "bucket" / "run" / "checkpoints" / "7" / "params"
    params.mkdir(parents=True)
    (params / "_CHECKPOINT_METADATA").write_text("{}")
    with epath_testing.mock_epath():
        source = evaluation.ModelSource(checkpoint="gs://bucket/run/checkpoints/7")
        got = eval_main.default_eval_dir(source, "ecom:a,ecom:b")
    assert str(got) == "gs://bucket/run/eval/7/ecom:a+ecom:b"


def test_eval_gin_is_the_contracts_decoding():
    """gin_configs/eval.gin and DecodeConfig's defaults: the contract's section 4 (beam
    search with 4 beams, no sampling, prompts cut from the left to 800 tokens, 164 new
    tokens) on the held-out mixture's test split."""
    import gin

    from ecomgpt_jax import decoding

    conf = eval_main.register_configurables()
    try:
        eval_main.parse_gin([str(REPO / "gin_configs/eval.gin")], [], [])
        with gin.unlock_config():
            eval_cfg = conf["EvalConfig"]()
    finally:
        gin.clear_config()
    paper = decoding.DecodeConfig(
        method="beam",
        num_beams=4,
        length_penalty=1.0,
        early_stopping=False,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=164,
        max_prompt_len=800,
        seed=0,
        min_bucket=64,
    )
    assert eval_cfg.decode == paper == decoding.DecodeConfig()
    assert eval_cfg.decode.effective_method == "beam"
    assert (eval_cfg.mixture_or_task_name, eval_cfg.split) == ("ecom_instruct_held_out", "test")
    assert (eval_cfg.max_examples, eval_cfg.prompt_seed) == (None, 0)


def test_flag_and_gin_typos_are_one_line():
    """A mistyped macro stops the run (gin alone would evaluate every example), and the
    multi-host flags are checked inside the same one-line error handling."""
    with pytest.raises(evaluation.EvalError) as info:
        eval_main.run_eval(["gin_configs/eval.gin"], ["EVAL_MAX_EXAMPLE = 1"])
    assert str(info.value) == (
        "gin config: --gin.EVAL_MAX_EXAMPLE: macro EVAL_MAX_EXAMPLE is not used by any "
        "binding (did you mean EVAL_MAX_EXAMPLES?)"
    )
    proc = run_cli("ecomgpt_jax.eval", "--multihost", "--gin_file=gin_configs/eval.gin")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: --multihost: jax.distributed.initialize() found no cluster "
        "(coordinator_address should be defined); on one machine drop --multihost, "
        "elsewhere pass --coordinator_address/--num_processes/--process_id"
    )
    assert "Traceback" not in proc.stderr
