"""What the benchmark tests share (a helper module, not a test module: pytest collects only
`test_*.py`): one-line error checks and the --compare_hf mesh message. Their fixtures
(`one_device`, `results`) are in conftest.py."""

import pytest


def exit_status(capsys, main, argv) -> tuple[int, str]:
    """(exit status, last stderr line) of a benchmark main() that must stop."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code, capsys.readouterr().err.strip().splitlines()[-1]


# transformers' throughput is one device's: a ratio against a mesh's would credit ours
# with the device count.
COMPARE_HF_MESH = (
    "error: --compare_hf needs a 1-device mesh (transformers runs on one device), got mesh "
    "[8, 1, 1] of 8 devices; expose one device (e.g. CUDA_VISIBLE_DEVICES=0)"
)


def assert_one_line_error(capsys, main, argv, message):
    """`main` on tiny-bloom with `argv` exits 2 with `message` as its last stderr line (a
    message ending "known: " is a prefix: the list of presets follows)."""
    status, last = exit_status(capsys, main, ["--preset", "tiny-bloom", *argv])
    assert status == 2
    assert last.startswith(message) if message.endswith("known: ") else last == message
