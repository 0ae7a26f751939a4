"""Where a step's device time goes: a JAX profiler trace summed by XLA operation.

    rows, ms_per_step = op_profile.trace_and_summarize(run_steps, steps, trace_dir, top=25)

`run_steps(steps)` must run and finish `steps` steps (block on the result). The trace
(an `.xplane.pb` that TensorBoard's profile plugin or xprof also opens) is written under
`trace_dir`; the summary reads it back with `jax.profiler.ProfileData`, so it needs no
TensorBoard. Every device event that names its XLA operation (`hlo_op`) is summed per
operation; each row holds

    op        the HLO instruction (e.g. `loop_add_fusion.3`, `custom-call.12` for a cuDNN
              attention call, `gemm_fusion_dot.4`)
    kernel    the longest-running kernel or thunk name seen for it (on a GPU the cuDNN or
              cuBLAS kernel, which says what a custom call is)
    ms        device milliseconds per step (per device: averaged over the devices that
              ran operations)
    share     of all summed operation time;  calls: events per step and device

Which events: on a GPU the kernels on the "Stream #..." lines (what limits a step that
never waits for the host); where a device plane has no stream lines (TPU), its
"XLA Ops" line; on CPU the thunks of the XLA:CPU runtime's threads, which may overlap,
so shares are a guide only. XLA:GPU runs most of a step as CUDA graphs ("command
buffers") whose kernels carry the graph's name, not their operation's: such a kernel is
keyed by its kernel name, and `without_command_buffers(XLA_FLAGS)` (what `--profile`
sets before the backend starts) gives every kernel its operation again, at a small cost
in launch overhead (on an H200, bloom-560m's step took 0.2126 s without and 0.207 s
with them, one run each).
"""

from __future__ import annotations

import collections
import pathlib

import jax

COMMAND_BUFFER_FLAG = "--xla_gpu_enable_command_buffer"
# Lines of a device plane that repeat or summarise the per-kernel events.
_SUMMARY_LINES = ("XLA Ops", "XLA Modules", "Steps")


def without_command_buffers(xla_flags: str) -> str:
    """XLA_FLAGS with XLA:GPU's CUDA graphs off (any earlier setting of the flag replaced)."""
    kept = [f for f in xla_flags.split() if f.split("=")[0] != COMMAND_BUFFER_FLAG]
    return " ".join([*kept, f"{COMMAND_BUFFER_FLAG}="])


def _op_lines(plane) -> list:
    lines = list(plane.lines)
    streams = [line for line in lines if line.name.startswith("Stream")]
    if streams:
        return streams
    ops = [line for line in lines if line.name == "XLA Ops"]
    return ops or [line for line in lines if line.name not in _SUMMARY_LINES]


def _planes(profile) -> list:
    """The planes holding the program's operations: the devices', else the host's."""
    planes = list(profile.planes)
    devices = [p for p in planes if p.name.startswith("/device:")]
    return devices or [p for p in planes if p.name == "/host:CPU"]


def summarize(xplane: pathlib.Path, steps: int, top: int = 25) -> tuple[list[dict], float]:
    """(rows of the `top` operations by device time (see the module docstring), summed
    operation milliseconds per step and device) of a trace file."""
    return summarize_profile(jax.profiler.ProfileData.from_file(str(xplane)), steps, top)


def summarize_profile(profile, steps: int, top: int = 25) -> tuple[list[dict], float]:
    """`summarize` of a `jax.profiler.ProfileData` (or anything shaped like one)."""
    total_ns = collections.Counter()
    calls = collections.Counter()
    kernels: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    busy = 0  # planes with operations: an idle device of the host does not dilute the rest
    for plane in _planes(profile):
        seen = False
        for line in _op_lines(plane):
            for event in line.events:
                op = dict(event.stats).get("hlo_op")
                if not op:
                    continue
                seen = True
                if op.startswith("command_buffer"):
                    # A CUDA graph of many operations: its kernels are the only names.
                    op = event.name
                total_ns[op] += event.duration_ns
                calls[op] += 1
                kernels[op][event.name] += event.duration_ns
        busy += seen
    per = steps * max(busy, 1)
    grand = sum(total_ns.values())
    rows = []
    for op, ns in total_ns.most_common(top):
        if ns <= 0:  # zero-length markers (e.g. XLA:CPU's thunk ends)
            break
        rows.append(
            {
                "op": op,
                "kernel": kernels[op].most_common(1)[0][0][:120],
                "ms": round(ns / per / 1e6, 3),
                "share": round(ns / max(grand, 1), 4),
                "calls": round(calls[op] / per, 2),
            }
        )
    return rows, round(grand / per / 1e6, 3)


def trace_and_summarize(run_steps, steps: int, trace_dir: str | pathlib.Path, top: int = 25):
    """(rows, summed ms per step and device) of `steps` steps run under the profiler."""
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
