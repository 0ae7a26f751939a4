"""Tests for ecomgpt_jax/train.py's configuration, without a training run: gin files to
configs (the field and macro named on bad values, in one line before anything runs), the
paper's run files, task registration (TFDS_DATA_DIR) and the data position kept on resume."""

import dataclasses
import pathlib
import shutil
import types

import gin
import jax
import numpy as np
import pytest
from trainer_helpers import run_in_process

from ecomgpt_jax import partitioning as P
from ecomgpt_jax import run_config, train
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
    sources, lines = {}, {}
    settings = [[], [f"TFDS_DATA_DIR = '{prepared}'"], [f"TFDS_DATA_DIR = '{tmp_path}/typo'"]]
    settings.append([f"TFDS_DATA_DIR = '{prepared}/ecom_instruct'"])  # one level off
    for extra in settings:
        gin.clear_config()
        try:
            run, data, _ = train.load_configs(
                [str(ROOT / "gin_configs" / "ecom.gin")],
                [f"DATA_DIR = '{root}'", f"MIXTURE_OR_TASK_NAME = '{name}'", *extra],
            )
        finally:
            gin.clear_config()
        if extra and ("typo" in extra[0] or "/ecom_instruct" in extra[0]):
            # A TFDS_DATA_DIR that is not there, or holds no copies: every task would
            # have read its JSON. The command given prepares them there.
            with pytest.raises(train.run_config.UserError) as info:
                train.register_tasks(run, data, vocabulary)
            folder = extra[0].split("'")[1]
            problem = (
                "does not exist"
                if "typo" in folder
                else ("holds no prepared tasks (no ecom_instruct/ folder)")
            )
            assert str(info.value) == (
                f"TFDS_DATA_DIR {folder} {problem}: prepare the tasks there (python -m "
                f"tasks.tfds_builder --data_dir {root} --tfds_data_dir {folder}), or set "
                "TFDS_DATA_DIR = None"
            )
            continue
        train.register_tasks(run, data, vocabulary)
        sources[bool(extra)] = type(sample_tasks.get(name).source)
        lines[bool(extra)] = train.data_line(name)
    assert sources == {False: ecom_instruct.JsonInstructionSource, True: seqio.TfdsDataSource}
    assert lines == {
        False: f"data: {name} (1 task) from {root}",
        True: f"data: {name} (1 task) from {root}, 1 of them from prepared TFDS copies",
    }


def test_a_default_run_after_one_on_another_root_reads_the_default_root(
    tmp_path, sample_tasks, monkeypatch
):
    """In one process (a notebook): the second, default run used to keep the first run's
    registration, and so train on its DATA_DIR's tasks. The default root is the one of
    now (ECOMGPT_DATA_DIR set since, last)."""
    from ecomgpt_jax import vocabularies
    from ecomgpt_jax.ecominstruct import make_sample

    root = tmp_path / "root"
    shutil.copytree(make_sample.SAMPLE_DIR / "Multi_CPR", root / "Multi_CPR")
    name = "ecom:ZH:Multi_CPR:Extract:product_select_2"
    vocabulary = vocabularies.make_vocabulary()
    registered, lines = [], []
    for extra in ([f"DATA_DIR = '{root}'"], [], [], "env"):
        if extra == "env":
            monkeypatch.setenv("ECOMGPT_DATA_DIR", str(root))
            extra = []
        gin.clear_config()
        try:
            run, data, _ = train.load_configs(
                [str(ROOT / "gin_configs" / "ecom.gin")],
                [f"MIXTURE_OR_TASK_NAME = '{name}'", *extra],
            )
        finally:
            gin.clear_config()
        train.register_tasks(run, data, vocabulary)
        registered.append(sample_tasks.registration())
        lines.append(train.data_line(name))
    assert [r.data_dir for r in registered] == [root, *[make_sample.SAMPLE_DIR] * 2, root]
    assert registered[2] is registered[1]  # the default kept, not registered again
    # What the run prints: a run on the bundled sample says so.
    sample = (
        f"data: {name} (1 task) from {make_sample.SAMPLE_DIR} (the bundled synthetic sample; "
        "set DATA_DIR or ECOMGPT_DATA_DIR for real data)"
    )
    real = f"data: {name} (1 task) from {root}"
    assert lines == [real, sample, sample, real]
    sample_tasks.register_ecom_tasks(make_sample.SAMPLE_DIR)
    assert train.data_line("ecom_instruct_held_in").startswith(
        f"data: ecom_instruct_held_in (12 tasks) from {make_sample.SAMPLE_DIR} (the bundled"
    )


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
        with pytest.raises(run_config.UserError) as info:
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
        with pytest.raises(run_config.UserError, match="gin config: .*(Required|REQUIRED)"):
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
    run_config.check_shapes(cfg, run_config.Shapes(64, 1024, 250680), run.step, mesh)


