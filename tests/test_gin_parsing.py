"""Tests for ecomgpt_jax/gin_parsing.py: one-line gin errors that say what and where."""

import os
import pathlib
import subprocess
import sys

import gin
import pytest

from ecomgpt_jax import eval as eval_main
from ecomgpt_jax import gin_parsing

REPO = pathlib.Path(__file__).resolve().parent.parent


class _UserError(Exception):
    pass


@gin.configurable("launch_test_fn")
def _launch_test_fn(value=gin.REQUIRED):
    return value


@pytest.fixture
def repo_cwd(monkeypatch):
    """The repository as working directory and gin's search path as a fresh process has
    it, so that messages (shown paths, the folders searched) are exact."""
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(gin.config, "_LOCATION_PREFIXES", [""])
    eval_main.register_configurables()  # EvalConfig, DecodeConfig, ... for eval.gin
    yield
    gin.clear_config()


def gin_error(files, bindings=(), finalize=False, search_paths=()) -> str:
    """The one-line message parse_gin raises."""
    with pytest.raises(_UserError) as info:
        gin_parsing.parse_gin(
            files, list(bindings), list(search_paths), _UserError, "x.gin", finalize=finalize
        )
    return str(info.value)


def test_parse_gin_errors_are_one_line(tmp_path):
    with pytest.raises(_UserError, match=r"^pass at least one --gin_file \(e\.g\. x\.gin\)$"):
        gin_parsing.parse_gin([], [], [], _UserError, "x.gin")
    with pytest.raises(_UserError, match="^gin config: ") as info:
        gin_parsing.parse_gin([str(tmp_path / "missing.gin")], [], [], _UserError, "x.gin")
    assert "\n" not in str(info.value)
    bad = tmp_path / "bad.gin"
    bad.write_text("X = (\n")
    assert gin_error([str(bad)]) == f"gin config: {bad}, line 1: '(' is never closed"


def test_parse_gin_finalize_reports_required_macros(tmp_path):
    path = tmp_path / "req.gin"
    path.write_text("launch_test_fn.value = %VALUE\nVALUE = %gin.REQUIRED\n")
    try:
        assert gin_error([str(path)], finalize=True) == (
            f"gin config: macro VALUE is REQUIRED (set to %gin.REQUIRED in {path}, line 2)"
        )
        gin_parsing.parse_gin([str(path)], ["VALUE = 3"], [], _UserError, "x.gin", finalize=True)
        assert _launch_test_fn() == 3
    finally:
        gin.clear_config()


def test_required_macros_point_to_the_header_that_explains_them(tmp_path):
    run = tmp_path / "run.gin"
    run.write_text(
        "# REQUIRED macros:\n#   VALUE   what the run needs\n#   OTHER   and this\n\n"
        "launch_test_fn.value = [%VALUE, {'k': (%OTHER,)}]\n"
        "VALUE = %gin.REQUIRED\nOTHER = %gin.REQUIRED\n"
    )
    try:
        assert gin_error([str(run)], finalize=True) == (
            f"gin config: macros OTHER, VALUE are REQUIRED (see the header of {run})"
        )
        assert gin_error([str(run)], ["VALUE = 1"], finalize=True) == (
            f"gin config: macro OTHER is REQUIRED (see the header of {run})"
        )
        gin_parsing.parse_gin([str(run)], ["VALUE = 1", "OTHER = 2"], [], _UserError, "x", True)
        assert _launch_test_fn() == [1, {"k": (2,)}]
    finally:
        gin.clear_config()


def test_command_line_macro_that_nothing_uses_is_an_error(repo_cwd, tmp_path):
    """gin binds `EVAL_MAX_EXAMPLE = 1` although no binding reads %EVAL_MAX_EXAMPLE: the
    run would silently use the default."""
    assert gin_error(["gin_configs/eval.gin"], ["EVAL_MAX_EXAMPLE = 1"]) == (
        "gin config: --gin.EVAL_MAX_EXAMPLE: macro EVAL_MAX_EXAMPLE is not used by any "
        "binding (did you mean EVAL_MAX_EXAMPLES?)"
    )
    assert gin_error(["gin_configs/eval.gin"], ["BATCH_SIZE = 8", "QWERTY = 1"]) == (
        "gin config: --gin.QWERTY: macro QWERTY is not used by any binding"
    )
    # The right name works.
    gin_parsing.parse_gin(["gin_configs/eval.gin"], ["EVAL_MAX_EXAMPLES = 1"], [], _UserError, "x")
    with gin.unlock_config():
        assert gin.get_configurable("evaluation.EvalConfig")().max_examples == 1


