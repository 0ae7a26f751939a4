"""benchmarks/op_profile.py: a traced program's device time by operation, the XLA flag
that turns CUDA graphs off, and `benchmarks.train_step --profile`."""

import os

import jax
import jax.numpy as jnp
import pytest

from benchmarks import op_profile
from benchmarks import train_step as bt


def _traced(tmp_path, steps=3):
    x = jnp.ones((256, 256))
    f = jax.jit(lambda x: jnp.tanh(x @ x) @ x)
    f(x).block_until_ready()

    def run_steps(n):
        for _ in range(n):
            out = f(x)
        out.block_until_ready()

    return op_profile.trace_and_summarize(run_steps, steps, tmp_path / "trace", top=50)


def test_profile_sums_device_time_by_operation(tmp_path):
    """A traced jitted program: its operations come back with their time and calls per
    step; the table is ordered by time and shares are of the summed time."""
    rows, total = _traced(tmp_path)
    assert list((tmp_path / "trace").rglob("*.xplane.pb"))
    assert rows and total > 0
    ms = [r["ms"] for r in rows]
    assert ms == sorted(ms, reverse=True) and sum(ms) <= total + 1e-3 * len(ms)  # rounding
    assert all(0 < r["share"] <= 1 and r["calls"] > 0 for r in rows)
    assert abs(sum(r["share"] for r in rows) - 1) < 0.01  # top=50 holds every operation
    # Events are per step: no operation of the one-program step runs more than a few
    # times a step (counting an event twice, or all steps as one, would show here).
    assert all(r["calls"] <= 4 for r in rows), rows
    table = op_profile.format_table(rows[:3]).splitlines()
    assert len(table) == 4 and rows[0]["op"] in table[1]


def test_profile_rows_are_per_step(tmp_path):
    """Three steps traced and divided by three give about one step's time: the summed
    time of a 3-step trace is not three times that of a 1-step trace."""
    _, one = _traced(tmp_path / "one", steps=1)
    _, three = _traced(tmp_path / "three", steps=3)
    assert 0.4 < three / one < 2


@pytest.mark.parametrize(
    "before, after",
    [
        ("", "--xla_gpu_enable_command_buffer="),
        ("--xla_a=1", "--xla_a=1 --xla_gpu_enable_command_buffer="),
        (  # a user's own setting is replaced, not left to win over ours
            "--xla_gpu_enable_command_buffer=FUSION --xla_b=2",
            "--xla_b=2 --xla_gpu_enable_command_buffer=",
        ),
    ],
)
def test_without_command_buffers_replaces_the_flag(before, after):
    assert op_profile.without_command_buffers(before) == after


def test_profile_flag_prints_the_table_and_turns_off_cuda_graphs(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    argv = ["--preset", "tiny-bloom", "--batch", "8", "--seq", "32", "--steps", "1"]
    record = bt.main([*argv, "--rounds", "1", "--no_record", "--profile", str(tmp_path)])
    # (In this process the backend started long ago: main sets the flag for a fresh one.)
    assert os.environ["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=8",
        "--xla_gpu_enable_command_buffer=",
    ]
    assert record["profile_ms_per_step"] > 0 and record["command_buffers"] == "off (--profile)"
    assert "step_time_s" in record and "profile_error" not in record
    out = capsys.readouterr().out
    assert "device ms per step" in out and "ms/step  share" in out


def test_a_failing_profile_keeps_the_timings(capsys, monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("the profiler wrote no .xplane.pb under /x")

    monkeypatch.setattr(op_profile, "trace_and_summarize", broken)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    argv = ["--preset", "tiny-bloom", "--batch", "8", "--seq", "32", "--steps", "1"]
    record = bt.main([*argv, "--rounds", "1", "--no_record", "--profile", str(tmp_path)])
    assert record["profile_error"] == "RuntimeError: the profiler wrote no .xplane.pb under /x"
    assert record["step_time_s"] > 0 and "profile_ms_per_step" not in record
    assert "ms/step  share" not in capsys.readouterr().out
