"""What the multi-process tests of the entry points share (a helper module, not a test
module: pytest collects only `test_*.py`): a free port for jax.distributed's coordinator
and the check that each process stopped with one error line."""

import socket


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
