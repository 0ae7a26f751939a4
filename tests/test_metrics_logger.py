"""The run's logs: rows, resume cut-back, unreadable lines, atomic writes, step time."""

import json
import struct
import time
import types

import numpy as np
import pytest

from ecomgpt_jax import metrics_logger
from ecomgpt_jax import train_step as ts
from ecomgpt_jax.metrics_logger import MetricsLogger


def test_metrics_logger_writes_rows_and_drops_rows_after_a_resumed_step(tmp_path):
    schedule = ts.learning_rate_schedule(ts.OptimizerConfig(learning_rate=1.0), 10)
    logger = MetricsLogger(tmp_path, total_steps=10, start_step=0, schedule=schedule)
    for step in range(1, 5):
        metrics = {
            "loss": np.float32(step),
            "grad_norm": np.float32(0.5),
            "accuracy": np.float32(0.25),
            "tokens": np.float32(100),
        }
        logger.record(step, metrics, force=step % 2 == 0)
    logger.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    assert rows[1]["loss"] == 4.0 and rows[1]["grad_norm"] == 0.5
    np.testing.assert_allclose(rows[1]["learning_rate"], float(schedule(3)))
    assert rows[1]["tokens_per_second"] > 0 and rows[1]["seconds_per_step"] > 0
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    # Resuming from a checkpoint at step 3 forgets the row of step 4.
    resumed = MetricsLogger(tmp_path, total_steps=10, start_step=3, schedule=schedule)
    resumed.record(4, metrics, force=True)
    resumed.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]


def test_a_resume_with_another_schedule_is_warned_about(tmp_path, capsys):
    """The checkpoint holds the optimizer's step, not the schedule: a resume with another
    TRAIN_STEPS (here 10 -> 6, so the decay is further along at step 4) is said."""
    schedule = ts.learning_rate_schedule(ts.OptimizerConfig(learning_rate=1.0), 10)
    logger = MetricsLogger(tmp_path, total_steps=10, start_step=0, schedule=schedule)
    metrics = {k: np.float32(1) for k in ("loss", "grad_norm", "accuracy", "tokens")}
    for step in range(1, 5):
        logger.record(step, metrics, force=True)
    logger.close()
    capsys.readouterr()
    MetricsLogger(tmp_path, total_steps=10, start_step=4, schedule=schedule).close()
    assert "schedule changed" not in capsys.readouterr().err  # the same schedule
    shorter = ts.learning_rate_schedule(ts.OptimizerConfig(learning_rate=1.0), 6)
    MetricsLogger(tmp_path, total_steps=6, start_step=4, schedule=shorter).close()
    assert capsys.readouterr().err == (
        f"warning: the learning-rate schedule changed: step 4 was logged with "
        f"{float(schedule(3)):.3e}, the schedule now gives {float(shorter(3)):.3e} there "
        "(TRAIN_STEPS, LEARNING_RATE, WARMUP_STEPS or OptimizerConfig changed); training "
        "goes on with the new one\n"
    )
    assert float(schedule(3)) != float(shorter(3))


def test_metrics_logger_skips_unreadable_lines_and_writes_atomically(tmp_path, capsys):
    """A metrics.jsonl cut short by a kill (or edited by hand) does not block a resume."""
    schedule = ts.learning_rate_schedule(ts.OptimizerConfig(learning_rate=1.0), 10)
    rows = [json.dumps({"step": s, "loss": float(s)}) for s in (1, 2, 3)]
    path = tmp_path / "metrics.jsonl"
    path.write_text(f'{rows[0]}\n{{"step": 2, "lo\n{rows[1]}\n[]\n{rows[2]}\n{rows[2][:9]}')
    logger = MetricsLogger(tmp_path, total_steps=10, start_step=2, schedule=schedule)
    assert capsys.readouterr().err == (f"warning: {path}:2: skipped 3 unreadable lines (2, 4, 6)\n")
    metrics = {"loss": 5.0, "grad_norm": 0.5, "accuracy": 0.25, "tokens": 100.0}
    logger.record(3, metrics, force=True)
    logger.close()
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "tensorboard"]
    capsys.readouterr()
    path.write_text(f"{rows[0]}\n{rows[1][:5]}")
    MetricsLogger(tmp_path, total_steps=10, start_step=2, schedule=schedule).close()
    assert capsys.readouterr().err == f"warning: {path}:2: skipped an unreadable line\n"


