"""The run's configuration (ecomgpt_jax/run_config.py): the model config a run trains
(gin-bound, or the architecture of its initial weights or of MODEL_DIR), shape and
setting checks, each one line (the training loop: test_trainer.py)."""

import dataclasses
import shutil

import jax
import numpy as np
import pytest
from trainer_helpers import TINY, mesh_of, tiny_run

from ecomgpt_jax import checkpointing, convert, run_config, trainer
from ecomgpt_jax import partitioning as P
from ecomgpt_jax import train_step as ts
from ecomgpt_jax.models import config as model_config
from ecomgpt_jax.models import decoder, hf_io

TINY_BLOOM = model_config.get_preset("tiny-bloom")


def zero_hf_folder(path):
    """TINY with zero weights saved as a HF folder at `path`."""
    zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), decoder.abstract_params(TINY))
    hf_io.save_hf(TINY, zeros, path)


def test_model_config_from_scratch_is_the_gin_bound_one_as_it_is(tmp_path):
    bf16 = dataclasses.replace(model_config.get_preset("tiny-bloom"), dtype="bfloat16")
    run = dataclasses.replace(tiny_run(tmp_path), model=run_config.ModelSpec(config=bf16))
    assert run_config.build_model_config(run) == bf16


@pytest.mark.parametrize(
    "shapes, step, message",
    [
        (run_config.Shapes(16, 128, 100), ts.StepConfig(num_microbatches=4), "= 4 rows per micro"),
        (run_config.Shapes(12, 128, 100), ts.StepConfig(num_microbatches=8), "not divisible by"),
        (run_config.Shapes(16, 300, 100), ts.StepConfig(), "max_positions is 256"),
        (run_config.Shapes(16, 128, 200), ts.StepConfig(), "vocabulary has 200 ids"),
    ],
)
def test_check_shapes(shapes, step, message):
    with pytest.raises(run_config.UserError, match=message):
        run_config.check_shapes(TINY, shapes, step, mesh_of((8, 1, 1)))


def test_check_shapes_accepts_a_fitting_run():
    shapes = run_config.Shapes(16, 256, 128)
    run_config.check_shapes(TINY, shapes, ts.StepConfig(num_microbatches=2), mesh_of((2, 4, 1)))
    # A loss chunk that splits the 256-token rows into two.
    run_config.check_shapes(TINY, shapes, ts.StepConfig(loss_chunk_size=128), mesh_of((2, 4, 1)))


def test_a_mesh_that_does_not_divide_the_model_is_one_line_before_any_layout(tmp_path):
    """tiny-bloom's 6 heads over a tensor axis of 4: named before a fresh start's first jit
    (jax's IndivisibleError) or a resume's restore (which took it for a damaged step)."""
    with pytest.raises(run_config.UserError) as info:
        run_config.check_shapes(
            TINY_BLOOM, run_config.Shapes(8, 256, 2000), ts.StepConfig(), mesh_of((2, 1, 4))
        )
    assert str(info.value) == (
        "MESH_SHAPE (2, 1, 4) does not fit the model: ModelConfig.heads 6 is not divisible by "
        "the mesh's tensor axis (4); ModelConfig.kv_heads 6 is not divisible by the mesh's "
        "tensor axis (4)"
    )
    # fsdp splits the model dimension: a hidden of 32 fits 8 of them, one of 36 does not.
    run_config.check_mesh(TINY, mesh_of((1, 8, 1)))
    with pytest.raises(run_config.UserError) as info:
        run_config.check_mesh(TINY_BLOOM, mesh_of((1, 1, 8)))
    assert str(info.value) == (
        "MESH_SHAPE (1, 1, 8) does not fit the model: ModelConfig.heads 6 is not divisible by "
        "the mesh's tensor axis (8); ModelConfig.kv_heads 6 is not divisible by the mesh's "
        "tensor axis (8)"
    )
    wide = dataclasses.replace(TINY, vocab_size=102, hidden=36, head_dim=9, mlp_dim=144)
    with pytest.raises(run_config.UserError) as info:
        run_config.check_mesh(wide, mesh_of((1, 8, 1)))
    assert str(info.value) == (
        "MESH_SHAPE (1, 8, 1) does not fit the model: ModelConfig.hidden 36 is not divisible "
        "by the mesh's fsdp axis (8)"
    )
    with pytest.raises(run_config.UserError) as info:
        run_config.check_mesh(wide, mesh_of((2, 1, 4)))
    assert str(info.value) == (
        "MESH_SHAPE (2, 1, 4) does not fit the model: ModelConfig.vocab_size 102 is not "
        "divisible by the mesh's tensor axis (4)"
    )


