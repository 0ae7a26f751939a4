"""The training loop (ecomgpt_jax/trainer.py): initial weights, the held-out loss per task,
when evaluations run, and what a failing or interrupted evaluation (or data read) leaves
(SIGTERM and Ctrl-C: test_preemption.py; the run's configuration: test_run_config.py;
whole runs from the command line: test_train.py)."""

import dataclasses
import functools
import json
import os
import pathlib
import resource
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import processes
import pytest
from trainer_helpers import TINY, mesh_of, tiny_batch, tiny_run

from ecomgpt_jax import checkpointing, convert, metrics_logger, preemption, run_config, trainer
from ecomgpt_jax import partitioning as P
from ecomgpt_jax import train_step as ts
from ecomgpt_jax.ecominstruct.reader import DataError
from ecomgpt_jax.models import config as model_config
from ecomgpt_jax.models import decoder, hf_io

ROOT = pathlib.Path(__file__).resolve().parent.parent


class Batches:
    """Random tiny batches, with the `position` InputIterator keeps."""

    def __init__(self):
        self.position = 0
        self.batch = tiny_batch()

    def __iter__(self):
        return self

    def __next__(self):
        self.position += 1
        return self.batch


class FailingEvaluation:
    """infer_eval and eval_batches that fail at the given evaluation (0: the first)."""

    def __init__(self, fail_at: int):
        self.calls, self.fail_at = 0, fail_at

    def _call(self):
        self.calls += 1
        if self.calls > self.fail_at:
            raise RuntimeError("evaluation ran out of memory")

    def __call__(self, params, step):  # infer_eval
        self._call()
        return {"average": {"rouge-l-f1": 0.5}}

    def __iter__(self):  # eval_batches
        self._call()
        return iter([("task", eval_batch(0))])


def fit_with_failing_evaluation(tmp_path, kind: str, fail_at: int) -> dict:
    """A 6-step run evaluating `kind` every 2 steps, whose evaluation number `fail_at`
    (0: at the start) raises; returns the hook, for a resume."""
    run = tiny_run(tmp_path, train_steps=6, **{f"{kind}_every_steps": 2})
    job = trainer.Trainer(run, TINY, mesh_of((1, 1, 1), n=1))
    state, _ = job.initial_state()
    hook = {"infer_eval" if kind == "infer_eval" else "eval_batches": FailingEvaluation(fail_at)}
    with pytest.raises(RuntimeError, match="evaluation ran out of memory"):
        job.fit(state, Batches(), checkpointing.DataPosition(0, "m", 0, 8, 1), **hook)
    return hook


