"""End to end: the default command, SIGTERM + resume, two processes, user errors.

Subprocess runs use the default recipe (gin_configs/ecom.gin) for a few steps.
Losses are compared through MODEL_DIR/metrics.jsonl (one line per step here).
"""

import dataclasses
import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import processes
import pytest
from absl import logging as absl_logging
from trainer_helpers import run_in_process, train_in_process

from ecomgpt_jax import (
    checkpointing,
    convert,
    launch,
    orbax_failures,
    run_config,
    train,
    trainer,
)
from ecomgpt_jax.models import config as model_config
from ecomgpt_jax.models import decoder, hf_io

ROOT = pathlib.Path(__file__).resolve().parent.parent
# eval.gin's first ModelSource binding, where train's error points.
EVAL_GIN_LINES = (ROOT / "gin_configs" / "eval.gin").read_text().splitlines()
EVAL_GIN_MODEL_SOURCE = 1 + [line.startswith("ModelSource.") for line in EVAL_GIN_LINES].index(True)
STEPS = 10
# Few steps, every one logged, a checkpoint mid-way, a warm-up short enough to move; no
# held-out loss (~10 s of tf.data set-up per run) except where SHARDED asks for it.
COMMON = [
    f"--gin.TRAIN_STEPS={STEPS}",
    "--gin.LOG_EVERY_STEPS=1",
    "--gin.SAVE_EVERY_STEPS=5",
    "--gin.WARMUP_STEPS=2",
    "--gin.EVAL_LOSS_EVERY_STEPS=0",
]
# The resume and multi-process runs read one task (a mixture of twelve costs ~10 s of
# tf.data set-up per run) as 2 logical shards, so 1 and 2 processes see the same batches.
SHARDED = [
    "--gin.MIXTURE_OR_TASK_NAME='ecom:EN:Shop_Product:NER:product_entity'",
    "--gin.DataConfig.num_shards=2",
    # The held-out loss on that task's test split, at steps 5 and 10.
    "--gin.EVAL_LOSS_EVERY_STEPS=5",
    "--gin.EVAL_LOSS_MIXTURE='ecom:EN:Shop_Product:NER:product_entity'",
]