def test_every_model_sized_logical_axis_is_checked_against_the_mesh():
    """A logical axis added to the rules table without a ModelConfig field here would
    escape check_mesh (the batch is check_shapes' own; length and qkv are never split)."""
    names = {name for name, _ in P.RULES}
    assert names - set(run_config._SIZED_BY) == {P.BATCH, P.LENGTH, P.QKV}
    assert set(run_config._SIZED_BY.values()) <= {f.name for f in dataclasses.fields(TINY)}


@pytest.mark.parametrize("chunk", [96, 256, 512])
def test_a_loss_chunk_that_does_not_split_the_rows_is_one_line(chunk):
    with pytest.raises(run_config.UserError) as info:
        run_config.check_shapes(
            TINY,
            run_config.Shapes(16, 256, 128),
            ts.StepConfig(loss_chunk_size=chunk),
            mesh_of((8, 1, 1)),
        )
    assert str(info.value) == (
        f"StepConfig.loss_chunk_size {chunk} does not split the 256 tokens per row "
        "(TASK_FEATURE_LENGTHS inputs + targets) into equal chunks: use a divisor of 256 "
        "smaller than it, or 0 (no chunks: the logits of whole rows)"
    )


@pytest.mark.parametrize("source", ["init_from_hf", "init_from_checkpoint"])
def test_init_takes_run_settings_from_the_gin_config(tmp_path, source):
    """config.json / model_config.json give the architecture; dtypes, remat, scan and the
    attention kernel come from the gin-bound ModelConfig (bloomz_1b7.gin here)."""
    zero_hf_folder(tmp_path / "hf")
    # model_config.json then says param_dtype bfloat16: the gin config's float32 wins.
    stored = convert.hf_to_orbax(tmp_path / "hf", tmp_path / "orbax", dtype="bfloat16")
    assert stored.param_dtype == "bfloat16"
    path = tmp_path / ("hf" if source == "init_from_hf" else "orbax")
    gin_bound = dataclasses.replace(
        model_config.get_preset("bloomz-1b7"),
        dtype="bfloat16",
        scan_layers=False,
        attention_impl="cudnn",
    )
    run = tiny_run(tmp_path / "run", **{source: str(path)})
    run = dataclasses.replace(run, model=run_config.ModelSpec(config=gin_bound))
    cfg = run_config.build_model_config(run)
    assert cfg == dataclasses.replace(
        TINY,
        param_dtype="float32",
        dtype="bfloat16",
        remat_policy="dots_with_no_batch_dims_saveable",
        scan_layers=False,
        attention_impl="cudnn",
    )
    # What the gin config says about the architecture goes unused (train.py prints it).
    assert run_config.unused_bindings_note(run, cfg) == (
        f"note: {source.upper()} sets the architecture; these ModelConfig bindings are not "
        "used: vocab_size=250880 (weights: 128), hidden=2048 (weights: 32), layers=24 "
        "(weights: 2), heads=16 (weights: 4), kv_heads=16 (weights: 4), head_dim=128 "
        "(weights: 8), mlp_dim=8192 (weights: 128), max_positions=2048 (weights: 256), "
        "bos_id=1 (weights: None), eos_id=2 (weights: 1), pad_id=3 (weights: 0)"
    )


