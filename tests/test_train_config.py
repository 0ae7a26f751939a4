"""Tests for ecomgpt_jax/train.py's configuration, without a training run: gin files to
configs (the field and macro named on bad values), the paper's run files, task
registration (TFDS_DATA_DIR) and the data position kept on resume."""

import dataclasses
import pathlib
import shutil
import types

import gin
import jax
import numpy as np
import pytest

from ecomgpt_jax import partitioning as P
from ecomgpt_jax import train, trainer
from ecomgpt_jax.models import config as model_config

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_tfds_data_dir_points_the_tasks_at_prepared_copies(tmp_path, sample_tasks):
    """Copies prepared with `tfds_builder --tfds_data_dir` elsewhere than the data root's
    _tfds are read where TFDS_DATA_DIR says (and JSON without it)."""
    import seqio

    from ecomgpt_jax import vocabularies
    from ecomgpt_jax.ecominstruct import make_sample
    from tasks import ecom_instruct, tfds_builder

    root, prepared = tmp_path / "root", tmp_path / "fast_disk"
    shutil.copytree(make_sample.SAMPLE_DIR / "Multi_CPR", root / "Multi_CPR")
    tfds_builder.prepare(root, prepared)
    name = "ecom:ZH:Multi_CPR:Extract:product_select_2"
    vocabulary = vocabularies.make_vocabulary()
    sources = {}
    for extra in ([], [f"TFDS_DATA_DIR = '{prepared}'"]):
        gin.clear_config()
        try:
            run, data, _ = train.load_configs(
                [str(ROOT / "gin_configs" / "ecom.gin")],
                [f"DATA_DIR = '{root}'", f"MIXTURE_OR_TASK_NAME = '{name}'", *extra],
            )
        finally:
            gin.clear_config()
        train.register_tasks(run, data, vocabulary)
        sources[bool(extra)] = type(sample_tasks.get(name).source)
    assert sources == {False: ecom_instruct.JsonInstructionSource, True: seqio.TfdsDataSource}


@pytest.mark.parametrize(
    "binding, message",
    [
        ("TRAIN_STEPS = None", "TRAIN_STEPS must be an integer >= 1, got None"),
        ("SEED = None", "SEED must be an integer, got None"),
        (
            "MESH_SHAPE = (1, 1)",
            "MESH_SHAPE must be 3 integers (data, fsdp, tensor), one of them may be -1, got (1, 1)",
        ),
        (
            "LEARNING_RATE = '2e-5'",
            "gin config: OptimizerConfig.learning_rate='2e-5' (LEARNING_RATE): must be a "
            "number > 0",
        ),
        (
            "OptimizerConfig.decay = 'Cosine'",
            "gin config: OptimizerConfig.decay='Cosine': must be one of ('cosine', 'linear', "
            "'constant')",
        ),
        (
            "NUM_MICROBATCHES = 0",
            "gin config: StepConfig.num_microbatches=0 (NUM_MICROBATCHES): must be an integer >= 1",
        ),
        (
            "SAVE_EVERY_STEPS = 100.0",
            "gin config: CheckpointConfig.save_every_steps=100.0 (SAVE_EVERY_STEPS): must be an "
            "integer >= 1",
        ),
        (
            "CheckpointConfig.keep = 'all'",
            "gin config: CheckpointConfig.keep='all': must be an integer >= 1",
        ),
    ],
)
def test_run_settings_name_the_field_and_macro(binding, message):
    """What train.main prints (the first line of the UserError), for the settings the
    configs check themselves."""
    gin.clear_config()
    try:
        with pytest.raises(trainer.UserError) as info:
            train.load_configs([str(ROOT / "gin_configs" / "ecom.gin")], [binding])
    finally:
        gin.clear_config()
    assert str(info.value).splitlines()[0] == message