def command(model_dir, *extra):
    return [
        sys.executable,
        "-m",
        "ecomgpt_jax.train",
        "--gin_file=gin_configs/ecom.gin",
        f"--gin.MODEL_DIR='{model_dir}'",
        *COMMON,
        *extra,
    ]


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent XLA cache shared by the subprocesses (same programs, compiled once)."""
    return str(tmp_path_factory.mktemp("xla_cache"))


def env(cache: str, devices: int = 8) -> dict:
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "JAX_COMPILATION_CACHE_DIR": cache,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


def losses(model_dir, log: str = "metrics") -> dict[int, float]:
    """step -> the loss of MODEL_DIR/<log>.jsonl ("eval_loss": over all held-out tokens)."""
    lines = (pathlib.Path(model_dir) / f"{log}.jsonl").read_text().splitlines()
    rows = map(json.loads, lines)
    if log == "eval_loss":
        return {row["step"]: row["all"]["loss"] for row in rows}
    return {row["step"]: row["loss"] for row in rows}


def run_ok(cmd, environ) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, compile_cache):
    """The default command for a few steps, with infer_eval every 5 steps on a small slice."""
    model_dir = tmp_path_factory.mktemp("default") / "run"
    infer_eval = [
        "--gin.INFER_EVAL_EVERY_STEPS=5",
        "--gin.INFER_EVAL_MAX_EXAMPLES=2",
        "--gin.INFER_EVAL_MIXTURE='ecom:EN:ABSA:CLS:review_topic_category'",
        "--gin.DecodeConfig.max_new_tokens=8",
    ]
    return model_dir, run_ok(command(model_dir, *infer_eval), env(compile_cache)).stdout


@pytest.fixture(scope="module")
def sharded_reference(tmp_path_factory, compile_cache):
    """One uninterrupted process on 4 devices: the reference for resume and 2 processes."""
    model_dir = tmp_path_factory.mktemp("reference") / "run"
    run_ok(command(model_dir, *SHARDED), env(compile_cache, devices=4))
    return model_dir


def test_default_command_leaves_checkpoint_logs_and_config(default_run):
    model_dir, stdout = default_run
    # Which model trains (a models/*.gin file given before the recipe would not).
    assert "model: bloom, 2 layers, width 96, float32, from random initial weights\n" in stdout
    step_dir = model_dir / "checkpoints" / str(STEPS)
    assert {p.name for p in step_dir.iterdir()} >= {"params", "train", "data"}
    assert sorted(int(p.name) for p in (model_dir / "checkpoints").iterdir()) == [5, STEPS]
    rows = [json.loads(x) for x in (model_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for key in ("loss", "learning_rate", "grad_norm", "tokens_per_second", "seconds_per_step"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert rows[0]["learning_rate"] == 0.0 and rows[1]["learning_rate"] > 0
    assert rows[-1]["loss"] < rows[0]["loss"]
    events = list((model_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    config = (model_dir / "config.gin").read_text()
    assert f"TRAIN_STEPS = {STEPS}" in config and "TrainConfig.train_steps = %TRAIN_STEPS" in config
    # The command that made it (absl hands main only the program name).
    assert config.startswith(
        "# Resolved config of: python -m ecomgpt_jax.train --gin_file=gin_configs/ecom.gin "
        f"'--gin_bindings=MODEL_DIR = '\"'\"'{model_dir}'\"'\"'' "
        f"'--gin_bindings=TRAIN_STEPS = {STEPS}'"
    )
    assert "note:" not in stdout and "note:" not in config  # the model is ModelConfig's
    # The printed summary points at real things, including the evaluation command.
    assert f"checkpoint: {step_dir}" in stdout
    assert f"--gin.CHECKPOINT=\"'{step_dir}'\"" in stdout
    assert "python -m ecomgpt_jax.eval --gin_file=gin_configs/eval.gin" in stdout
    # What evaluation / conversion will do: model from model_config.json, params restore.
    cfg = convert.find_model_config(step_dir)
    assert cfg.vocab_size == 2048 and cfg.layers == 2
    params = checkpointing.restore_params(step_dir, decoder.abstract_params(cfg))
    assert params["embed"]["embedding"].shape == (2048, cfg.hidden)


def test_infer_eval_scores_logged_beside_the_loss(default_run):
    model_dir, stdout = default_run
    task = "EN-ABSA-CLS-review_topic_category"
    rows = [json.loads(x) for x in (model_dir / "infer_eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 5, STEPS]  # the start, every 5, the end
    for row in rows:
        # The logged scores are the evaluation's metrics.json for that step, which the
        # evaluation tests prove equal to `python -m ecomgpt_jax.score` on its predictions.
        written = json.loads(
            (model_dir / "infer_eval" / str(row["step"]) / "metrics.json").read_text()
        )
        assert {k: v for k, v in row.items() if k != "step"} == written
        assert row[task]["n"] == 2 and set(row) == {"step", task, "average"}
        preds = model_dir / "infer_eval" / str(row["step"]) / "predictions" / f"{task}.jsonl"
        assert [json.loads(x)["index"] for x in preds.read_text().splitlines()] == [0, 1]
    assert f"infer_eval step {STEPS}: rouge-l-f1" in stdout


def _signal_at_step_2(model_dir, environ, signum, stderr_path) -> tuple[int, str]:
    """Runs the sharded command, sends `signum` once "step 2/" is logged: (rc, stdout)."""
    with open(stderr_path, "w") as log:
        proc = subprocess.Popen(
            command(model_dir, *SHARDED),
            cwd=ROOT,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        for line in proc.stdout:
            if line.startswith("step 2/"):
                proc.send_signal(signum)
                break
        out = proc.stdout.read()
        return proc.wait(timeout=300), out


def test_sigterm_saves_exits_0_and_resume_matches(sharded_reference, compile_cache, tmp_path):
    model_dir = tmp_path / "run"
    environ = env(compile_cache, devices=4)
    rc, out = _signal_at_step_2(model_dir, environ, signal.SIGTERM, tmp_path / "stderr.txt")
    assert rc == 0
    stopped = max(losses(model_dir))
    assert 2 <= stopped < STEPS and f"preempted at step {stopped}" in out
    saved = checkpointing.Checkpointer(model_dir, checkpointing.CheckpointConfig()).all_steps()
    assert saved[-1] == stopped
    resumed = run_ok(command(model_dir, *SHARDED), environ)
    assert f"starting at step {stopped}/{STEPS}" in resumed.stdout
    assert not list(model_dir.glob("config.until_step_*.gin"))  # the same command
    got, want = losses(model_dir), losses(sharded_reference)
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([got[s] for s in want], list(want.values()), rtol=1e-6)
    # Evaluations at the start, every 5 steps and the end, none twice, wherever the stop
    # came (test_trainer stops at an evaluation step on purpose).
    got, want = losses(model_dir, "eval_loss"), losses(sharded_reference, "eval_loss")
    assert sorted(got) == sorted(want) == [0, 5, STEPS]
    np.testing.assert_allclose([got[s] for s in want], list(want.values()), rtol=1e-6)


def test_first_ctrl_c_saves_and_exits_130_without_a_trace(compile_cache, tmp_path):
    model_dir = tmp_path / "run"
    environ = env(compile_cache, devices=4)
    rc, out = _signal_at_step_2(model_dir, environ, signal.SIGINT, tmp_path / "stderr.txt")
    assert rc == launch.INTERRUPTED_EXIT_CODE == 130
    stopped = max(losses(model_dir))
    step_dir = model_dir / "checkpoints" / str(stopped)
    assert 2 <= stopped < STEPS
    assert f"\ninterrupted at step {stopped}: saved {step_dir}; run the same command to " in out
    saved = checkpointing.Checkpointer(model_dir, checkpointing.CheckpointConfig()).all_steps()
    assert saved[-1] == stopped and sorted(losses(model_dir)) == list(range(1, stopped + 1))
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "interrupt: saving a checkpoint after this step (Ctrl-C again: stop now" in stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr


def test_ctrl_c_in_set_up_is_one_line_and_exit_130(monkeypatch, capsys):
    """Before the loop's own handler (reading the data, compiling): Python's
    KeyboardInterrupt from wherever it landed, said in one line."""

    def interrupted(ctrl_c):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "run", interrupted)
    launch.define_flags()
    verbosity = absl_logging.get_verbosity()
    try:
        with pytest.raises(SystemExit) as info:
            train.main(["train"])
    finally:  # main's log settings, not to be left to the other tests
        absl_logging.set_verbosity(verbosity)
        for f in (orbax_failures.not_item_metadata_warning, orbax_failures.without_trace):
            logging.getLogger("absl").removeFilter(f)
    assert info.value.code == launch.INTERRUPTED_EXIT_CODE
    assert capsys.readouterr().err == (
        "interrupted: stopped without saving; the checkpoints saved before are kept\n"
    )


@pytest.mark.parametrize("interrupted", [False, True])
def test_a_stop_at_step_0_names_no_checkpoint(capsys, interrupted):
    """Stopped in step 0's evaluation: nothing was saved, so no checkpoint and no eval
    command pointing at a folder that is not there."""
    result = trainer.Result(0, None, True, None, None, interrupted)
    train.print_summary(result, "/runs/a")
    first = (
        "interrupted at step 0: nothing trained or saved; run the same command to resume"
        if interrupted
        else "preempted at step 0; no step trained"
    )
    assert capsys.readouterr().out == (
        f"\n{first}\n"
        "logs:       /runs/a/metrics.jsonl, TensorBoard: /runs/a/tensorboard\n"
        "config:     /runs/a/config.gin\n"
    )


def _two_processes(model_dir, compile_cache, tmp_path, read_stdout_of_0=False, only=None) -> list:
    """The sharded command as processes 0 and 1 of a 2-process run on one machine (2
    devices each); stderr in tmp_path/stderr<i>.txt, process 0's stdout piped if asked.
    `only`: process index -> arguments that process alone gets."""
    port = processes.free_port()
    procs = []
    for i in range(2):
        flags_i = [f"--coordinator_address=localhost:{port}", "--num_processes=2"]
        piped = read_stdout_of_0 and i == 0
        with open(tmp_path / f"stderr{i}.txt", "w") as log:
            procs.append(
                subprocess.Popen(
                    command(
                        model_dir, *SHARDED, *flags_i, f"--process_id={i}", *(only or {}).get(i, [])
                    ),
                    cwd=ROOT,
                    env=env(compile_cache, devices=2),
                    stdout=subprocess.PIPE if piped else subprocess.DEVNULL,
                    stderr=log,
                    text=True,
                )
            )
    return procs


def _wait(procs, timeout: float) -> list[int]:
    """The exit codes; a process still running after `timeout` s is killed (a hang fails
    the test instead of blocking CI)."""
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()


def _assert_error_lines(tmp_path, lines) -> None:
    """_two_processes' stderr files: one error line each (processes.py)."""
    stderrs = [(tmp_path / f"stderr{i}.txt").read_text() for i in range(len(lines))]
    processes.assert_one_error_line_each(stderrs, lines)