def test_a_resume_takes_the_architecture_from_model_dir_not_the_init_folder(tmp_path):
    zero_hf_folder(tmp_path / "hf")
    run = tiny_run(tmp_path, init_from_hf=str(tmp_path / "hf"))
    cfg = run_config.build_model_config(run)
    job = trainer.Trainer(run, cfg, mesh_of((2, 2, 2)))
    state, _ = job.initial_state()
    job.checkpointer.save(state.replace(step=jax.numpy.int32(3)), checkpointing.DataPosition(24))
    job.checkpointer.close()
    checkpointing.save_model_config(run.train.model_dir, cfg)  # as train.py does
    shutil.rmtree(tmp_path / "hf")  # the initial weights are gone: the run goes on
    assert run_config.build_model_config(run) == cfg
    assert run_config.unused_bindings_note(run, cfg) == (
        "note: MODEL_DIR/model_config.json sets the architecture; these ModelConfig bindings "
        "are not used: vocab_size=2048 (weights: 128), hidden=96 (weights: 32), heads=6 "
        "(weights: 4), kv_heads=6 (weights: 4), head_dim=16 (weights: 8), mlp_dim=384 "
        "(weights: 128), max_positions=512 (weights: 256)"
    )
    job = trainer.Trainer(run, cfg, mesh_of((2, 2, 2)))
    state, position = job.initial_state()
    job.checkpointer.close()
    assert int(state.step) == 3 and position.batches_consumed == 24
    assert all(not np.asarray(leaf).any() for leaf in jax.tree.leaves(state.params))
    # A fresh start still needs the folder, and says so.
    fresh = tiny_run(tmp_path / "fresh", init_from_hf=str(tmp_path / "hf"))
    with pytest.raises(hf_io.CheckpointFormatError) as info:
        run_config.build_model_config(fresh)
    hf = tmp_path / "hf"
    assert str(info.value) == f"{hf}/config.json: not found (is {hf} a HF model directory?)"


def test_a_resume_from_scratch_keeps_the_architecture_it_trained(tmp_path):
    """A run from random weights, resumed with another norm_eps or eos id bound (shapes
    alike, so the restore would take it): MODEL_DIR/model_config.json gives the
    architecture, gin the run settings, and the note says what was not used."""
    run = tiny_run(tmp_path)
    trained = run.model.config
    checkpointing.save_model_config(run.train.model_dir, trained)
    (tmp_path / "run" / "checkpoints" / "3").mkdir(parents=True)  # a finished local save
    changed = dataclasses.replace(trained, norm_eps=1e-6, eos_id=7, remat_policy="full")
    resumed = dataclasses.replace(run, model=run_config.ModelSpec(config=changed))
    assert run_config.architecture_source(resumed.train) == run_config.RESUMED_CONFIG
    cfg = run_config.build_model_config(resumed)
    assert cfg == dataclasses.replace(trained, remat_policy="full")  # a run setting
    assert run_config.unused_bindings_note(resumed, cfg) == (
        "note: MODEL_DIR/model_config.json sets the architecture; these ModelConfig bindings "
        "are not used: norm_eps=1e-06 (weights: 1e-05), eos_id=7 (weights: 1)"
    )


@pytest.mark.parametrize("source", ["init_from_hf", "init_from_checkpoint"])
def test_init_from_weights_of_another_family_than_the_gin_config(tmp_path, source):
    zero_hf_folder(tmp_path / "hf")
    convert.hf_to_orbax(tmp_path / "hf", tmp_path / "orbax")
    path = tmp_path / ("hf" if source == "init_from_hf" else "orbax")
    run = tiny_run(tmp_path / "run", **{source: str(path)})
    qwen = run_config.ModelSpec(config=model_config.get_preset("tiny-qwen2"))
    with pytest.raises(run_config.UserError) as info:
        run_config.build_model_config(dataclasses.replace(run, model=qwen))
    assert str(info.value) == (
        f"{source.upper()} holds a bloom model but ModelConfig is a qwen2 one: include a "
        "gin_configs/models/*.gin file of its family and size, which sets how it runs "
        "(dtypes, remat policy, layer scan, attention kernel); the weights give the "
        "architecture"
    )
    # The same family (tiny_bloom.gin) is fine; the note lists what the weights replace.
    assert run_config.unused_bindings_note(run, run_config.build_model_config(run)) == (
        f"note: {source.upper()} sets the architecture; these ModelConfig bindings are not "
        "used: vocab_size=2048 (weights: 128), hidden=96 (weights: 32), heads=6 (weights: "
        "4), kv_heads=6 (weights: 4), head_dim=16 (weights: 8), mlp_dim=384 (weights: 128), "
        "max_positions=512 (weights: 256)"
    )
    assert run_config.unused_bindings_note(tiny_run(tmp_path / "scratch"), TINY_BLOOM) is None


def test_a_vocabulary_path_must_be_a_path():
    with pytest.raises(run_config.UserError) as info:
        run_config.ModelSpec(TINY_BLOOM, "sentencepiece", 5)
    assert str(info.value) == "VOCABULARY_PATH must be a path or None, got 5"


