"""The notebooks run top to bottom and show what they promise.

Each notebook is executed once per module (`notebooks/execute.py`: a fresh kernel of this
interpreter, on the CPU): the quickstart as committed (~4 min on 2 cores), the TPU
fine-tuning notebook with its committed `SMOKE = True` (~2 min). They run in a copy of the
repository, so that their runs/ folders (which they empty first) are not this checkout's,
where a user's own notebook runs live. Cells are found by their tags. The committed files
are also checked to carry their outputs, so that they render on GitHub.
"""

import importlib.util
import json
import math
import pathlib
import shutil

import nbformat
import pytest

from ecomgpt_jax.ecominstruct import instructions, reader
from tasks.mixtures import HELD_OUT_TASKS

ROOT = pathlib.Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "ecomgpt_jax" / "ecominstruct" / "sample"
QUICKSTART = ROOT / "notebooks" / "quickstart.ipynb"
FINETUNE = ROOT / "notebooks" / "finetune_bloomz_tpu.ipynb"


def _load_execute_module():
    spec = importlib.util.spec_from_file_location(
        "notebooks_execute", ROOT / "notebooks/execute.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


execute = _load_execute_module()


def cell(nb, tag: str):
    found = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(found) == 1, f"expected one cell tagged {tag!r}, found {len(found)}"
    return found[0]


def stdout(c) -> str:
    return "".join(o.text for o in c.outputs if o.output_type == "stream" and o.name == "stdout")


def data(c, mime: str) -> list[str]:
    return [o.data[mime] for o in c.outputs if mime in o.get("data", {})]


def html_cells(html: str) -> list[list[str]]:
    """Rows of a simple <table> as lists of cell texts (tags stripped)."""
    import re

    rows = []
    for row in re.findall(r"<tr>(.*?)</tr>", html):
        cells = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)
        rows.append([re.sub(r"<[^>]+>", "", x) for x in cells])
    return rows


def pct(value) -> str:
    return "" if value is None or math.isnan(value) else f"{100 * value:.2f}"


# What the notebooks use of the repository (the package, its sample data, the gin files).
COPIED = ("ecomgpt_jax", "tasks", "gin_configs", "notebooks")
BEFORE: dict[str, int] = {}  # this checkout's runs/, before the notebooks ran


def runs_snapshot(root: pathlib.Path) -> dict[str, int]:
    """Every path under root/runs with its modification time."""
    runs = root / "runs"
    return {str(p.relative_to(runs)): p.stat().st_mtime_ns for p in runs.rglob("*")}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A copy of the repository's code, data and notebooks, where the notebooks run; and
    this checkout's runs/ as it was before."""
    root = tmp_path_factory.mktemp("checkout")
    BEFORE.update(runs_snapshot(ROOT))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in COPIED:
        shutil.copytree(ROOT / name, root / name, ignore=ignore)
    return root


@pytest.fixture(scope="module")
def quickstart(checkout):
    return execute.execute(checkout / "notebooks" / "quickstart.ipynb", cwd=checkout)


@pytest.fixture(scope="module")
def finetune(checkout):
    return execute.execute(checkout / "notebooks" / "finetune_bloomz_tpu.ipynb", cwd=checkout)


# ----------------------------------------------------------------------------- quickstart


def test_quickstart_shows_sample_tasks_and_instructions(quickstart):
    tasks = reader.discover_tasks(SAMPLE)
    listing = stdout(cell(quickstart, "tasks"))
    assert listing.startswith(f"{len(tasks)} tasks under ecomgpt_jax/ecominstruct/sample:")
    assert all(name in listing for name in tasks)
    shown = stdout(cell(quickstart, "instructions"))
    example = instructions.task_instructions(tasks["EN-Shop_Review-CLS-review_sentiment"], "train")
    assert f"--- prompt:\n{example[0].prompt}\n--- answer:\n{example[0].answer}\n" in shown


def test_quickstart_trains_with_a_loss_plot(quickstart, checkout):
    train = cell(quickstart, "train")
    assert len(data(train, "image/png")) == 1  # the live plot, updated in place
    assert "finished step 150;" in stdout(train)
    rows = [json.loads(x) for x in (checkout / "runs/quickstart/model/metrics.jsonl").open()]
    assert rows[-1]["step"] == 150
    # From scratch the first loss is about ln(2048) (uniform over the vocabulary).
    assert rows[0]["loss"] == pytest.approx(math.log(2048), abs=0.3)
    assert rows[-1]["loss"] < 3.0
    # The held-out tasks' loss, plotted beside it every 25 steps, on the same rows each time:
    # it rises from its start and ends far above the training loss, as the notebook says
    # (from scratch, nothing carries over).
    held_out = [json.loads(x) for x in (checkout / "runs/quickstart/model/eval_loss.jsonl").open()]
    assert [r["step"] for r in held_out] == [0, 25, 50, 75, 100, 125, 150]
    assert len({r["all"]["answer_tokens"] for r in held_out}) == 1
    assert held_out[-1]["all"]["loss"] > held_out[0]["all"]["loss"] > rows[-1]["loss"] + 2
    assert "eval_loss step 150: loss " in stdout(train)