def test_two_processes_match_one_process(sharded_reference, compile_cache, tmp_path):
    two = tmp_path / "two"
    procs = _two_processes(two, compile_cache, tmp_path)
    codes = _wait(procs, 600)
    assert codes == [0, 0], (tmp_path / "stderr0.txt").read_text()[-3000:]
    got, want = losses(two), losses(sharded_reference)
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([got[s] for s in want], list(want.values()), rtol=1e-5)
    assert (two / "checkpoints" / str(STEPS) / "params").is_dir()
    # Each process holds half of every held-out batch; the loss is the one-process one.
    got, want = losses(two, "eval_loss"), losses(sharded_reference, "eval_loss")
    assert sorted(got) == sorted(want) == [0, 5, STEPS]
    np.testing.assert_allclose([got[s] for s in want], list(want.values()), rtol=1e-5)


def test_a_set_up_error_on_process_1_alone_stops_both(compile_cache, tmp_path):
    """Data missing on one host of a pod: process 0 would otherwise wait for process 1 in
    the restore's collectives until a timeout ended it with a trace."""
    only = {1: [f"--gin.DATA_DIR='{tmp_path / 'no_data'}'"]}
    procs = _two_processes(tmp_path / "run", compile_cache, tmp_path, only=only)
    codes = _wait(procs, 300)
    assert codes == [2, 2], (tmp_path / "stderr0.txt").read_text()[-3000:]
    want = [
        "error: process 1 stopped in set-up (its error says why); stopping too",
        f"error: {tmp_path / 'no_data'}: data directory does not exist",
    ]
    _assert_error_lines(tmp_path, want)
    assert not (tmp_path / "run").exists()  # neither process wrote anything