def test_evaluation_time_is_left_out_of_the_step_time(tmp_path, monkeypatch):
    clock = iter([100.0, 110.0])  # the logger starts at 100; step 2 is written at 110
    fake = types.SimpleNamespace(
        time=lambda: next(clock), strftime=time.strftime, gmtime=time.gmtime
    )
    monkeypatch.setattr(metrics_logger, "time", fake)
    schedule = ts.learning_rate_schedule(ts.OptimizerConfig(), 10)
    logger = MetricsLogger(tmp_path, total_steps=10, start_step=0, schedule=schedule)
    metrics = {"loss": 1.0, "grad_norm": 0.5, "accuracy": 0.25, "tokens": 100.0}
    logger.record(1, metrics)
    logger.exclude(6.0)  # an evaluation after step 1 took 6 s
    logger.record(2, metrics, force=True)
    logger.close()
    [row] = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert row["seconds_per_step"] == 2.0 and row["tokens_per_second"] == 50.0


def test_the_console_eta_counts_hours_past_a_day(tmp_path, monkeypatch, capsys):
    clock = iter([100.0, 101.0, 103.0])  # start; step 1 (compiles: no ETA); step 2: 2 s/step
    monkeypatch.setattr(metrics_logger, "time", types.SimpleNamespace(time=lambda: next(clock)))
    schedule = ts.learning_rate_schedule(ts.OptimizerConfig(), 100_000)
    logger = MetricsLogger(tmp_path, total_steps=100_000, start_step=0, schedule=schedule)
    metrics = {"loss": 1.0, "grad_norm": 0.5, "accuracy": 0.25, "tokens": 100.0}
    logger.record(1, metrics, force=True)
    logger.record(2, metrics, force=True)
    logger.close()
    etas = [line.rsplit("ETA ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert etas == ["-", "55:33:16"]  # 99,998 steps x 2 s; the clock format said 07:33:16
    assert metrics_logger.duration_text(59.6) == "00:01:00"


def eval_steps(path) -> list[int]:
    return [json.loads(x)["step"] for x in path.read_text().splitlines()]


def test_evaluation_logs_are_cut_back_on_resume_and_answer_logged(tmp_path, capsys):
    schedule = ts.learning_rate_schedule(ts.OptimizerConfig(), 10)
    logger = MetricsLogger(tmp_path, total_steps=10, start_step=0, schedule=schedule)
    for step in (0, 4, 8):
        logger.record_eval("eval_loss", step, {"all": {"loss": 1.5}}, "loss 1.5")
    logger.close()
    path = tmp_path / "eval_loss.jsonl"
    assert eval_steps(path) == [0, 4, 8]
    assert capsys.readouterr().out == "".join(f"eval_loss step {s}: loss 1.5\n" for s in (0, 4, 8))
    # A resume at step 4 keeps the evaluation at 4 (made after that checkpoint was saved).
    resumed = MetricsLogger(tmp_path, total_steps=10, start_step=4, schedule=schedule)
    assert eval_steps(path) == [0, 4]
    assert resumed.logged("eval_loss", 4) and not resumed.logged("eval_loss", 8)
    assert not resumed.logged("infer_eval", 4)
    resumed.close()
    # A run starting at step 0 (its checkpoints deleted) keeps none of them.
    fresh = MetricsLogger(tmp_path, total_steps=10, start_step=0, schedule=schedule)
    assert eval_steps(path) == [] and not fresh.logged("eval_loss", 0)
    fresh.close()


def test_other_processes_read_and_write_no_log(tmp_path, capsys, monkeypatch):
    schedule = ts.learning_rate_schedule(ts.OptimizerConfig(), 10)
    (tmp_path / "eval_loss.jsonl").write_text('{"step": 0}\n{"step": 4}\n')
    monkeypatch.setattr(metrics_logger.jax, "process_index", lambda: 1)
    logger = MetricsLogger(tmp_path, total_steps=10, start_step=2, schedule=schedule)
    logger.record(3, {"loss": 1.0, "grad_norm": 0.5, "accuracy": 0.25, "tokens": 1.0}, True)
    logger.record_eval("eval_loss", 3, {"all": {"loss": 1.5}}, "loss 1.5")
    assert not logger.logged("eval_loss", 0)  # process 0 answers (broadcast with several)
    logger.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval_loss.jsonl"]
    assert eval_steps(tmp_path / "eval_loss.jsonl") == [0, 4] and capsys.readouterr().out == ""


def tensorboard_events(path) -> list[tuple]:
    """(step, what) of each event of a TensorBoard file: "start" for a SessionLog.START
    (TensorBoard hides the events of earlier files from its step on), (tag, value) for
    a scalar."""
    from tensorboardX.proto import event_pb2

    data, events, i = path.read_bytes(), [], 0
    while i < len(data):  # TFRecord: length (8 bytes), its CRC (4), the event, its CRC (4)
        (size,) = struct.unpack("<Q", data[i : i + 8])
        event = event_pb2.Event.FromString(data[i + 12 : i + 12 + size])
        i += 12 + size + 4
        if event.HasField("session_log"):
            assert event.session_log.status == event_pb2.SessionLog.START
            events.append((event.step, "start"))
        for value in event.summary.value:
            events.append((event.step, (value.tag, round(value.simple_value, 6))))
    return events


def test_tensorboard_hides_what_a_resume_computes_again(tmp_path):
    schedule = ts.learning_rate_schedule(ts.OptimizerConfig(learning_rate=1.0), 10)
    metrics = {"loss": 1.0, "grad_norm": 0.5, "accuracy": 0.25, "tokens": 100.0}
    logger = MetricsLogger(tmp_path, total_steps=10, start_step=0, schedule=schedule)
    for step in (1, 2, 3):
        logger.record(step, {**metrics, "loss": float(step)}, force=True)
    logger.record_eval("eval_loss", 3, {"all": {"loss": 1.5}}, "loss 1.5")
    logger.close()
    [first] = (tmp_path / "tensorboard").iterdir()
    # tensorboardX names files by the second: keep the first run's from being overwritten.
    first = first.rename(first.with_name("events.out.tfevents.0000000001.first"))
    resumed = MetricsLogger(tmp_path, total_steps=10, start_step=2, schedule=schedule)
    resumed.record(3, {**metrics, "loss": 30.0}, force=True)
    resumed.close()
    [second] = set((tmp_path / "tensorboard").iterdir()) - {first}
    losses = [(s, e) for s, e in tensorboard_events(first) if e == "start" or "loss" in e[0]]
    assert losses == [
        (0, "start"),  # a run at step 0 also hides what a run before it left
        (1, ("train/loss", 1.0)),
        (2, ("train/loss", 2.0)),
        (3, ("train/loss", 3.0)),
        (3, ("eval_loss/all/loss", 1.5)),
    ]
    # The resume from step 2 hides step 3 on of the first file: its loss and evaluation.
    losses = [(s, e) for s, e in tensorboard_events(second) if e == "start" or "loss" in e[0]]
    assert losses == [(3, "start"), (3, ("train/loss", 30.0))]


def test_missing_writer_package_for_gs(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec

    def without_gcs(name, *args):
        if name.startswith("google.cloud"):
            raise ModuleNotFoundError(name)  # what find_spec does without google.cloud
        return real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_gcs)
    assert metrics_logger.missing_writer_package("gs://bucket/run") == "google-cloud-storage"
    assert metrics_logger.missing_writer_package("/local/run") is None


def test_a_log_that_cannot_be_written_is_one_error_and_nothing_after_it(tmp_path, capsys):
    """A full disk or a folder in the way: LogWriteError names the file, the log keeps
    what it held, and the logger writes nothing more (the trainer stops the run)."""
    schedule = ts.learning_rate_schedule(ts.OptimizerConfig(), 10)
    metrics = {"loss": 1.0, "grad_norm": 0.5, "accuracy": 0.25, "tokens": 1.0}
    logger = MetricsLogger(tmp_path, total_steps=10, start_step=0, schedule=schedule)
    logger.record(1, metrics, force=True)
    (tmp_path / "metrics.jsonl.tmp").mkdir()  # where the next write goes
    with pytest.raises(metrics_logger.LogWriteError) as info:
        logger.record(2, metrics, force=True)
    assert str(info.value) == (
        f"cannot write {tmp_path / 'metrics.jsonl'}: [Errno 21] Is a directory: "
        f"'{tmp_path / 'metrics.jsonl.tmp'}'"
    )
    (tmp_path / "metrics.jsonl.tmp").rmdir()
    logger.record(3, metrics, force=True)
    logger.record_eval("eval_loss", 3, {"all": {"loss": 1.5}}, "loss 1.5")
    logger.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1]
    assert not (tmp_path / "eval_loss.jsonl").exists()
    assert "step 3" not in capsys.readouterr().out


def test_a_log_that_cannot_be_read_on_resume_is_one_error(tmp_path):
    (tmp_path / "eval_loss.jsonl").mkdir()
    schedule = ts.learning_rate_schedule(ts.OptimizerConfig(), 10)
    with pytest.raises(metrics_logger.LogWriteError) as info:
        MetricsLogger(tmp_path, total_steps=10, start_step=2, schedule=schedule)
    assert str(info.value).startswith(f"cannot read {tmp_path / 'eval_loss.jsonl'}: [Errno 21]")


def test_closing_quietly_leaves_the_error_on_its_way_out(tmp_path, monkeypatch):
    schedule = ts.learning_rate_schedule(ts.OptimizerConfig(), 10)

    def full_disk():
        raise OSError(28, "No space left on device")

    for quiet in (False, True):
        logger = MetricsLogger(tmp_path / str(quiet), 10, 0, schedule)
        monkeypatch.setattr(logger._writer, "close", full_disk)
        if quiet:
            logger.close(quiet=True)  # another error is on its way out: not this one
        else:
            with pytest.raises(metrics_logger.LogWriteError, match="No space left on device"):
                logger.close()