@pytest.mark.parametrize("kind", metrics_logger.EVAL_KINDS)
def test_a_failing_evaluation_saves_the_step_first(tmp_path, capsys, kind):
    hook = fit_with_failing_evaluation(tmp_path, kind, fail_at=1)
    step_dir = tmp_path / "run" / "checkpoints" / "2"
    assert f"{kind} failed at step 2; saved {step_dir}\n" in capsys.readouterr().out
    saved = checkpointing.Checkpointer(tmp_path / "run", checkpointing.CheckpointConfig())
    assert saved.all_steps() == [2]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]  # step 2 logged, too
    # The resumed run makes the evaluation that failed, then goes on.
    job = trainer.Trainer(
        tiny_run(tmp_path, train_steps=6, **{f"{kind}_every_steps": 2}),
        TINY,
        mesh_of((1, 1, 1), n=1),
    )
    state, _ = job.initial_state()
    hook = {k: FailingEvaluation(99) for k in hook}
    job.fit(state, Batches(), checkpointing.DataPosition(2, "m", 0, 8, 1), **hook)
    lines = (tmp_path / "run" / f"{kind}.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [0, 2, 4, 6]


class FailingBatches(Batches):
    """Batches whose read number `fail_at` (1-based) raises, as InputIterator does on a
    damaged file."""

    def __init__(self, fail_at: int):
        super().__init__()
        self.fail_at = fail_at

    def __next__(self):
        if self.position + 1 == self.fail_at:
            raise DataError("reading mixture 'm' failed after 2 batches: DataLossError")
        return super().__next__()


def several_hosts(monkeypatch) -> None:
    """fit's guard as on several hosts (forced here on one process): a request, or a
    failure, stops every host one check after the check that carries it."""
    monkeypatch.setattr(
        trainer.preemption,
        "PreemptionGuard",
        functools.partial(preemption.PreemptionGuard, collective=True),
    )


@pytest.mark.parametrize("hosts", ["one", "several"])
def test_a_failing_data_read_saves_the_steps_trained(tmp_path, capsys, monkeypatch, hosts):
    """One host: read 3 fails during step 2, which is saved. Several: two batches are
    read ahead, so the host whose read 4 fails (during step 2) still has batch 3 for the
    step that every host's check agrees on, step 3. The position saved counts the
    batches used, not those read ahead or failed."""
    lag = int(hosts == "several")
    if lag:
        several_hosts(monkeypatch)
    job = trainer.Trainer(tiny_run(tmp_path, train_steps=6), TINY, mesh_of((1, 1, 1), n=1))
    state, _ = job.initial_state()
    with pytest.raises(DataError, match="DataLossError"):
        job.fit(state, FailingBatches(3 + lag), checkpointing.DataPosition(0, "m", 0, 8, 1))
    stopped = 2 + lag
    step_dir = tmp_path / "run" / "checkpoints" / str(stopped)
    assert capsys.readouterr().out.endswith(
        f"reading data failed at step {stopped}; saved {step_dir}\n"
    )
    assert job.checkpointer.all_steps() == [stopped]
    assert job.checkpointer.restore(stopped, job.layout)[1].batches_consumed == stopped
    # A failure among the first reads (before step 1, on every host) has nothing to save.
    job = trainer.Trainer(tiny_run(tmp_path / "b", train_steps=6), TINY, mesh_of((1, 1, 1), n=1))
    state, _ = job.initial_state()
    with pytest.raises(DataError):
        job.fit(state, FailingBatches(1 + lag), checkpointing.DataPosition(0, "m", 0, 8, 1))
    assert not job.checkpointer.all_steps()


# fit on process `argv[2]` of two (2 CPU devices each), over a 4-device data mesh: process
# 1's read 4 fails (a damaged file on one host). Prints what fit raised and what was saved.
TWO_HOSTS = """
import pathlib
import sys

import jax

jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from trainer_helpers import TINY, mesh_of, tiny_batch, tiny_run

from ecomgpt_jax import checkpointing, partitioning, trainer
from ecomgpt_jax.ecominstruct.reader import DataError

run = tiny_run(pathlib.Path(sys.argv[3]), train_steps=6)
job = trainer.Trainer(run, TINY, mesh_of((4, 1, 1), n=4))
sharding = partitioning.data_sharding(job.mesh)
me = jax.process_index()
rows = tiny_batch()


class HostBatches:
    position = 0

    def __next__(self):
        if me == 1 and self.position == 3:
            raise DataError("reading mixture 'm' failed after 3 batches: DataLossError")
        self.position += 1
        return {
            k: jax.make_array_from_process_local_data(sharding, v[4 * me : 4 * me + 4], (8, 16))
            for k, v in rows.items()
        }


state, _ = job.initial_state()
try:
    job.fit(state, HostBatches(), checkpointing.DataPosition(0, "m", 0, 8, 2))
except Exception as e:
    print(f"raised {type(e).__name__}: {e}")
saved = job.checkpointer.all_steps()
print("saved", saved, job.checkpointer.restore(saved[-1], job.layout)[1].batches_consumed)
"""


def test_a_read_failing_on_one_of_two_processes_stops_both_after_the_same_step(tmp_path):
    """Two real processes: process 1 alone cannot read batch 4. It used to raise alone
    and leave process 0 waiting in step 4's collectives until a deadline ended it with a
    trace; now both run step 3 (read ahead), save it together and raise, one error each."""
    port = processes.free_port()
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_HOSTS, f"localhost:{port}", str(i), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        outs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs
    step_dir = tmp_path / "run" / "checkpoints" / "3"
    assert f"process 1 failed at step 3; saved {step_dir}\n" in outs[0]
    assert outs[0].endswith(
        "raised UserError: process 1 stopped at step 3 (its error says why); stopping too\n"
        "saved [3] 3\n"
    ), outs[0]
    assert outs[1].endswith(
        "raised DataError: reading mixture 'm' failed after 3 batches: DataLossError\nsaved [3] 3\n"
    ), outs[1]


class LogBlockedAt:
    """EVAL_BATCHES whose evaluation number `at` (0: the first) finds its log's
    temporary file blocked by a folder, as a full disk would fail its write."""

    def __init__(self, obstacle, at: int):
        self.obstacle, self.at, self.calls = obstacle, at, 0

    def __iter__(self):
        if self.calls == self.at:
            self.obstacle.mkdir()
        self.calls += 1
        return iter(EVAL_BATCHES)


@pytest.mark.parametrize("hosts", ["one", "several"])
@pytest.mark.parametrize(
    "log, at, stops",  # the log, the evaluation whose write fails, the step saved
    [("metrics", None, 1), ("eval_loss", 0, 0), ("eval_loss", 1, 2)],
)
def test_a_log_that_cannot_be_written_stops_the_run_after_saving(
    tmp_path, capsys, monkeypatch, log, at, stops, hosts
):
    """Process 0 alone writes the logs: its failure to write one is every host's stop at
    an agreed step, saved: metrics.jsonl at step 1 -> step 1 (2 on several hosts, one
    check later); an evaluation's log -> that evaluation's step on any number of hosts
    (checked at once after it), so that the resume evaluates it again; at step 0, before
    any training. The resumed run goes on."""
    if hosts == "several":
        several_hosts(monkeypatch)
        stops += log == "metrics"
    run = tiny_run(tmp_path, train_steps=6, log_every_steps=1, eval_loss_every_steps=2)
    (tmp_path / "run").mkdir()
    obstacle = tmp_path / "run" / f"{log}.jsonl.tmp"
    if at is None:
        obstacle.mkdir()
    job = trainer.Trainer(run, TINY, mesh_of((1, 1, 1), n=1))
    state, _ = job.initial_state()
    evals = EVAL_BATCHES if at is None else LogBlockedAt(obstacle, at)
    with pytest.raises(metrics_logger.LogWriteError, match=f"cannot write .*/{log}.jsonl: "):
        job.fit(state, Batches(), checkpointing.DataPosition(0, "m", 0, 8, 1), None, evals)
    kept = (
        f"saved {tmp_path / 'run' / 'checkpoints' / str(stops)}"
        if stops
        else ("nothing trained is lost")
    )
    assert capsys.readouterr().out.endswith(f"writing the logs failed at step {stops}; {kept}\n")
    assert job.checkpointer.all_steps() == ([stops] if stops else [])
    obstacle.rmdir()
    job = trainer.Trainer(run, TINY, mesh_of((1, 1, 1), n=1))
    state, _ = job.initial_state()
    position = checkpointing.DataPosition(stops, "m", 0, 8, 1)
    assert job.fit(state, Batches(), position, None, EVAL_BATCHES).step == 6
    lines = (tmp_path / "run" / "eval_loss.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [0, 2, 4, 6]


class FileSizeLimit:
    """The checkpoint of step `at` fails for real, as on a full disk: its files are
    larger than RLIMIT_FSIZE, set just before that save (with SIGXFSZ ignored, writes
    past it fail with EFBIG, "File too large"); the logs stay smaller than the limit.
    `sync`: a save that raises itself instead (orbax raises a failed async save's error
    from the next save), as a stand-in for the save."""

    LIMIT = 16 * 1024  # bytes: TINY's parameters alone are larger

    def __init__(self, checkpointer, at: int, sync: bool):
        self.checkpointer, self.at, self.sync = checkpointer, at, sync
        self.save = checkpointer.save
        checkpointer.save = self._save
        self.limits = resource.getrlimit(resource.RLIMIT_FSIZE)
        self.sigxfsz = signal.getsignal(signal.SIGXFSZ)

    def _save(self, state, position, force=False):
        if int(state.step) == self.at:
            self.checkpointer.wait()
            if self.sync:
                self.checkpointer._started.append(self.at)
                with self.checkpointer._writing():
                    raise OSError(28, "No space left on device")
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.LIMIT, self.limits[1]))
            started = self.save(state, position, force)
            # As during a real step (seconds): the background save fails before the next.
            deadline = time.monotonic() + 60
            while self.checkpointer._manager.is_saving_in_progress():
                assert time.monotonic() < deadline, "the save neither ended nor failed"
                time.sleep(0.01)
            return started
        return self.save(state, position, force)

    def restore(self):
        resource.setrlimit(resource.RLIMIT_FSIZE, self.limits)
        signal.signal(signal.SIGXFSZ, self.sigxfsz)