def test_run_files_process_0_cannot_write_stop_both(compile_cache, tmp_path):
    """config.gin cannot be written (a folder of that name): process 1 used to go on to
    the first step's collectives and wait there for process 0."""
    run = tmp_path / "run"
    (run / "config.gin").mkdir(parents=True)
    procs = _two_processes(run, compile_cache, tmp_path)
    assert _wait(procs, 300) == [2, 2], (tmp_path / "stderr0.txt").read_text()[-3000:]
    _assert_error_lines(
        tmp_path,
        [
            f"error: MODEL_DIR {run}: cannot write config.gin, model_config.json or the "
            f"tokenizer files (Cannot overwrite: {run / 'config.gin'} is a directory)",
            "error: process 0 stopped while writing MODEL_DIR's files (its error says why); "
            "stopping too",
        ],
    )


def test_an_infer_eval_write_failing_mid_run_on_process_0_stops_both(compile_cache, tmp_path):
    """Process 0 writes infer_eval's folders: a file where step 2's must go. Process 1
    used to go on to step 3's collectives while process 0 saved alone, until a gloo
    deadline ended both with a trace; now both save step 2 and stop, one line each."""
    run = tmp_path / "run"
    (run / "infer_eval").mkdir(parents=True)
    (run / "infer_eval" / "2").write_text("")
    infer_eval = [
        "--gin.EVAL_LOSS_EVERY_STEPS=0",
        "--gin.INFER_EVAL_EVERY_STEPS=2",
        "--gin.INFER_EVAL_MAX_EXAMPLES=2",
        "--gin.INFER_EVAL_MIXTURE='ecom:EN:ABSA:CLS:review_topic_category'",
        "--gin.DecodeConfig.max_new_tokens=4",
    ]
    only = {0: infer_eval, 1: infer_eval}
    procs = _two_processes(run, compile_cache, tmp_path, read_stdout_of_0=True, only=only)
    try:
        out = procs[0].communicate(timeout=150)[0]
    finally:
        codes = _wait(procs, 30)
    assert codes == [2, 2], (tmp_path / "stderr1.txt").read_text()[-3000:]
    want = [
        f"error: the infer_eval folder {run}/infer_eval/2 is a file: give a folder",
        "error: process 0 stopped while writing predictions/ to the infer_eval folder (its "
        "error says why); stopping too",
    ]
    _assert_error_lines(tmp_path, want)
    assert f"infer_eval failed at step 2; saved {run}/checkpoints/2" in out
    assert sorted(losses(run)) == [1, 2]
    assert checkpointing.Checkpointer(run, checkpointing.CheckpointConfig()).all_steps() == [2]
    assert (run / "infer_eval" / "0" / "metrics.json").is_file()


