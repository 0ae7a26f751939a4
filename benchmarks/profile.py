"""Where a step's device time goes: a JAX profiler trace summed by XLA operation.

    rows, total_ms = profile.trace_and_summarize(run_steps, steps, trace_dir, top=25)

`run_steps(steps)` must run and finish `steps` steps (block on the result). The trace
(an `.xplane.pb` that TensorBoard's profile plugin or xprof also opens) is written under
`trace_dir`; the summary reads it back with `jax.profiler.ProfileData`, so it needs no
TensorBoard. Every device event that names its XLA operation (`hlo_op`: GPU kernels on
their stream lines, XLA:CPU thunks) is summed per operation; each row holds

    op        the HLO instruction (e.g. `loop_add_fusion.3`, `custom-call.12` for a cuDNN
              attention call, `gemm_fusion_dot.4`)
    kernel    the longest-running kernel or thunk name seen for it (on a GPU the cuDNN or
              cuBLAS kernel, which says what a custom call is)
    ms        device milliseconds per step;  share: of all summed op time
    calls     events per step

On a GPU the rows are the stream time of each operation (what limits a step that never
waits for the host); on CPU the thunk times of the XLA:CPU runtime, where parallel
thunks overlap, so shares are a guide only. XLA:GPU runs most of a step as CUDA graphs
("command buffers") whose kernels carry the graph's name, not their operation's; a
kernel inside one is therefore keyed by its kernel name, and `DISABLE_COMMAND_BUFFERS`
(appended to XLA_FLAGS before the backend starts, as `--profile` does) gives every
kernel its operation again, at a small cost in launch overhead.
"""

from __future__ import annotations

import collections
import pathlib

import jax

# XLA_FLAGS entry that turns off XLA:GPU's CUDA graphs (read when the backend starts).
DISABLE_COMMAND_BUFFERS = "--xla_gpu_enable_command_buffer="


def _device_planes(profile) -> list:
    """The planes holding the program's operations: GPU/TPU planes, else the host."""
    planes = list(profile.planes)
    devices = [p for p in planes if p.name.startswith("/device:")]
    return devices or [p for p in planes if p.name == "/host:CPU"]


def summarize(xplane: pathlib.Path, steps: int, top: int = 25) -> tuple[list[dict], float]:
    """(rows of the `top` operations by device time (see the module docstring), summed
    device milliseconds per step of all operations)."""
    profile = jax.profiler.ProfileData.from_file(str(xplane))
    total_ns = collections.Counter()
    calls = collections.Counter()
    kernels: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for plane in _device_planes(profile):
        for line in plane.lines:
            # "XLA Ops" / "XLA Modules" lines repeat the stream events as spans.
            if line.name in ("XLA Ops", "XLA Modules", "Steps"):
                continue
            for event in line.events:
                op = dict(event.stats).get("hlo_op")
                if not op:
                    continue
                if op.startswith("command_buffer"):
                    # A CUDA graph of many operations: its kernels are the only names.
                    op = event.name
                total_ns[op] += event.duration_ns
                calls[op] += 1
                kernels[op][event.name] += event.duration_ns
    grand = sum(total_ns.values())
    rows = []
    for op, ns in total_ns.most_common(top):
        if ns <= 0:  # zero-length markers (e.g. XLA:CPU's thunk ends)
            break
        rows.append(
            {
                "op": op,
                "kernel": kernels[op].most_common(1)[0][0][:120],
                "ms": round(ns / steps / 1e6, 3),
                "share": round(ns / max(grand, 1), 4),
                "calls": round(calls[op] / steps, 2),
            }
        )
    return rows, round(grand / steps / 1e6, 3)


def trace_and_summarize(run_steps, steps: int, trace_dir: str | pathlib.Path, top: int = 25):
    """(rows, total ms per step) of `steps` steps run under the profiler."""
    trace_dir = pathlib.Path(trace_dir)
    before = set(trace_dir.rglob("*.xplane.pb")) if trace_dir.exists() else set()
    with jax.profiler.trace(str(trace_dir)):
        run_steps(steps)
    new = sorted(set(trace_dir.rglob("*.xplane.pb")) - before, key=lambda p: p.stat().st_mtime)
    if not new:
        raise RuntimeError(f"the profiler wrote no .xplane.pb under {trace_dir}")
    return summarize(new[-1], steps, top)


def format_table(rows: list[dict]) -> str:
    """Rows as an aligned text table (printed after the JSON line)."""
    lines = [f"{'ms/step':>9} {'share':>6} {'calls':>6}  op  [kernel]"]
    for r in rows:
        lines.append(
            f"{r['ms']:9.3f} {r['share']:6.1%} {r['calls']:6g}  {r['op']}  [{r['kernel']}]"
        )
    return "\n".join(lines)