@pytest.mark.parametrize(
    "at, sync, stops, reason",  # the save that fails, how, where training stops, why
    [
        (4, False, 5, "File too large"),
        (6, False, 6, "File too large"),
        (4, True, 5, "[Errno 28] No space left on device"),
    ],
)
def test_a_checkpoint_that_cannot_be_written_stops_the_run_in_one_line(
    tmp_path, capsys, at, sync, stops, reason
):
    """A full disk: the run stops at the first check of the stop flag after it learns of
    it (the step after a failing save; not at the next save, minutes later, with orbax's
    traces), tries no more saves, and says which step was not written and which is the
    last saved; the resume goes on from there."""
    run = tiny_run(tmp_path, train_steps=6, log_every_steps=1)
    run = dataclasses.replace(run, checkpoint=checkpointing.CheckpointConfig(save_every_steps=2))
    job = trainer.Trainer(run, TINY, mesh_of((1, 1, 1), n=1))
    limit = FileSizeLimit(job.checkpointer, at, sync)
    state, _ = job.initial_state()
    try:
        with pytest.raises(checkpointing.CheckpointWriteError) as info:
            job.fit(state, Batches(), checkpointing.DataPosition(0, "m", 0, 8, 1))
    finally:
        limit.restore()
    assert str(info.value) == (
        f"{tmp_path / 'run' / 'checkpoints' / str(at)}: checkpoint could not be written "
        f"({reason}); the last step saved is {at - 2}"
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith(f"step {stops}/6 ")
    assert lines[-1] == (
        f"writing a checkpoint failed at step {stops}; not saved (the error says which step was)"
    )
    assert job.checkpointer.all_steps()[-1] == at - 2
    job = trainer.Trainer(run, TINY, mesh_of((1, 1, 1), n=1))
    state, _ = job.initial_state()
    assert int(state.step) == at - 2
    assert job.fit(state, Batches(), checkpointing.DataPosition(at - 2, "m", 0, 8, 1)).step == 6


def test_a_checkpoint_failing_on_another_host_is_skipped_here_too(tmp_path, capsys, monkeypatch):
    """orbax's save is a collective: once a write failed on any host, every host skips
    the save at the agreed stop (one alone would wait for the others), and process 0
    does not say "saved". Seen from process 0 while process 1's step-4 write fails: its
    guard learns of a failure (FAILED) with none of its own."""
    other_failed = {"now": False}

    class Guard(preemption.PreemptionGuard):
        def should_stop(self, wait=False):
            if other_failed["now"]:
                self.requested = self.FAILED
            return super().should_stop(wait)

    def any_process_failed(failed):
        return [1] if other_failed["now"] else ([0] if failed else [])

    class Batches4(Batches):
        def __next__(self):
            other_failed["now"] = self.position >= 4  # read during step 4 (one ahead)
            return super().__next__()

    monkeypatch.setattr(trainer.preemption, "PreemptionGuard", Guard)
    monkeypatch.setattr(trainer.multihost, "any_process_failed", any_process_failed)
    run = tiny_run(tmp_path, train_steps=6)
    run = dataclasses.replace(run, checkpoint=checkpointing.CheckpointConfig(save_every_steps=2))
    job = trainer.Trainer(run, TINY, mesh_of((1, 1, 1), n=1))
    state, _ = job.initial_state()
    with pytest.raises(run_config.UserError) as info:
        job.fit(state, Batches4(), checkpointing.DataPosition(0, "m", 0, 8, 1))
    assert str(info.value) == "process 1 stopped at step 4 (its error says why); stopping too"
    assert capsys.readouterr().out.endswith(
        "process 1 failed at step 4; not saved (the error says which step was)\n"
    )
    assert job.checkpointer.all_steps() == [2]


def test_a_failure_before_a_failing_evaluation_is_said_too(tmp_path, capsys, monkeypatch):
    """On several hosts metrics.jsonl failing at step 1 stops the run at step 2; step 1's
    evaluation raising in between stops it first, and the log's failure is said too."""
    several_hosts(monkeypatch)
    run = tiny_run(tmp_path, train_steps=6, log_every_steps=1, eval_loss_every_steps=1)
    (tmp_path / "run" / "metrics.jsonl.tmp").mkdir(parents=True)
    job = trainer.Trainer(run, TINY, mesh_of((1, 1, 1), n=1))
    state, _ = job.initial_state()
    with pytest.raises(RuntimeError, match="evaluation ran out of memory"):
        job.fit(
            state,
            Batches(),
            checkpointing.DataPosition(0, "m", 0, 8, 1),
            None,
            FailingEvaluation(1),
        )
    out, err = capsys.readouterr()
    assert f"eval_loss failed at step 1; saved {tmp_path / 'run' / 'checkpoints' / '1'}" in out
    assert err == (
        f"writing the logs failed too: cannot write {tmp_path / 'run' / 'metrics.jsonl'}: "
        f"[Errno 21] Is a directory: '{tmp_path / 'run' / 'metrics.jsonl.tmp'}'\n"
    )


@pytest.mark.parametrize("kind", metrics_logger.EVAL_KINDS)
def test_a_failing_first_evaluation_saves_nothing_and_says_how_to_go_on(tmp_path, capsys, kind):
    fit_with_failing_evaluation(tmp_path, kind, fail_at=0)
    saved = checkpointing.Checkpointer(tmp_path / "run", checkpointing.CheckpointConfig())
    assert saved.all_steps() == []
    assert capsys.readouterr().out == (
        f"{kind} failed at step 0; nothing trained is lost; to train on without it set "
        f"{kind.upper()}_EVERY_STEPS=0\n"
    )


def test_an_evaluation_skipped_by_a_preemption_is_made_on_resume(tmp_path, monkeypatch):
    run = tiny_run(tmp_path, train_steps=6, eval_loss_every_steps=2)
    calls = []

    def stop_after_step_2(guard, wait=False):
        calls.append(wait)
        return len(calls) == 3  # after step 0's evaluation, step 1, then SIGTERM in step 2

    monkeypatch.setattr(preemption.PreemptionGuard, "should_stop", stop_after_step_2)
    job = trainer.Trainer(run, TINY, mesh_of((1, 1, 1), n=1))
    state, _ = job.initial_state()
    result = job.fit(
        state, Batches(), checkpointing.DataPosition(0, "m", 0, 8, 1), None, EVAL_BATCHES
    )
    path = tmp_path / "run" / "eval_loss.jsonl"
    assert result.preempted and result.step == 2
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [0]
    job = trainer.Trainer(run, TINY, mesh_of((1, 1, 1), n=1))
    state, _ = job.initial_state()
    job.fit(state, Batches(), checkpointing.DataPosition(2, "m", 0, 8, 1), None, EVAL_BATCHES)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [0, 2, 4, 6]


def test_a_stop_asked_for_during_an_evaluation_saves_before_another_step(tmp_path, monkeypatch):
    run = tiny_run(tmp_path, train_steps=6, eval_loss_every_steps=2)
    calls = []

    def stop_during_the_step_2_evaluation(guard, wait=False):
        calls.append(wait)
        return len(calls) == 4  # after step 0's evaluation, steps 1, 2, step 2's evaluation

    monkeypatch.setattr(
        preemption.PreemptionGuard, "should_stop", stop_during_the_step_2_evaluation
    )
    job = trainer.Trainer(run, TINY, mesh_of((1, 1, 1), n=1))
    state, _ = job.initial_state()
    result = job.fit(
        state, Batches(), checkpointing.DataPosition(0, "m", 0, 8, 1), None, EVAL_BATCHES
    )
    assert result.preempted and result.step == 2
    assert calls == [True, False, False, True]  # after an evaluation: a waiting check
    path = tmp_path / "run" / "eval_loss.jsonl"
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [0, 2]
    saved = checkpointing.Checkpointer(tmp_path / "run", checkpointing.CheckpointConfig())
    assert saved.all_steps() == [2]


def test_a_stop_asked_for_during_the_final_evaluation_leaves_a_finished_run(tmp_path, monkeypatch):
    run = tiny_run(tmp_path, train_steps=2, eval_loss_every_steps=2)
    stop, evaluations = [], []
    monkeypatch.setattr(
        preemption.PreemptionGuard, "should_stop", lambda guard, wait=False: bool(stop)
    )

    class AskedToStop:  # SIGTERM arrives while the last step's evaluation runs
        def __iter__(self):
            evaluations.append(1)
            if len(evaluations) == 2:
                stop.append(1)
            return iter(EVAL_BATCHES)

    job = trainer.Trainer(run, TINY, mesh_of((1, 1, 1), n=1))
    state, _ = job.initial_state()
    result = job.fit(
        state, Batches(), checkpointing.DataPosition(0, "m", 0, 8, 1), None, AskedToStop()
    )
    assert len(evaluations) == 2 and stop and result.step == 2 and not result.preempted


def data_position(batches_consumed: int) -> checkpointing.DataPosition:
    return checkpointing.DataPosition(batches_consumed, "m", 0, 8, 1)


@pytest.mark.parametrize("start", [0, 2])
def test_a_stop_asked_for_during_the_first_evaluation_trains_nothing_more(
    tmp_path, monkeypatch, start
):
    """A preemption notice during step 0's evaluation (or the one a resume redoes) stops
    there: no compilation, no step trained, nothing saved that was not saved already."""
    run = tiny_run(tmp_path, train_steps=6, eval_loss_every_steps=2)
    if start:  # a run preempted in step 2's evaluation: checkpoint 2, no log at step 2
        job = trainer.Trainer(run, TINY, mesh_of((1, 1, 1), n=1))
        state, _ = job.initial_state()
        job.checkpointer.save(state.replace(step=np.int32(start)), data_position(start), force=True)
        job.checkpointer.close()
    calls = []

    def asked_to_stop(guard, wait=False):
        calls.append(wait)
        return True

    monkeypatch.setattr(preemption.PreemptionGuard, "should_stop", asked_to_stop)
    job = trainer.Trainer(run, TINY, mesh_of((1, 1, 1), n=1))
    state, position = job.initial_state()
    result = job.fit(state, Batches(), position or data_position(0), None, EVAL_BATCHES)
    assert calls == [True]  # asked once, after the evaluation: no step was trained
    assert (result.step, result.preempted, result.first_loss) == (start, True, None)
    saved = checkpointing.Checkpointer(tmp_path / "run", checkpointing.CheckpointConfig())
    assert saved.all_steps() == ([start] if start else [])
    assert result.checkpoint_dir == (str(saved.step_dir(start)) if start else None)
    path = tmp_path / "run" / "eval_loss.jsonl"
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()][-1] == start