def test_a_log_process_0_cannot_write_stops_both_after_the_same_step(compile_cache, tmp_path):
    """metrics.jsonl cannot be written at step 1 (a folder where its temporary goes), on
    process 0, which alone writes the logs. Process 0 used to raise with a trace while
    process 1 waited in step 2's collectives; now every host's guard agrees one check
    later: both save step 2 and stop, one line each."""
    run = tmp_path / "run"
    (run / "metrics.jsonl.tmp").mkdir(parents=True)
    procs = _two_processes(run, compile_cache, tmp_path, read_stdout_of_0=True)
    try:
        out = procs[0].communicate(timeout=150)[0]
    finally:
        codes = _wait(procs, 30)
    assert codes == [2, 2], (tmp_path / "stderr1.txt").read_text()[-3000:]
    _assert_error_lines(
        tmp_path,
        [
            f"error: cannot write {run}/metrics.jsonl: [Errno 21] Is a directory: "
            f"'{run}/metrics.jsonl.tmp'",
            "error: process 0 stopped at step 2 (its error says why); stopping too",
        ],
    )
    assert f"writing the logs failed at step 2; saved {run}/checkpoints/2" in out
    assert checkpointing.Checkpointer(run, checkpointing.CheckpointConfig()).all_steps() == [2]


def test_sigterm_to_one_of_two_processes_stops_both_after_the_same_step(compile_cache, tmp_path):
    """A preemption notice may reach one host only: the hosts agree through the
    pipelined all-reduce, save the same step together and exit 0."""
    run = tmp_path / "two"
    procs = _two_processes(run, compile_cache, tmp_path, read_stdout_of_0=True)
    for line in procs[0].stdout:
        if line.startswith("step 2/"):
            procs[1].send_signal(signal.SIGTERM)  # process 1 only
            break
    out = procs[0].stdout.read()
    codes = _wait(procs, 600)
    assert codes == [0, 0], (tmp_path / "stderr1.txt").read_text()[-3000:]
    stopped = max(losses(run))
    assert 2 < stopped < STEPS and f"preempted at step {stopped}" in out
    saved = checkpointing.Checkpointer(run, checkpointing.CheckpointConfig()).all_steps()
    assert saved[-1] == stopped and sorted(losses(run)) == list(range(1, stopped + 1))


