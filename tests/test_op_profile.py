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
    """A 1-step and a 3-step trace give the same calls per step for every operation."""
    one, _ = _traced(tmp_path / "one", steps=1)
    three, _ = _traced(tmp_path / "three", steps=3)
    assert {r["op"]: r["calls"] for r in one} == {r["op"]: r["calls"] for r in three}


class _Fake:  # stands in for jax.profiler's planes, lines and events
    def __init__(self, name, **fields):
        self.name = name
        self.__dict__.update(fields)


def _event(op, ns, kernel="k"):
    return _Fake(kernel, duration_ns=ns, stats=[("hlo_op", op)] if op else [])


def _gpu(name, *lines):
    return _Fake(name, lines=[_Fake(n, events=e) for n, e in lines])


def test_summary_reads_stream_lines_and_averages_over_busy_devices():
    """GPU planes: kernels on "Stream" lines count, the "XLA Ops" spans that repeat them
    do not; events without an operation are left out; two busy devices average, an idle
    one does not dilute; a CUDA graph's kernels are keyed by kernel name."""
    dev0 = _gpu(
        "/device:GPU:0",
        ("Stream #1(Compute)", [_event("dot.1", 3e6, "gemm"), _event(None, 5e6)]),
        ("Stream #2(MemcpyD2D)", [_event("command_buffer_3", 1e6, "flash_fprop")]),
        ("XLA Ops", [_event("dot.1", 3e6)]),
    )
    dev1 = _gpu("/device:GPU:1", ("Stream #1(Compute)", [_event("dot.1", 5e6, "gemm")]))
    idle = _gpu("/device:GPU:2", ("Stream #1(Compute)", []))
    host = _gpu("/host:CPU", ("python", [_event("dot.1", 9e9)]))
    rows, total = op_profile.summarize_profile(_Fake("p", planes=[dev0, dev1, idle, host]), 2)
    assert rows == [
        {"op": "dot.1", "kernel": "gemm", "ms": 2.0, "share": 0.8889, "calls": 0.5},
        {"op": "flash_fprop", "kernel": "flash_fprop", "ms": 0.25, "share": 0.1111, "calls": 0.25},
    ]
    assert total == 2.25  # (3 + 5 + 1) ms over 2 steps and 2 busy devices


def test_summary_uses_the_xla_ops_line_where_a_device_has_no_streams():
    tpu = _gpu(
        "/device:TPU:0",
        ("XLA Ops", [_event("fusion.2", 4e6)]),
        ("XLA Modules", [_event("jit_step", 4e6)]),
    )
    rows, total = op_profile.summarize_profile(_Fake("p", planes=[tpu]), 1)
    assert [(r["op"], r["ms"]) for r in rows] == [("fusion.2", 4.0)] and total == 4.0


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