def test_file_macro_that_nothing_uses_is_an_error(repo_cwd, tmp_path):
    """The same typo in a gin file: named by its file and line."""
    typo = tmp_path / "typo.gin"
    typo.write_text("include 'gin_configs/eval.gin'\n\nEVAL_MAX_EXAMPLE = 3\n")
    assert gin_error([str(typo)]) == (
        f"gin config: {typo}, line 3: macro EVAL_MAX_EXAMPLE is not used by any binding "
        "(did you mean EVAL_MAX_EXAMPLES?)"
    )
    # Set in a file and again on the command line: the flag is named (it is the later).
    assert gin_error([str(typo)], ["EVAL_MAX_EXAMPLE = 4"]) == (
        "gin config: --gin.EVAL_MAX_EXAMPLE: macro EVAL_MAX_EXAMPLE is not used by any "
        "binding (did you mean EVAL_MAX_EXAMPLES?)"
    )


def test_reference_to_a_macro_nothing_sets(repo_cwd, tmp_path):
    bad = tmp_path / "bad.gin"
    bad.write_text("include 'gin_configs/eval.gin'\nEvalConfig.batch_size = %BATCH_SIZ\n")
    assert gin_error([str(bad)]) == (
        f"gin config: {bad}, line 2: macro BATCH_SIZ is not set but EvalConfig.batch_size "
        "uses it (did you mean BATCH_SIZE?)"
    )
    assert gin_error(["gin_configs/eval.gin"], ["EvalConfig.batch_size = %BATCH_SIZ"]) == (
        "gin config: --gin.EvalConfig.batch_size: macro BATCH_SIZ is not set but "
        "EvalConfig.batch_size uses it (did you mean BATCH_SIZE?)"
    )


@pytest.mark.parametrize("model", sorted(p.name for p in (REPO / "gin_configs/models").iterdir()))
def test_eval_gin_with_each_model_file_parses(repo_cwd, model):
    files = ["gin_configs/eval.gin", f"gin_configs/models/{model}"]
    gin_parsing.parse_gin(files, [], [], _UserError, "x")


def test_missing_gin_file_is_one_line(repo_cwd, tmp_path):
    searched = f"(searched: {REPO}, {REPO}/gin_configs)"
    assert gin_error(["gin_configs/evl.gin"]) == (
        f"gin config: gin_configs/evl.gin: file not found {searched}"
    )
    assert gin_error(["gin_configs/eval.gin", "gin_configs/models/tiny_blom.gin"]) == (
        f"gin config: gin_configs/models/tiny_blom.gin: file not found {searched}"
    )
    outer = tmp_path / "outer.gin"
    outer.write_text("# a run\ninclude 'models/tiny_blom.gin'\n")
    assert gin_error([str(outer)]) == (
        f"gin config: {outer}, line 2: include 'models/tiny_blom.gin': file not found {searched}"
    )
    outer.write_text(f"include '{outer}'\n")
    assert gin_error([str(outer)]) == (
        f"gin config: {outer}, line 1: include '{outer}': the include never ends "
        f"({outer} -> {outer})"
    )


def test_include_found_with_a_plain_folder_of_its_name_here(repo_cwd, tmp_path, monkeypatch):
    """A models/ folder in the working directory (importable as a namespace package)
    made gin's package lookup raise TypeError for `include 'models/tiny_bloom.gin'`."""
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # as `python -m` puts the working directory
    gin_parsing.parse_gin([str(REPO / "gin_configs/eval.gin")], [], [], _UserError, "x")
    assert gin.query_parameter("ModelConfig.hidden") == 96  # models/tiny_bloom.gin