def test_a_resume_with_another_config_keeps_the_one_that_trained_before(
    default_run, tmp_path, capsys
):
    """config.gin is the latest command's; the config that trained steps 1..10 stays as
    config.until_step_10.gin. Each run file is written whole (no .tmp left)."""
    model_dir = tmp_path / "run"
    shutil.copytree(default_run[0], model_dir)
    recorded = (model_dir / "config.gin").read_text()
    train_in_process(model_dir, *COMMON, f"--gin.TRAIN_STEPS={STEPS + 1}")
    out = capsys.readouterr().out
    assert f"finished step {STEPS + 1}" in out
    assert f"model: bloom, 2 layers, width 96, float32, from MODEL_DIR's step {STEPS}\n" in out
    assert (model_dir / f"config.until_step_{STEPS}.gin").read_text() == recorded
    now = (model_dir / "config.gin").read_text()
    assert now.splitlines()[0].endswith(f"'--gin_bindings=TRAIN_STEPS = {STEPS + 1}'")
    assert not list(model_dir.glob("*.tmp"))


def test_a_finished_run_is_left_as_it_was(default_run, tmp_path, capsys):
    """Rerunning a finished run trains nothing, so its config.gin keeps what trained it;
    TRAIN_STEPS below its step is an error, not "starting at step 10/5"."""
    model_dir = tmp_path / "run"
    shutil.copytree(default_run[0], model_dir)
    recorded = (model_dir / "config.gin").read_text()
    train_in_process(model_dir, *COMMON, "--gin_bindings=LEARNING_RATE = 0.01")
    out = capsys.readouterr().out
    assert "MODEL_DIR is at its last step (10) already: nothing to train" in out
    assert f"finished step {STEPS}; no step trained" in out
    assert (model_dir / "config.gin").read_text() == recorded
    assert run_in_process(model_dir, *COMMON, "--gin.TRAIN_STEPS=5") == (
        f"error: MODEL_DIR {model_dir} holds step 10, past TRAIN_STEPS = 5: nothing to train "
        "(raise TRAIN_STEPS, or give another MODEL_DIR)"
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gin.MESH_SHAPE=(3, 1, 1)"], "MESH_SHAPE (3, 1, 1) needs 3 devices but 8 are"),
        (["--gin.BATCH_SIZE=12"], "BATCH_SIZE 12 / num_microbatches 1 = 12 rows per micro"),
        (
            ["--gin.TASK_FEATURE_LENGTHS={'inputs': 500, 'targets': 100}"],
            "give 600 tokens per row (inputs + targets) but the model's max_positions is 512",
        ),
        (["--gin.MIXTURE_OR_TASK_NAME='ecom_instruct_nope'"], "unknown task or mixture"),
        (["--gin.NO_SUCH_THING.x=1"], "gin config:"),
        (  # eval's recipe, where gin would suggest ModelSpec for eval's ModelSource
            ["--gin_file=gin_configs/eval.gin"],
            f"gin config: gin_configs/eval.gin, line {EVAL_GIN_MODEL_SOURCE}: ModelSource is an "
            "evaluation setting: "
            "train takes a training recipe, --gin_file=gin_configs/ecom.gin or",
        ),
        (["--gin.MODEL_DIR='/dev/null'"], "MODEL_DIR /dev/null is a file: give a folder"),
        (
            ["--gin.MODEL_DIR='/dev/null/run'"],
            "MODEL_DIR /dev/null/run is inside /dev/null, a file: give a folder",
        ),
        (  # a folder that cannot be made (as root too): before any weights load
            ["--gin.MODEL_DIR='/sys/ecomgpt_run'"],
            "MODEL_DIR /sys/ecomgpt_run: cannot write there (",
        ),
    ],
)
def test_user_errors_are_one_line(tmp_path, args, message):
    text = run_in_process(tmp_path, *args)
    assert text.startswith("error: ") and "\n" not in text
    assert message in text


def test_a_warmup_longer_than_the_run_is_a_warning(tmp_path):
    text = run_in_process(
        tmp_path / "run", "--gin.WARMUP_STEPS=500", "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=12"
    )
    warning, error = text.splitlines()
    assert warning == (
        "warning: WARMUP_STEPS 500 >= TRAIN_STEPS 2: the learning rate never reaches LEARNING_RATE"
    )
    assert error.startswith("error: BATCH_SIZE 12")  # (stopped here, after the warning)