@pytest.mark.parametrize(
    "name, devices, mesh",
    [
        ("bloomz_7b1_tpu_v4", 16, (1, 16, 1)),
        ("bloomz_7b1_8xh100", 8, (1, 8, 1)),
        # Two hosts of 8 GPUs: FSDP within each host, data parallel across them.
        ("bloomz_7b1_8xh100", 16, (2, 8, 1)),
    ],
)
def test_paper_run_gins_resolve(name, devices, mesh):
    gin_file = str(ROOT / "gin_configs" / "runs" / f"{name}.gin")
    required = ["INIT_FROM_HF = '/hf'", "MODEL_DIR = '/run'", "TRAIN_STEPS = 1000"]
    gin.clear_config()
    try:
        with pytest.raises(trainer.UserError, match="gin config: .*(Required|REQUIRED)"):
            train.load_configs([gin_file], required[1:])  # INIT_FROM_HF left unset
        gin.clear_config()
        run, data, _ = train.load_configs([gin_file], required)
    finally:
        gin.clear_config()
    assert run.optimizer.learning_rate == 2e-5 and data.global_batch_size == 64
    assert data.mixture_or_task_name == "ecom_instruct_held_in" and data.sequence_length == 1024
    assert run.model.vocabulary == "huggingface"
    assert run.train.init_from_hf == "/hf" and run.train.train_steps == 1000
    shape = P.MeshConfig(run.train.mesh_shape).resolve(devices)
    assert shape == mesh
    cfg = run.model.config  # models/bloomz_7b1.gin, then the run file's two overrides
    assert cfg == dataclasses.replace(model_config.get_preset("bloomz-7b1"), dtype="bfloat16")
    assert cfg.remat_policy == "full"
    assert run.checkpoint.save_every_steps == 500 and run.checkpoint.keep == 3
    mesh = types.SimpleNamespace(
        shape=dict(zip(P.MESH_AXES, shape, strict=True)), devices=np.empty(shape)
    )
    # BLOOM's tokenizer has 250680 ids (the embedding 250880).
    trainer.check_shapes(cfg, trainer.Shapes(64, 1024, 250680), run.step, mesh)


def test_the_paper_recipe_alone_asks_for_a_mesh():
    """runs/bloomz_7b1_recipe.gin holds the settings both run files share; alone it is
    incomplete, and says which macro is missing."""
    gin_file = str(ROOT / "gin_configs" / "runs" / "bloomz_7b1_recipe.gin")
    required = ["INIT_FROM_HF = '/hf'", "MODEL_DIR = '/run'", "TRAIN_STEPS = 1000"]
    gin.clear_config()
    try:
        with pytest.raises(trainer.UserError) as info:
            train.load_configs([gin_file], required)
    finally:
        gin.clear_config()
    assert str(info.value) == (
        "gin config: macro MESH_SHAPE is REQUIRED (see the header of "
        "gin_configs/runs/bloomz_7b1_recipe.gin)"
    )


def test_a_resume_keeps_the_stored_data_shard_count():
    """The default shard count is one per process: a resume on another number of hosts
    would otherwise read another order."""
    from ecomgpt_jax import input_pipeline

    data = input_pipeline.DataConfig(task_feature_lengths={"inputs": 96, "targets": 32})
    fresh, position = train.data_position(data, None)
    assert fresh.num_shards is None and position.num_shards == jax.process_count() == 1
    assert (position.lengths, position.split, position.pack) == ((96, 32), "train", True)
    stored = dataclasses.replace(position, batches_consumed=7, num_shards=4)
    resumed, position = train.data_position(data, stored)
    assert resumed.num_shards == position.num_shards == 4 and position.changes_from(stored) == []
    # A shard count the config sets wins (and the change is reported by the caller).
    _, position = train.data_position(dataclasses.replace(data, num_shards=2), stored)
    assert position.changes_from(stored) == ["DataConfig.num_shards 4 -> 2"]
    # A new batch size the stored count does not divide: one shard per process again.
    _, position = train.data_position(dataclasses.replace(data, global_batch_size=6), stored)
    assert position.num_shards == 1
    assert position.changes_from(stored) == ["BATCH_SIZE 8 -> 6", "DataConfig.num_shards 4 -> 1"]


def test_a_model_file_alone_asks_for_the_recipe():
    gin.clear_config()
    try:
        with pytest.raises(trainer.UserError) as info:
            train.load_configs([str(ROOT / "gin_configs" / "models" / "tiny_bloom.gin")], [])
    finally:
        gin.clear_config()
    assert str(info.value) == (
        "gin config: ModelSpec.__init__() missing 1 required positional argument: 'config'; "
        "give the recipe first (--gin_file=gin_configs/ecom.gin or a gin_configs/runs/ file), "
        "model files after it"
    )


def test_model_dir_that_cannot_be_a_folder(tmp_path):
    (tmp_path / "file").write_text("")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    for model_dir, what in [
        (tmp_path / "file", "is a file"),
        (tmp_path / "file" / "run", f"is inside {tmp_path / 'file'}, a file"),
        (tmp_path / "dangling", "is a link to nothing"),
    ]:
        with pytest.raises(trainer.UserError) as info:
            train.check_model_dir(str(model_dir))
        assert str(info.value) == f"MODEL_DIR {model_dir} {what}: give a folder"
    train.check_model_dir(str(tmp_path / "new" / "run"))  # to be made: fine
    train.check_model_dir("gs://bucket/run")  # not checked here