def test_quickstart_score_table_and_chart_match_metrics_json(quickstart, checkout):
    metrics = json.loads((checkout / "runs/quickstart/eval/metrics.json").read_text())
    [html] = data(cell(quickstart, "scores-table"), "text/html")
    rows = {r[0]: r for r in html_cells(html)[1:]}
    tasks = reader.discover_tasks(SAMPLE)
    expected = sorted(n for n, t in tasks.items() if n in HELD_OUT_TASKS or t.has_split("train"))
    assert sorted(n for n in rows if not n.startswith("average")) == expected
    for name in expected:
        group = "held-out" if name in HELD_OUT_TASKS else "held-in"
        assert rows[name][1:3] == [group, "8"]
        assert rows[name][3] == pct(metrics[name]["rouge-l-f1"])
    assert rows["average"][2] == f"{len(expected)} tasks"
    assert rows["average"][3:] == [
        pct(metrics["average"][k]) for k in ("rouge-l-f1", "micro-f1", "macro-f1", "rouge-l-f1-cjk")
    ]
    assert len(data(cell(quickstart, "bar-chart"), "image/png")) == 1


def test_quickstart_compares_two_checkpoints(quickstart, checkout):
    """Step 100 against the final step on the same 8 examples a task: the table's average
    difference is the difference of the two evaluations' own averages."""
    work = checkout / "runs/quickstart"
    final = json.loads((work / "eval/metrics.json").read_text())["average"]
    step100 = json.loads((work / "eval_step100/metrics.json").read_text())["average"]
    result = json.loads((work / "compare.json").read_text())
    for key in ("rouge-l-f1", "micro-f1"):
        assert result["average"][key]["delta"] == pytest.approx(final[key] - step100[key])
        assert result["average"][key]["baseline"] == pytest.approx(step100[key])
    text = stdout(cell(quickstart, "compare"))
    assert "candidate - baseline, x100, with 95% paired-bootstrap intervals" in text
    delta = 100 * result["average"]["rouge-l-f1"]["delta"]
    [average_row] = [line for line in text.splitlines() if line.startswith("average ")]
    assert f"{delta:+.2f} [" in average_row


def test_quickstart_answers_own_prompts(quickstart):
    text = stdout(cell(quickstart, "own-prompt"))
    assert text.count("\n>>> ") == 2
    assert "The blender stopped working after two days." in text


# ----------------------------------------------------------------------------- finetune


def test_finetune_notebook_is_committed_in_smoke_mode():
    nb = nbformat.read(FINETUNE, as_version=4)
    assert "SMOKE = True" in cell(nb, "settings").source


def test_finetune_smoke_chooses_mesh_from_chip_count(finetune):
    assert stdout(cell(finetune, "devices")).startswith("4 x cpu")
    mesh = stdout(cell(finetune, "mesh"))
    assert "MESH_SHAPE = (4, 1, 1), BATCH_SIZE = 8, NUM_MICROBATCHES = 1" in mesh
    # 7.07e9 x 16 bytes needs 8 shards of a 32 GiB chip's half: v4-32 = (2, 8, 1).
    assert mesh.splitlines()[-1].endswith("too small   (2, 8, 1)")


def test_finetune_smoke_trains_evaluates_and_exports(finetune, checkout):
    train = cell(finetune, "train")
    assert len(data(train, "image/png")) == 1
    assert "finished step 30;" in stdout(train)
    assert "--gin.INIT_FROM_CHECKPOINT='runs/finetune_smoke/init'" in stdout(train)
    held_out = checkout / "runs/finetune_smoke/model/eval_loss.jsonl"
    assert [json.loads(x)["step"] for x in held_out.open()] == [0, 10, 20, 30]
    assert "eval_loss step 30: loss " in stdout(train)
    [html] = data(cell(finetune, "scores-table"), "text/html")
    rows = {r[0]: r for r in html_cells(html)[1:]}
    held_out = sorted(n for n in reader.discover_tasks(SAMPLE) if n in HELD_OUT_TASKS)
    assert sorted(n for n in rows if n != "average") == held_out
    assert all(rows[n][1] == "4" for n in held_out)
    export = checkout / "runs/finetune_smoke/hf_export"
    assert sorted(p.name for p in export.iterdir()) == ["config.json", "model.safetensors"]
    # transformers' beam search on the export reproduces the JAX evaluation's predictions.
    assert "transformers reproduces 3/3 evaluation predictions" in stdout(
        cell(finetune, "export-check")
    )


def test_the_notebooks_run_in_the_copy_and_leave_this_checkout_alone(
    quickstart, finetune, checkout
):
    assert (checkout / "runs" / "quickstart" / "eval" / "metrics.json").is_file()
    assert (checkout / "runs" / "finetune_smoke" / "hf_export").is_dir()
    assert runs_snapshot(ROOT) == BEFORE


# ----------------------------------------------------------------------------- committed


@pytest.mark.parametrize("path", [QUICKSTART, FINETUNE], ids=lambda p: p.stem)
def test_committed_notebooks_carry_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "run notebooks/execute.py"
    assert any(data(c, "image/png") for c in code)
    assert not any(o.output_type == "error" for c in code for o in c.outputs)
    assert str(ROOT) not in json.dumps(nb)  # no machine-specific paths in the outputs


def test_committed_quickstart_outputs_are_current(quickstart):
    """The committed outputs of the cells that depend only on the code and the bundled
    sample (not on training's floating point) equal a fresh run's: a change to prompts,
    scoring or the sample that leaves the committed notebook stale fails here. (Rerun
    `python notebooks/execute.py` after such a change.)"""
    committed = nbformat.read(QUICKSTART, as_version=4)
    for tag in ("tasks", "instructions"):
        assert cell(committed, tag).outputs == cell(quickstart, tag).outputs, tag