@pytest.mark.parametrize("evaluate_at_end", [False, True])
def test_a_stop_in_the_last_step_is_a_stop_only_if_an_evaluation_is_left(
    tmp_path, monkeypatch, evaluate_at_end
):
    """Ctrl-C in the last step: with nothing left to do the run is finished (exit 0, not
    "interrupted ... resume"); with the final evaluation left, a resume makes it."""
    run = tiny_run(tmp_path, train_steps=3, eval_loss_every_steps=2 if evaluate_at_end else 0)
    calls = []

    def stop_in_step_3(guard, wait=False):
        calls.append(wait)
        # Checks: (step 0's evaluation), step 1, step 2, (step 2's evaluation), step 3.
        return len(calls) == (5 if evaluate_at_end else 3)

    monkeypatch.setattr(preemption.PreemptionGuard, "should_stop", stop_in_step_3)
    job = trainer.Trainer(run, TINY, mesh_of((1, 1, 1), n=1))
    state, _ = job.initial_state()
    result = job.fit(state, Batches(), data_position(0), None, EVAL_BATCHES)
    assert result.step == 3 and result.preempted == evaluate_at_end
    saved = checkpointing.Checkpointer(tmp_path / "run", checkpointing.CheckpointConfig())
    assert saved.all_steps() == [3]
    if evaluate_at_end:
        path = tmp_path / "run" / "eval_loss.jsonl"
        assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [0, 2]