def test_initial_weights_give_the_architecture_and_the_note_says_so(tmp_path, capsys):
    """INIT_FROM_CHECKPOINT's model (max_positions 256 here), not tiny_bloom.gin's (512):
    the note names the ModelConfig bindings left unused, before the shape check stops."""
    small = dataclasses.replace(
        model_config.get_preset("tiny-bloom"),
        hidden=32,
        heads=4,
        kv_heads=4,
        head_dim=8,
        mlp_dim=128,
        max_positions=256,
    )
    zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), decoder.abstract_params(small))
    hf_io.save_hf(small, zeros, tmp_path / "hf")
    convert.hf_to_orbax(tmp_path / "hf", tmp_path / "init")
    message = run_in_process(
        tmp_path / "run",
        f"--gin.INIT_FROM_CHECKPOINT='{tmp_path / 'init'}'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 300, 'targets': 64}",
    )
    assert message == (
        "error: TASK_FEATURE_LENGTHS give 364 tokens per row (inputs + targets) but the "
        "model's max_positions is 256"
    )
    assert capsys.readouterr().out.splitlines()[-1] == (
        "note: INIT_FROM_CHECKPOINT sets the architecture; these ModelConfig bindings are not "
        "used: hidden=96 (weights: 32), heads=6 (weights: 4), kv_heads=6 (weights: 4), "
        "head_dim=16 (weights: 8), mlp_dim=384 (weights: 128), max_positions=512 (weights: 256)"
    )


def test_a_resume_reads_the_hf_tokenizer_copied_to_model_dir(tmp_path):
    """INIT_FROM_HF's folder is gone: a resume reads the tokenizer.json the run copied to
    MODEL_DIR (model_dir.write_run_files); a fresh start still needs the folder."""
    import tokenizers

    words = {"<unk>": 0, "</s>": 1, "hello": 2}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(words, unk_token="<unk>"))
    spec = run_config.ModelSpec(config=model_config.get_preset("tiny-bloom"), vocabulary="hf")
    run_dir, gone = tmp_path / "run", tmp_path / "gone"
    run = run_config.TrainConfig(model_dir=str(run_dir), init_from_hf=str(gone))
    with pytest.raises(FileNotFoundError) as info:
        train.make_vocabulary(spec, run)
    assert str(info.value) == f"Hugging Face tokenizer file not found: {gone}"
    (run_dir / "checkpoints" / "5").mkdir(parents=True)
    tokenizer.save(str(run_dir / "tokenizer.json"))
    vocabulary = train.make_vocabulary(spec, run)
    assert vocabulary.path == run_dir / "tokenizer.json" and vocabulary.eos_id == 1
    assert vocabulary.encode("hello") == [2]


def test_mixture_without_data_is_one_line(tmp_path):
    import tasks

    empty = tmp_path / "empty_root"
    empty.mkdir()
    try:
        text = run_in_process(tmp_path / "run", f"--gin.DATA_DIR='{empty}'")
    finally:
        tasks.register_ecom_tasks()  # back to the bundled sample for other tests
    assert text.startswith("error: ") and "\n" not in text
    assert str(empty) in text


def test_a_gs_model_dir_without_its_package_stops_every_process_first(tmp_path, monkeypatch):
    """TensorBoard on gs:// needs google-cloud-storage; without it process 0's writer
    would fail after the restore while the other hosts wait in a collective."""
    from ecomgpt_jax import metrics_logger

    assert metrics_logger.missing_writer_package("gs://bucket/run") is None  # pinned
    assert metrics_logger.missing_writer_package(tmp_path) is None
    monkeypatch.setattr(metrics_logger, "missing_writer_package", lambda d: "google-cloud-storage")
    text = run_in_process(tmp_path / "run")
    assert text == (
        f"error: MODEL_DIR {tmp_path / 'run'} needs the package google-cloud-storage for its "
        "TensorBoard logs: pip install -r requirements.txt"
    )
    assert not (tmp_path / "run").exists()  # stopped before anything was written
