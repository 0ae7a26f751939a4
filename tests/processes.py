"""What tests that start Python processes share (a helper module, not a test module:
pytest collects only `test_*.py`): a free port for jax.distributed's coordinator, the
check that each process stopped with one error line, and which modules an import loads."""

import json
import pathlib
import socket
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def assert_one_error_line_each(stderrs, lines) -> None:
    """Process i's stderr (stderrs[i]) ends with lines[i], its only `error:` line, and
    holds no trace."""
    for stderr, line in zip(stderrs, lines, strict=True):
        assert [x for x in stderr.splitlines() if x.startswith("error:")] == [line]
        assert stderr.strip().splitlines()[-1] == line and "Traceback" not in stderr


def loaded_by(statement: str, modules) -> list[str]:
    """Which of `modules` a fresh interpreter has loaded after running `statement` (e.g.
    "import ecomgpt_jax.train"), from the repository root; sorted."""
    wanted = json.dumps(sorted(modules))
    code = (
        f"import json, sys; {statement}; "
        f"print(json.dumps(sorted(set(json.loads({wanted!r})) & set(sys.modules))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return json.loads(out.stdout.strip().splitlines()[-1])