def eval_batch(seed: int, rows: int = 8) -> dict[str, np.ndarray]:
    """Random one-example rows with loss weights on their second half, the last row
    empty (all zeros) as in the padded last batch of `input_pipeline.EvalBatches`."""
    rs = np.random.RandomState(seed)
    tokens = rs.randint(0, TINY.vocab_size, (2, rows, 16)).astype(np.int32)
    weights = np.zeros((rows, 16), np.float32)
    weights[:, 8 + seed % 4 :] = 1.0
    batch = {
        ts.INPUTS: tokens[0],
        ts.TARGETS: tokens[1],
        ts.WEIGHTS: weights,
        ts.SEGMENT_IDS: np.ones((rows, 16), np.int32),
        ts.POSITIONS: np.tile(np.arange(16, dtype=np.int32), (rows, 1)),
    }
    for value in batch.values():
        value[-1] = 0
    return batch


EVAL_BATCHES = [("task_a", eval_batch(0)), ("task_b", eval_batch(1)), ("task_a", eval_batch(2))]


def reference_eval_loss(params) -> dict[str, dict[str, float]]:
    """Per-token float64 cross-entropy from the model's logits, summed per task."""
    model = decoder.Decoder(TINY)
    sums = {}
    for task, batch in EVAL_BATCHES + [("all", b) for _, b in EVAL_BATCHES]:
        logits = model.apply(
            {"params": params}, batch[ts.INPUTS], batch[ts.POSITIONS], batch[ts.SEGMENT_IDS]
        )
        logits = np.asarray(logits, np.float64)
        logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        nll = logz - np.take_along_axis(logits, batch[ts.TARGETS][..., None], -1)[..., 0]
        correct = logits.argmax(-1) == batch[ts.TARGETS]
        w = batch[ts.WEIGHTS]
        loss, right, weight = sums.get(task, (0.0, 0.0, 0.0))
        sums[task] = (loss + (nll * w).sum(), right + (correct * w).sum(), weight + w.sum())
    return {
        task: {"loss": loss / weight, "accuracy": right / weight, "answer_tokens": weight}
        for task, (loss, right, weight) in sums.items()
    }