def test_gin_errors_name_file_and_line(repo_cwd, tmp_path):
    inner = tmp_path / "inner.gin"
    inner.write_text("# settings\nEvalConfg.batch_size = 3\n")
    outer = tmp_path / "outer.gin"
    outer.write_text("include 'gin_configs/eval.gin'\ninclude 'inner.gin'\n")
    found = [str(tmp_path)]
    assert gin_error([str(outer)], search_paths=found) == (
        f"gin config: {inner}, line 2: No configurable matching 'EvalConfg' "
        "(did you mean EvalConfig?)"
    )
    inner.write_text("DecodeConfig.num_beam = 2\n")
    assert gin_error([str(outer)], search_paths=found) == (
        f"gin config: {inner}, line 1: Configurable 'DecodeConfig' doesn't have a parameter "
        "named 'num_beam' (did you mean num_beams?)"
    )
    inner.write_text("A = 1\nB = [1,\n     (2,\n")
    assert (
        gin_error([str(outer)], search_paths=found)
        == f"gin config: {inner}, line 3: '(' is never closed"
    )
    inner.write_text("A = 1\nB = some text\n")
    assert gin_error([str(outer)], search_paths=found) == (
        f"gin config: {inner}, line 2: Failed to parse token 'some' (strings need quotes)"
    )


def test_command_line_binding_errors_name_the_flag(repo_cwd):
    eval_gin = ["gin_configs/eval.gin"]
    assert gin_error(eval_gin, ["EVAL_DIR = /tmp/x"]) == (
        "gin config: --gin.EVAL_DIR: Unable to parse value (strings need quotes, e.g. "
        "--gin.EVAL_DIR=\"'/tmp/x'\")"
    )
    assert gin_error(eval_gin, ["MESH_SHAPE = (1, 2"]) == (
        "gin config: --gin.MESH_SHAPE: '(' is never closed"
    )
    assert gin_error(eval_gin, ["DecodeConfg.num_beams = 1"]) == (
        "gin config: --gin.DecodeConfg.num_beams: No configurable matching 'DecodeConfg' "
        "(did you mean DecodeConfig?)"
    )


@pytest.mark.parametrize(
    "binding, flag, got",
    [
        ("import os", "--gin_bindings='import os'", "import"),
        ("from os import path", "--gin_bindings='from os import path'", "import"),
        (
            "include 'models/tiny_bloom.gin'",
            "--gin_bindings=\"include 'models/tiny_bloom.gin'\"",
            "include",
        ),
        ("BATCH_SIZE = 3\nEVAL_MAX_EXAMPLES = 2", "--gin.BATCH_SIZE", "binding, binding"),
        ("BATCH_SIZE = 3\nimport os", "--gin.BATCH_SIZE", "binding, import"),
    ],
)
def test_a_command_line_binding_is_one_binding(repo_cwd, binding, flag, got):
    """An import on the command line would run a module's code while parsing; a second
    statement would be blamed on the first flag. Both belong in a gin file."""
    assert gin_error(["gin_configs/eval.gin"], [binding]) == (
        f"gin config: {flag}: a command-line binding must be exactly one `name = value` "
        f"(got: {got}); put imports and includes in a gin file"
    )


def test_train_cli_stops_at_a_mistyped_macro(tmp_path):
    """The reviewer's command: it trained all 200 steps with TRAIN_STEP ignored."""
    model_dir = tmp_path / "run"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ecomgpt_jax.train",
            "--gin_file=gin_configs/ecom.gin",
            "--gin.TRAIN_STEP=3",
            f"--gin.MODEL_DIR='{model_dir}'",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2  # bad input, as every entry point
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: gin config: --gin.TRAIN_STEP: macro TRAIN_STEP is not used by any binding "
        "(did you mean TRAIN_STEPS?)"
    )
    assert not model_dir.exists()