def test_the_paper_recipe_alone_asks_for_a_mesh():
    """runs/bloomz_7b1_recipe.gin holds the settings both run files share; alone it is
    incomplete, and says which macro is missing."""
    gin_file = str(ROOT / "gin_configs" / "runs" / "bloomz_7b1_recipe.gin")
    required = ["INIT_FROM_HF = '/hf'", "MODEL_DIR = '/run'", "TRAIN_STEPS = 1000"]
    gin.clear_config()
    try:
        with pytest.raises(run_config.UserError) as info:
            train.load_configs([gin_file], required)
    finally:
        gin.clear_config()
    assert str(info.value) == (
        "gin config: macro MESH_SHAPE is REQUIRED (see the header of "
        "gin_configs/runs/bloomz_7b1_recipe.gin)"
    )


def test_a_resume_keeps_the_stored_data_shard_count(sample_tasks):
    """The default shard count is one per process: a resume on another number of hosts
    would otherwise read another order."""
    from ecomgpt_jax import input_pipeline

    data = input_pipeline.DataConfig(task_feature_lengths={"inputs": 96, "targets": 32})
    fresh, position = train.data_position(data, None)
    assert fresh.num_shards is None and position.num_shards == jax.process_count() == 1
    assert (position.lengths, position.split, position.pack) == ((96, 32), "train", True)
    assert position.sources == input_pipeline.sources_digest(data)
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
        with pytest.raises(run_config.UserError) as info:
            train.load_configs([str(ROOT / "gin_configs" / "models" / "tiny_bloom.gin")], [])
    finally:
        gin.clear_config()
    assert str(info.value) == (
        "gin config: ModelSpec.__init__() missing 1 required positional argument: 'config'; "
        "give the recipe first (--gin_file=gin_configs/ecom.gin or a gin_configs/runs/ file), "
        "model files after it"
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gin.TRAIN_STEPS=0"], "TRAIN_STEPS must be an integer >= 1, got 0"),
        (
            # tiny-bloom's 6 heads over 4 devices: before, a fresh start died in jax's
            # IndivisibleError (leaving an empty MODEL_DIR/checkpoints), a resume called
            # the checkpoint damaged.
            ["--gin.MESH_SHAPE=(2, 1, 4)"],
            "MESH_SHAPE (2, 1, 4) does not fit the model: ModelConfig.heads 6 is not divisible "
            "by the mesh's tensor axis (4); ModelConfig.kv_heads 6 is not divisible by the "
            "mesh's tensor axis (4)",
        ),
        (
            ["--gin.StepConfig.loss_chunk_size=100"],
            "StepConfig.loss_chunk_size 100 does not split the 256 tokens per row "
            "(TASK_FEATURE_LENGTHS inputs + targets) into equal chunks: use a divisor of 256 "
            "smaller than it, or 0 (no chunks: the logits of whole rows)",
        ),
        (["--gin.BATCH_SIZE=0"], "BATCH_SIZE must be an integer >= 1, got 0"),
        (["--gin.BATCH_SIZE=-4"], "BATCH_SIZE must be an integer >= 1, got -4"),
        (
            ["--gin.TASK_FEATURE_LENGTHS={'input': 192, 'targets': 64}"],
            "TASK_FEATURE_LENGTHS needs keys 'inputs' and 'targets' (positive ints), got "
            "{'input': 192, 'targets': 64}",
        ),
        (
            ["--gin.TASK_FEATURE_LENGTHS={'inputs': 0, 'targets': 64}"],
            "TASK_FEATURE_LENGTHS needs keys 'inputs' and 'targets' (positive ints), got "
            "{'inputs': 0, 'targets': 64}",
        ),
        (
            ["--gin.VOCABULARY='sentencepeice'"],
            "VOCABULARY: unknown vocabulary kind 'sentencepeice'; expected one of "
            "sentencepiece, spm, huggingface, hf, tokenizer.json",
        ),
        (
            ["--gin.VOCABULARY='huggingface'"],
            "VOCABULARY = 'huggingface' needs VOCABULARY_PATH (a tokenizer.json or its folder) "
            "or INIT_FROM_HF (whose tokenizer.json is used)",
        ),
        (
            ["--gin.INFER_EVAL_EVERY_STEPS=4", "--gin.INFER_EVAL_MIXTURE='ecom_instruct_heldout'"],
            f"INFER_EVAL_MIXTURE: {ROOT}/ecomgpt_jax/ecominstruct/sample: "
            "'ecom_instruct_heldout' is neither a task folder nor a known mixture "
            "(ecom_instruct_held_out, ecom_instruct_held_in, ecom_instruct_en, ecom_instruct_zh, "
            "ecom_instruct_cls, ecom_instruct_ner, ecom_instruct_extract, "
            "ecom_instruct_condition_extract, ecom_instruct_generate)",
        ),
        (
            ["--gin.EVAL_LOSS_EVERY_STEPS=4", "--gin.EVAL_LOSS_MIXTURE='ecom_instruct_heldout'"],
            "EVAL_LOSS_MIXTURE: unknown task or mixture 'ecom_instruct_heldout'; EcomInstruct "
            "mixtures: ecom_instruct_held_out, ecom_instruct_held_in, ecom_instruct_en, "
            "ecom_instruct_zh, ecom_instruct_cls, ecom_instruct_ner, ecom_instruct_extract, "
            "ecom_instruct_condition_extract, ecom_instruct_generate; tasks are named "
            f"ecom:<LANG>:<Dataset>:<TYPE>:<name> (data root {ROOT}/ecomgpt_jax/ecominstruct/"
            "sample)",
        ),
        (
            [
                "--gin.EVAL_LOSS_EVERY_STEPS=4",
                "--gin.EVAL_LOSS_MIXTURE='ecom:EN:ABSA:CLS:review_topic_category'",
                "--gin.eval_loss/DataConfig.split='validation'",
            ],
            "EVAL_LOSS_MIXTURE: mixture 'ecom:EN:ABSA:CLS:review_topic_category': "
            f"{ROOT}/ecomgpt_jax/ecominstruct/sample/ABSA/tasks/EN-ABSA-CLS-review_topic_"
            "category: task 'EN-ABSA-CLS-review_topic_category' has no 'validation' split "
            "(has: ['test'])",
        ),
        (["--gin.EVAL_LOSS_BATCHES=0"], "EVAL_LOSS_BATCHES must be an integer >= 1, got 0"),
        (
            ["--gin.EVAL_LOSS_EVERY_STEPS=-5"],
            "EVAL_LOSS_EVERY_STEPS must be an integer >= 0, got -5",
        ),
        (
            ["--gin.eval_loss/DataConfig.global_batch_size=0"],
            "eval_loss/DataConfig: BATCH_SIZE must be an integer >= 1, got 0",
        ),
        (
            ["--gin.EVAL_LOSS_EVERY_STEPS=4", "--gin.eval_loss/DataConfig.global_batch_size=12"],
            "eval_loss/DataConfig: BATCH_SIZE 12 / num_microbatches 1 = 12 rows per micro-batch "
            "is not divisible by the mesh's data x fsdp = 8 (MESH_SHAPE (8, 1, 1))",
        ),
        (
            ["--gin.INIT_FROM_CHECKPOINT='/no/such/orbax'"],
            "INIT_FROM_CHECKPOINT: checkpoint path /no/such/orbax does not exist",
        ),
        (
            ["--gin.ModelConfig.widht=3"],
            "gin config: --gin.ModelConfig.widht: Configurable 'ModelConfig' doesn't have a "
            "parameter named 'widht'",
        ),
        (
            ["--gin.ModelConfig.remat_policy='fulll'"],
            "gin config: ModelConfig.remat_policy='fulll': must be one of ('none', 'full', "
            "'dots_saveable', 'dots_with_no_batch_dims_saveable', 'nothing_saveable', "
            "'everything_saveable')",
        ),
        (
            ["--gin.ModelConfig.remat_polcy='full'"],
            "gin config: --gin.ModelConfig.remat_polcy: Configurable 'ModelConfig' doesn't have "
            "a parameter named 'remat_polcy' (did you mean remat_policy?)",
        ),
        (
            ["--gin.MODEL_PRESET='bloomz-1b1'"],
            "gin config: --gin.MODEL_PRESET: macro MODEL_PRESET is retired: each "
            "gin_configs/models/*.gin file now binds ModelConfig itself; include the model's "
            "file instead",
        ),
    ],
)
def test_bad_values_stop_before_anything_runs(tmp_path, args, message):
    """One exact line, and nothing written to MODEL_DIR (no step trained and then lost)."""
    assert run_in_process(tmp_path / "run", *args) == f"error: {message}"
    assert not (tmp_path / "run").exists()