@pytest.mark.parametrize("mesh_shape, microbatches", [((1, 1, 1), 1), ((2, 2, 2), 2)])
def test_eval_loss_per_task_and_over_all_answer_tokens(tmp_path, mesh_shape, microbatches):
    run = dataclasses.replace(tiny_run(tmp_path), step=ts.StepConfig(num_microbatches=microbatches))
    mesh = mesh_of(mesh_shape, n=int(np.prod(mesh_shape)))
    job = trainer.Trainer(run, TINY, mesh)
    state, _ = job.initial_state()
    sharding = P.data_sharding(mesh)
    batches = [(t, jax.device_put(b, sharding)) for t, b in EVAL_BATCHES]
    got = job.eval_loss(state.params, batches)
    want = reference_eval_loss(jax.device_get(state.params))
    assert list(got) == ["task_a", "task_b", "all"]
    for task in want:
        assert got[task]["answer_tokens"] == want[task]["answer_tokens"]
        assert got[task]["accuracy"] == want[task]["accuracy"]
        np.testing.assert_allclose(got[task]["loss"], want[task]["loss"], rtol=1e-5)
    assert want["all"]["answer_tokens"] == 7 * (8 + 7 + 6)  # 7 rows with weights per batch


def test_eval_loss_at_the_start_every_n_steps_and_the_end(tmp_path, capsys):
    run = tiny_run(tmp_path, train_steps=5, eval_loss_every_steps=2)
    job = trainer.Trainer(run, TINY, mesh_of((1, 1, 1), n=1))
    state, _ = job.initial_state()
    job.fit(state, Batches(), checkpointing.DataPosition(0, "m", 0, 8, 1), None, EVAL_BATCHES)
    path = tmp_path / "run" / "eval_loss.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4, 5]
    params = checkpointing.restore_params(
        tmp_path / "run" / "checkpoints" / "5", decoder.abstract_params(TINY)
    )
    want = reference_eval_loss(params)
    np.testing.assert_allclose(rows[-1]["all"]["loss"], want["all"]["loss"], rtol=1e-5)
    assert set(rows[-1]) == {"step", "task_a", "task_b", "all"}
    every = rows[-1]["all"]
    assert capsys.readouterr().out.endswith(
        f"eval_loss step 5: loss {every['loss']:.4f}  accuracy {100 * every['accuracy']:.2f}%  "
        f"(2 tasks, {every['answer_tokens']:.0f} answer tokens)\n"
    )
    # A rerun of the finished run evaluates nothing again.
    state, _ = job.initial_state()
    job.fit(state, Batches(), checkpointing.DataPosition(5, "m", 0, 8, 1), None, EVAL_BATCHES)
    assert path.read_text().splitlines() == [json.dumps(r) for r in rows]