def test_retired_macros_are_errors_where_they_are_set(repo_cwd, tmp_path):
    """A private gin file of an earlier version setting MODEL_PRESET would otherwise be
    accepted, and train the model of the file it includes instead."""
    old = tmp_path / "old.gin"
    old.write_text("include 'gin_configs/eval.gin'\n\nMODEL_PRESET = 'bloomz-1b1'\n")
    assert gin_error([str(old)]) == (
        f"gin config: {old}, line 3: macro MODEL_PRESET is retired: each "
        "gin_configs/models/*.gin file now binds ModelConfig itself; include the model's "
        "file instead"
    )
    # Set in an included file, scoped, or only used (an old copy of eval.gin): the same.
    outer = tmp_path / "outer.gin"
    outer.write_text(f"include '{old}'\n")
    assert gin_error([str(outer)]).startswith(f"gin config: {old}, line 3: macro MODEL_PRESET")
    old.write_text("include 'gin_configs/eval.gin'\nfoo/MODEL_PRESET = 'x'\n")
    assert gin_error([str(old)]).startswith(f"gin config: {old}, line 2: macro MODEL_PRESET is")
    old.write_text("include 'gin_configs/eval.gin'\nModelSource.preset = %MODEL_PRESET\n")
    assert gin_error([str(old)]).startswith(f"gin config: {old}, line 2: macro MODEL_PRESET is")
    assert gin_error(["gin_configs/eval.gin"], ["MODEL_OVERRIDES = {'dtype': 'bfloat16'}"]) == (
        "gin config: --gin.MODEL_OVERRIDES: macro MODEL_OVERRIDES is retired: bind the fields "
        "after the model file instead, e.g. ModelConfig.dtype = 'bfloat16' "
        "(--gin.ModelConfig.dtype=\"'bfloat16'\"); with INIT_FROM_HF or INIT_FROM_CHECKPOINT "
        "only the run settings (dtypes, remat_policy, scan_layers, attention_impl) apply, and "
        "eval takes DTYPE and MODEL_OVERRIDES_EVAL"
    )


def test_unhashable_dict_keys_are_one_line(repo_cwd):
    assert gin_error(["gin_configs/eval.gin"], ["DTYPE = {[1]: 2}"]) == (
        "gin config: --gin.DTYPE: unhashable type: 'list'"
    )


def test_another_entry_points_configurable_is_named_where_it_is_bound(repo_cwd, tmp_path):
    """`foreign` is read from the files' text (scoped, with a module, as an `@` reference
    or a command-line binding): gin's registry may hold the other entry point's classes."""
    foreign = {"Other": "belongs elsewhere"}

    def error(text, bindings=()):
        path = tmp_path / "f.gin"
        path.write_text(text)
        with pytest.raises(_UserError) as info:
            gin_parsing.parse_gin(
                [str(path)], list(bindings), [], _UserError, "x.gin", foreign=foreign
            )
        return str(info.value)

    shown = str(tmp_path / "f.gin")
    assert error("X = 1\nscope/mod.Other.x = 1\n") == (
        f"gin config: {shown}, line 2: Other belongs elsewhere"
    )
    assert error("launch_test_fn.value = [@scope/Other()]\n") == (
        f"gin config: {shown}, line 1: Other belongs elsewhere"
    )
    assert error("launch_test_fn.value = 1\n", ["Other.x = 2"]) == (
        "gin config: --gin.Other.x: Other belongs elsewhere"
    )
    # A configurable of this entry point whose name ends like a foreign one is not one.
    assert error("NotOther.x = 1\n").endswith("No configurable matching 'NotOther'")


def test_search_paths_are_those_of_the_call(repo_cwd, tmp_path):
    """A folder given to an earlier call (--gin_search_paths) is not searched later."""
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "inc.gin").write_text("launch_test_fn.value = 1\n")
    main = tmp_path / "main.gin"
    main.write_text("include 'inc.gin'\n")
    gin_parsing.parse_gin([str(main)], [], [str(tmp_path / "inc")], _UserError, "x.gin")
    assert gin.query_parameter("launch_test_fn.value") == 1
    message = gin_error([str(main)])
    assert message.startswith(f"gin config: {main}, line 1: include 'inc.gin': ")
    assert str(tmp_path / "inc") not in message