def test_train_steps_must_be_at_least_one(tmp_path):
    for steps in (0, -3, None, 10.0):
        with pytest.raises(run_config.UserError) as info:
            tiny_run(tmp_path, train_steps=steps)
        assert str(info.value) == f"TRAIN_STEPS must be an integer >= 1, got {steps!r}"


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("seed", None, "SEED must be an integer, got None"),
        # Paths: None, a number or '' failed deep in os.path with a trace (MODEL_DIR=5
        # wrote to ./5/).
        ("model_dir", None, "MODEL_DIR must be a folder path, got None"),
        ("model_dir", 5, "MODEL_DIR must be a folder path, got 5"),
        ("data_dir", 3, "DATA_DIR must be a path or None, got 3"),
        ("tfds_data_dir", "", "TFDS_DATA_DIR must be a path or None, got ''"),
        ("init_from_hf", 5, "INIT_FROM_HF must be a path or None, got 5"),
        ("seed", 1.5, "SEED must be an integer, got 1.5"),
        ("log_every_steps", 0, "LOG_EVERY_STEPS must be an integer >= 1, got 0"),
        (
            "mesh_shape",
            (1, 1),
            "MESH_SHAPE must be 3 integers (data, fsdp, tensor), one of them may be -1, got (1, 1)",
        ),
        (
            "mesh_shape",
            (1, "8", 1),
            "MESH_SHAPE must be 3 integers (data, fsdp, tensor), one of them may be -1, got "
            "(1, '8', 1)",
        ),
        (
            "mesh_shape",
            8,
            "MESH_SHAPE must be 3 integers (data, fsdp, tensor), one of them may be -1, got 8",
        ),
    ],
)
def test_run_settings_are_checked(tmp_path, field, value, message):
    with pytest.raises(run_config.UserError) as info:
        tiny_run(tmp_path, **{field: value})
    assert str(info.value) == message
    # A list (gin's [1, -1, 1]) is a shape too.
    assert tiny_run(tmp_path, mesh_shape=[1, -1, 1]).train.mesh_shape == (1, -1, 1)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("eval_loss_batches", 0, "EVAL_LOSS_BATCHES must be an integer >= 1, got 0"),
        ("eval_loss_batches", 2.5, "EVAL_LOSS_BATCHES must be an integer >= 1, got 2.5"),
        ("eval_loss_every_steps", -1, "EVAL_LOSS_EVERY_STEPS must be an integer >= 0, got -1"),
        ("eval_loss_every_steps", None, "EVAL_LOSS_EVERY_STEPS must be an integer >= 0, got None"),
        (
            "infer_eval_every_steps",
            True,
            "INFER_EVAL_EVERY_STEPS must be an integer >= 0, got True",
        ),
    ],
)
def test_evaluation_settings_are_checked(tmp_path, field, value, message):
    with pytest.raises(run_config.UserError) as info:
        tiny_run(tmp_path, **{field: value})
    assert str(info.value) == message


def test_two_starting_points_are_refused(tmp_path):
    with pytest.raises(run_config.UserError) as info:
        tiny_run(tmp_path, init_from_hf="/hf", init_from_checkpoint="/orbax")
    assert str(info.value) == (
        "INIT_FROM_HF and INIT_FROM_CHECKPOINT are both set: give one (the other None)"
    )


def test_init_from_checkpoint_errors_name_the_macro(tmp_path):
    def error(path) -> str:
        with pytest.raises(run_config.UserError) as info:
            run_config.build_model_config(tiny_run(tmp_path, init_from_checkpoint=str(path)))
        return str(info.value)

    assert error(tmp_path / "nope") == (
        f"INIT_FROM_CHECKPOINT: checkpoint path {tmp_path / 'nope'} does not exist"
    )
    (tmp_path / "empty").mkdir()
    assert error(tmp_path / "empty") == (
        f"INIT_FROM_CHECKPOINT: {tmp_path / 'empty'}: no orbax checkpoint found (expected a "
        "run directory, a step directory with a 'params' item, or a params checkpoint "
        "written by `convert hf-to-orbax`)"
    )
    params = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), decoder.abstract_params(TINY))
    checkpointing.save_params(tmp_path / "bare" / "params", params)
    assert error(tmp_path / "bare") == (
        f"INIT_FROM_CHECKPOINT: {tmp_path / 'bare'} holds a checkpoint but no "
        "model_config.json at or above it (train.py and `convert hf-to-orbax` write one); "
        "copy the one it was made with next to it"
    )