def test_eval_loss_needs_batches(tmp_path):
    job = trainer.Trainer(tiny_run(tmp_path), TINY, mesh_of((1, 1, 1), n=1))
    state, _ = job.initial_state()
    with pytest.raises(ValueError, match="eval_batches yielded no batch"):
        job.eval_loss(state.params, iter([]))


def test_init_from_hf_folder_and_from_converted_checkpoint(tmp_path):
    rs = np.random.RandomState(0)
    host = jax.tree.map(
        lambda a: rs.normal(size=a.shape).astype(np.float32), decoder.abstract_params(TINY)
    )
    hf_io.save_hf(TINY, host, tmp_path / "hf")
    convert.hf_to_orbax(tmp_path / "hf", tmp_path / "orbax")
    for init in (
        {"init_from_hf": str(tmp_path / "hf")},
        {"init_from_checkpoint": str(tmp_path / "orbax")},
    ):
        run = tiny_run(tmp_path / next(iter(init)), mesh_shape=(1, 2, 4), **init)
        bf16 = dataclasses.replace(model_config.get_preset("tiny-bloom"), dtype="bfloat16")
        run = dataclasses.replace(run, model=run_config.ModelSpec(config=bf16))
        cfg = run_config.build_model_config(run)
        # Architecture from the source, float32 master weights, bfloat16 compute.
        assert (cfg.hidden, cfg.vocab_size, cfg.param_dtype, cfg.dtype) == (
            32,
            128,
            "float32",
            "bfloat16",
        )
        job = trainer.Trainer(run, cfg, mesh_of((1, 2, 4)))
        state, position = job.initial_state()
        assert position is None and int(state.step) == 0
        for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(host), strict=True):
            np.testing.assert_array_equal(np.asarray(got), want)
        kernel = state.params["layers"]["mlp"]["up_kernel"]
        assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
        job.checkpointer.close()


def test_library_needs_no_tensorflow_seqio_or_gin():
    """The GPU box has no TensorFlow, SeqIO or gin: the trainer library must not need them."""
    code = """
import sys
import time
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "seqio", "gin"):
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
import ecomgpt_jax.checkpointing, ecomgpt_jax.run_config
import ecomgpt_jax.train_step, ecomgpt_jax.trainer
import ecomgpt_jax.convert, ecomgpt_jax.decoding, ecomgpt_jax.multihost, ecomgpt_jax.preemption
import ecomgpt_jax.hf_hub
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
