"""Shared test set-up: 8 simulated CPU devices for the sharding tests.

XLA reads the flag once, when the CPU backend starts, so it is set here,
before any test module imports jax.
"""

import os

import pytest

# The real EcomInstruct data (ECOMGPT_DATA_DIR, set by .ci/run when ../shared has it) is
# opt-in per test: tests that want it import REAL_DATA_DIR from here and skip without it.
# Everything else (tasks, the trainer's subprocesses) runs on the bundled sample whatever
# the caller's environment, so the suite means the same thing with and without the data.
REAL_DATA_DIR = os.environ.pop("ECOMGPT_DATA_DIR", "")

# The bundled sample's stand-ins for the paper's held-out tasks (test split only), in
# folder order: what the held-out mixture evaluates on the sample.
SAMPLE_HELD_OUT = [
    "EN-ABSA-CLS-review_topic_category",
    "EN-Lenovo-Condition_Extract-Condition_Extract",
    "ZH-MEPAVE-NER-attribute_value_extraction",
    "ZH-Multi_CPR-Extract-product_select_2",
    "ZH-OpenBG_Align-CLS-item_coarse_classify",
    "ZH-OpenBG_Align-Generate-title_generate",
]

# The bundled sample's held-in tasks (train and test splits), in folder order.
SAMPLE_HELD_IN = [
    "EN-Shop_Product-CLS-product_category",
    "EN-Shop_Product-Condition_Extract-attribute_detection",
    "EN-Shop_Product-Generate-title_generate",
    "EN-Shop_Product-NER-product_entity",
    "EN-Shop_QA-Extract-answer_extract",
    "EN-Shop_Review-CLS-review_sentiment",
    "ZH-Shop_Product-CLS-product_category",
    "ZH-Shop_Product-Condition_Extract-attribute_detection",
    "ZH-Shop_Product-Generate-description_generate",
    "ZH-Shop_Product-NER-attribute_extraction",
    "ZH-Shop_QA-Extract-answer_extract",
    "ZH-Shop_Review-CLS-review_sentiment",
]
# Every task of the bundled sample, as SeqIO names, sorted.
SAMPLE_TASKS = sorted("ecom:" + t.replace("-", ":") for t in SAMPLE_HELD_IN + SAMPLE_HELD_OUT)

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
# Appended to the caller's XLA_FLAGS (not a default for them): other flags must not
# silently drop the 8 devices the sharding tests need.
if DEVICE_COUNT_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {DEVICE_COUNT_FLAG}=8".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def pytest_configure(config):
    """Stop at once, with the reason, if the sharding tests could not run on the CPU
    (never skip).

    Also shares compiled programs between tests: many build the same tiny model and step
    (a fresh closure each time, so jax's in-memory cache misses), and XLA compiles on the
    CPU take seconds. The cache lives in a temporary folder, removed at the end.
    """
    import shutil
    import tempfile

    import jax

    cache = tempfile.mkdtemp(prefix="ecomgpt-test-xla-cache-")
    config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    # On a GPU (JAX_PLATFORMS=cuda, as benchmarks/gpu_check.sh runs the cuDNN tests)
    # only tests that need no mesh are meant to run.
    if jax.default_backend() == "cpu" and jax.device_count() < 8:
        raise pytest.UsageError(
            f"the tests need 8 devices, found {jax.device_count()} "
            f"({jax.default_backend()}; XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}): "
            f"leave {DEVICE_COUNT_FLAG} out of XLA_FLAGS or set it to 8"
        )


@pytest.fixture
def sample_tasks():
    """The bundled sample as the registered SeqIO tasks; whatever the test registers
    (another root, vocabulary, seed or rate cap) is undone after it."""
    import tasks
    from ecomgpt_jax.ecominstruct import make_sample

    if tasks.registration().data_dir != make_sample.SAMPLE_DIR:
        tasks.register_ecom_tasks(make_sample.SAMPLE_DIR)
    before = tasks.registration()
    yield tasks
    if tasks.registration() is not before:
        tasks.register_ecom_tasks()  # the default root: the sample (see REAL_DATA_DIR)


def seqio_examples(name: str, split: str) -> list[dict]:
    """Every example of a registered SeqIO task or mixture split, unshuffled: in file order
    from JSON files, in TFDS's fixed order from prepared shards."""
    import seqio

    task = seqio.get_mixture_or_task(name)
    ds = task.get_dataset(sequence_length=None, split=split, shuffle=False)
    return list(ds.as_numpy_iterator())


@pytest.fixture
def one_device(monkeypatch):
    """Meshes over the first device only, as on the one-GPU machine --compare_hf is for
    (the test session has 8 simulated devices, and --compare_hf refuses a larger mesh)."""
    import jax

    from ecomgpt_jax import partitioning

    make = partitioning.make_mesh

    def first_device(config, devices=None):
        return make(config, jax.devices()[:1] if devices is None else devices)

    monkeypatch.setattr(partitioning, "make_mesh", first_device)


@pytest.fixture
def results(tmp_path, monkeypatch):
    """RESULTS.md redirected to a file that must stay absent (no row for a failed run)."""
    from benchmarks import report

    path = tmp_path / "RESULTS.md"
    monkeypatch.setattr(report, "RESULTS", path)
    yield path
    assert not path.exists()
