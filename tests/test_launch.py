"""Tests for the entry points' shared flags, gin parsing and argument rewriting."""

import gin
import pytest

from ecomgpt_jax import launch


class _UserError(Exception):
    pass


def test_rewrite_gin_args_t5x_form():
    argv = ["prog", "--gin_file=a.gin", "--gin.MODEL_DIR='/tmp/x'", "--gin.MESH_SHAPE=(1, 2, 4)"]
    assert launch.rewrite_gin_args(argv) == [
        "prog",
        "--gin_file=a.gin",
        "--gin_bindings=MODEL_DIR = '/tmp/x'",
        "--gin_bindings=MESH_SHAPE = (1, 2, 4)",
    ]


def test_define_flags_twice_is_harmless():
    launch.define_flags()
    launch.define_flags()
    assert "gin_file" in launch.FLAGS and "coordinator_address" in launch.FLAGS


def test_parse_gin_errors_are_one_line(tmp_path):
    with pytest.raises(_UserError, match=r"^pass at least one --gin_file \(e\.g\. x\.gin\)$"):
        launch.parse_gin([], [], [], _UserError, "x.gin")
    with pytest.raises(_UserError, match="^gin config: ") as info:
        launch.parse_gin([str(tmp_path / "missing.gin")], [], [], _UserError, "x.gin")
    assert "\n" not in str(info.value)
    bad = tmp_path / "bad.gin"
    bad.write_text("X = (\n")
    with pytest.raises(_UserError, match="^gin config: "):
        launch.parse_gin([str(bad)], [], [], _UserError, "x.gin")


def test_parse_gin_finalize_reports_required_macros(tmp_path):
    @gin.configurable("launch_test_fn")
    def fn(value=gin.REQUIRED):
        return value

    path = tmp_path / "req.gin"
    path.write_text("launch_test_fn.value = %VALUE\nVALUE = %gin.REQUIRED\n")
    try:
        with pytest.raises(_UserError, match="gin config: .*REQUIRED"):
            launch.parse_gin([str(path)], [], [], _UserError, "x.gin", finalize=True)
        launch.parse_gin([str(path)], ["VALUE = 3"], [], _UserError, "x.gin", finalize=True)
        assert fn() == 3
    finally:
        gin.clear_config()
