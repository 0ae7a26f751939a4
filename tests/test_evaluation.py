"""Evaluation library: prompts as the SeqIO tasks give them, task resolution, output files,
metrics.json equal to the score CLI's, byte-identical reruns, checkpoint restore on a mesh,
predictions equal to transformers' beam search on the left-truncated prompts."""

import dataclasses
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import numpy as np
import pytest
import torch
import transformers
from conftest import SAMPLE_HELD_OUT

from ecomgpt_jax import checkpointing, eval_outputs, evaluation, score, vocabularies
from ecomgpt_jax import partitioning as P
from ecomgpt_jax.decoding import DecodeConfig
from ecomgpt_jax.ecominstruct import instructions, make_sample, reader
from ecomgpt_jax.evaluation import EvalConfig, ModelSource
from ecomgpt_jax.models import config as mc
from ecomgpt_jax.models import decoder, hf_io

SAMPLE = make_sample.SAMPLE_DIR
# Sample prompts have up to ~90 SentencePiece tokens: 64 cuts many of them (from the left).
EVAL = EvalConfig(
    data_dir=str(SAMPLE),
    max_examples=4,
    batch_size=8,
    decode=DecodeConfig(num_beams=2, max_new_tokens=6, max_prompt_len=64, min_bucket=64),
)


def make_hf_dir(path, preset="tiny-qwen2", eos_boost=11.0):
    """A random HF model sized for the bundled SentencePiece vocabulary (eos 1, pad 0)."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(mc.get_preset(preset), vocab_size=2048)
    hf_cfg = transformers.AutoConfig.for_model(**mc.to_hf_config(cfg))
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight[cfg.eos_id] *= eos_boost
    model.save_pretrained(path)
    return model.eval()


@pytest.fixture(scope="module")
def vocab():
    return vocabularies.make_vocabulary()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf_qwen")
    hf_model = make_hf_dir(path)
    cfg, params = evaluation.load_model(ModelSource(hf_dir=str(path)))
    return hf_model, cfg, params, path


@pytest.fixture(scope="module")
def first_run(model, vocab, tmp_path_factory):
    _, cfg, params, path = model
    out = tmp_path_factory.mktemp("eval_a")
    result = evaluation.evaluate(params, cfg, vocab, EVAL, eval_dir=out, describe=str(path))
    return result, out


def test_prompts_and_tokens_equal_the_seqio_tasks(vocab):
    import tasks

    before = tasks.registration()
    tasks.register_ecom_tasks(SAMPLE, vocab)
    try:
        prepared, missing = evaluation.prepare_tasks(
            dataclasses.replace(EVAL, max_examples=None), vocab
        )
        assert [t.name for t in prepared] == SAMPLE_HELD_OUT
        assert len(missing) == 6 and "EN-Lenovo-NER-NER" in missing
        for task in prepared:
            seqio_task = tasks.get(tasks.seqio_task_name(task.name))
            # Training's cut (keep_prompt_tail) at the evaluation's prompt length.
            lengths = {"inputs": EVAL.decode.max_prompt_len, "targets": 1000}
            ds = seqio_task.get_dataset(sequence_length=lengths, split="test", shuffle=False)
            rows = sorted(ds.as_numpy_iterator(), key=lambda r: r["index"])
            assert len(rows) == len(task.instructions) == task.n_total
            for row, inst, ids in zip(rows, task.instructions, task.prompt_ids, strict=True):
                assert row["inputs_pretokenized"].decode() == inst.prompt
                assert row["targets_pretokenized"].decode() == inst.answer
                assert int(row["index"]) == inst.index
                assert row["inputs"].tolist() == list(ids)
    finally:
        tasks.register_ecom_tasks(before.data_dir)


def test_prompt_ids_keep_the_prefix_and_the_prompts_end():
    class Vocab:
        prompt_prefix = (9,)

        def encode(self, s):
            return [int(c) for c in s]

    assert evaluation.prompt_ids(Vocab(), "12345678", 5) == (9, 5, 6, 7, 8)
    assert evaluation.prompt_ids(Vocab(), "12", 5) == (9, 1, 2)
    assert evaluation.prompt_ids(Vocab(), "1234", 5) == (9, 1, 2, 3, 4)
    assert evaluation.prompt_ids(Vocab(), "12", 1) == (9,)
    del Vocab.prompt_prefix  # SentencePiece and the others: no prefix
    assert evaluation.prompt_ids(Vocab(), "12345678", 5) == (4, 5, 6, 7, 8)


def test_task_names_resolve_from_folders_seqio_names_and_mixtures():
    names, missing = evaluation.resolve_task_names(
        "ecom:ZH:MEPAVE:NER:attribute_value_extraction, EN-ABSA-CLS-review_topic_category", SAMPLE
    )
    assert names == [
        "ZH-MEPAVE-NER-attribute_value_extraction",
        "EN-ABSA-CLS-review_topic_category",
    ]
    assert missing == []
    names, missing = evaluation.resolve_task_names("ecom_instruct_held_out", SAMPLE)
    assert names == SAMPLE_HELD_OUT and len(missing) == 6
    with pytest.raises(reader.DataError, match="neither a task folder nor a known mixture"):
        evaluation.resolve_task_names("no_such_mixture", SAMPLE)
    # A well-formed task name (folder or SeqIO form) without a folder is a task lacking data.
    for name in ("EN-Lenovo-NER-NER", "ecom:EN:Lenovo:NER:NER"):
        with pytest.raises(reader.DataError) as info:
            evaluation.resolve_task_names(f"EN-ABSA-CLS-review_topic_category,{name}", SAMPLE)
        assert str(info.value) == f"{SAMPLE}: task {name!r} has no data under this root"


def test_outputs_and_metrics_equal_the_score_cli(first_run, tmp_path):
    result, out = first_run
    files = sorted(p.name for p in (out / "predictions").iterdir())
    assert files == [f"{name}.jsonl" for name in SAMPLE_HELD_OUT]
    infos = reader.discover_tasks(SAMPLE)
    lines = []
    for name in SAMPLE_HELD_OUT:
        text = (out / "predictions" / f"{name}.jsonl").read_text(encoding="utf-8")
        rows = [json.loads(line) for line in text.splitlines()]
        expected = instructions.task_instructions(infos[name], "test")[:4]
        assert [list(r) for r in rows] == [["task", "index", "prediction", "inputs", "targets"]] * 4
        assert [(r["task"], r["index"], r["inputs"], r["targets"]) for r in rows] == [
            (e.task, e.index, e.prompt, e.answer) for e in expected
        ]
        lines.append(text)
    combined = tmp_path / "all.jsonl"
    combined.write_text("".join(lines), encoding="utf-8")
    cli_out = tmp_path / "scores.json"
    args = ["--data_dir", str(SAMPLE), "--predictions", str(combined), "--output", str(cli_out)]
    assert score.main(args) == 0
    assert (out / "metrics.json").read_bytes() == cli_out.read_bytes()
    metrics = json.loads(cli_out.read_text())
    assert [(metrics[n]["n"], metrics[n]["n_total"]) for n in SAMPLE_HELD_OUT] == [(4, 30)] * 6
    md = (out / "metrics.md").read_text()
    assert "beam search, 2 beams" in md and "from the left to 64 tokens" in md
    assert all(name in md for name in SAMPLE_HELD_OUT) and "EN-Lenovo-NER-NER" in md
    assert any((out / "tensorboard").iterdir())


def test_predictions_equal_transformers_beam_search(model, first_run, vocab):
    """The whole chain: prompt, tokenization, left truncation, beam search, decoding."""
    hf_model, cfg, _, _ = model
    result, _ = first_run
    d = EVAL.decode
    assert len(result.rows) == 4 * len(SAMPLE_HELD_OUT)  # every task's rows, not a few
    for row in result.rows:
        ids = list(vocab.encode(row["inputs"]))[-d.max_prompt_len :]
        with torch.no_grad():
            seq = hf_model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                num_beams=d.num_beams,
                do_sample=False,
                max_new_tokens=d.max_new_tokens,
                eos_token_id=cfg.eos_id,
                pad_token_id=cfg.pad_id,
            )[0, len(ids) :].tolist()
        assert row["prediction"] == vocab.decode(seq), row["index"]
    assert len({r["prediction"] for r in result.rows}) > 1


def test_infer_eval_reruns_are_byte_identical(model, first_run, vocab, tmp_path, capsys):
    _, cfg, params, _ = model
    _, first = first_run
    # An earlier evaluation's files in the same folder: its other tasks' predictions go
    # (they would sit next to a metrics.json that does not cover them), nothing else does.
    (tmp_path / "predictions").mkdir()
    (tmp_path / "predictions" / "EN-Old-CLS-old.jsonl").write_text("{}\n")
    (tmp_path / "predictions" / f"{SAMPLE_HELD_OUT[0]}.jsonl").write_text("{}\n")
    (tmp_path / "predictions" / "notes.txt").write_text("mine")
    (tmp_path / "predictions" / "notes.jsonl").write_text("mine")  # no task's name: stays
    metrics = evaluation.run_infer_eval(params, cfg, None, vocab, EVAL, step=7, eval_dir=tmp_path)
    assert metrics == json.loads((first / "metrics.json").read_text())
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == sorted(
        ["notes.jsonl", "notes.txt", *(f"{name}.jsonl" for name in SAMPLE_HELD_OUT)]
    )
    for name in SAMPLE_HELD_OUT:
        path = f"predictions/{name}.jsonl"
        assert (tmp_path / path).read_bytes() == (first / path).read_bytes()
    assert "- step: 7" in (tmp_path / "metrics.md").read_text()
    assert capsys.readouterr().err.splitlines() == [
        f"replacing the previous evaluation's predictions in {tmp_path}/predictions/: removed "
        "1 file of tasks not in this one (EN-Old-CLS-old.jsonl)"
    ]


def test_a_folder_in_place_of_a_tasks_file_stops_before_decoding(model, vocab, tmp_path):
    """Found with the other output checks, not after the tasks before it were decoded
    (hours, on the real data)."""
    _, cfg, params, _ = model
    last = tmp_path / "predictions" / f"{SAMPLE_HELD_OUT[-1]}.jsonl"
    last.mkdir(parents=True)
    with pytest.raises(evaluation.EvalError) as info:
        evaluation.evaluate(params, cfg, vocab, EVAL, eval_dir=tmp_path)
    assert str(info.value) == (
        f"EVAL_DIR {tmp_path}: cannot write predictions/ ({last}: Is a directory)"
    )
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == [last.name]


class _StopAtTask:
    """A Generator that raises KeyboardInterrupt (a Ctrl-C) when asked for task `stop`."""

    def __init__(self, gen, stop: int):
        self.gen, self.stop, self.calls = gen, stop, 0

    def shard_params(self, params):
        return self.gen.shard_params(params)

    def generate(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.stop:
            raise KeyboardInterrupt
        return self.gen.generate(*args, **kwargs)


def test_a_ctrl_c_keeps_the_finished_tasks_predictions(
    model, first_run, vocab, tmp_path, monkeypatch
):
    """Each task's file is written when it is decoded: a Ctrl-C in the third task leaves
    the first two (as a full run writes them) and says so; the fifth task's file from an
    earlier evaluation is named as such."""
    _, cfg, params, _ = model
    _, first = first_run
    real = evaluation.get_generator
    monkeypatch.setattr(evaluation, "get_generator", lambda *a: _StopAtTask(real(*a), 3))
    (tmp_path / "predictions").mkdir()
    (tmp_path / "predictions" / f"{SAMPLE_HELD_OUT[4]}.jsonl").write_text("{}\n")
    (tmp_path / "metrics.json").write_text("{}")  # the earlier evaluation's scores
    (tmp_path / "metrics.md").write_text("old")
    with pytest.raises(KeyboardInterrupt) as info:  # not EvalInterrupted: would end pytest
        evaluation.evaluate(params, cfg, vocab, EVAL, eval_dir=tmp_path, progress=False)
    assert isinstance(info.value, evaluation.EvalInterrupted)
    done = SAMPLE_HELD_OUT[:2]
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == sorted(
        f"{name}.jsonl" for name in [*done, SAMPLE_HELD_OUT[4]]
    )
    for name in done:
        path = f"predictions/{name}.jsonl"
        assert (tmp_path / path).read_bytes() == (first / path).read_bytes()
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "metrics.md").exists()
    assert str(info.value) == (
        f"interrupted: predictions of 2 of 6 tasks written to {tmp_path}/predictions/ "
        f"({', '.join(done)}); not scored (python -m ecomgpt_jax.score scores that folder); "
        f"the files of {SAMPLE_HELD_OUT[4]} there are an earlier evaluation's"
    )
    # Writing nothing (eval_dir None, or a process other than the writer): the count of
    # tasks decoded all the same.
    with pytest.raises(KeyboardInterrupt) as info:
        evaluation.evaluate(params, cfg, vocab, EVAL, eval_dir=None, progress=False)
    assert str(info.value) == "interrupted after 2 of 6 tasks; nothing written"


def test_a_failed_write_is_one_line_and_keeps_the_predictions(model, vocab, tmp_path, monkeypatch):
    """An OSError writing the scores (a full disk): one EvalError naming the file, after
    every task's predictions were written (one process: no collective, the same line)."""
    import errno

    _, cfg, params, _ = model
    full = tmp_path / "metrics.json"

    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device", str(full))

    monkeypatch.setattr(evaluation, "write_metrics", no_space)
    with pytest.raises(evaluation.EvalError) as info:
        evaluation.evaluate(params, cfg, vocab, EVAL, eval_dir=tmp_path, progress=False)
    assert str(info.value) == (
        f"EVAL_DIR {tmp_path}: cannot write metrics and tensorboard/ ({full}: No space left "
        "on device)"
    )
    assert sorted(p.stem for p in (tmp_path / "predictions").iterdir()) == SAMPLE_HELD_OUT


def test_an_eval_dir_that_cannot_be_a_folder_stops_before_decoding(
    model, vocab, tmp_path, monkeypatch
):
    _, cfg, params, _ = model
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    with pytest.raises(evaluation.EvalError) as info:
        eval_outputs.check_eval_dir(afile / "sub")
    assert str(info.value) == f"EVAL_DIR {afile / 'sub'} is inside {afile}, a file: give a folder"

    def no_decoding(*args):
        pytest.fail("decoding started before EVAL_DIR was checked")

    monkeypatch.setattr(evaluation, "get_generator", no_decoding)
    with pytest.raises(evaluation.EvalError) as info:
        evaluation.evaluate(params, cfg, vocab, EVAL, eval_dir=afile, progress=False)
    assert str(info.value) == f"EVAL_DIR {afile} is a file: give a folder"
    assert afile.read_text() == "not a folder"
    # Training's evaluation names its own folder: training has no EVAL_DIR setting.
    with pytest.raises(evaluation.EvalError) as info:
        evaluation.run_infer_eval(params, cfg, None, vocab, EVAL, 2, afile)
    assert str(info.value) == f"the infer_eval folder {afile} is a file: give a folder"


def test_checkpoint_restored_onto_a_mesh_gives_the_same_predictions(model, first_run, tmp_path):
    _, cfg, params, _ = model
    checkpointing.save_params(tmp_path / "ckpt" / "params", params)
    (tmp_path / "ckpt" / "model_config.json").write_text(json.dumps(cfg.to_json_dict()))
    mesh = P.make_mesh(P.MeshConfig((2, 2, 2)))
    cfg2, restored = evaluation.load_model(ModelSource(checkpoint=str(tmp_path / "ckpt")), mesh)
    assert cfg2 == cfg
    assert restored["embed"]["embedding"].sharding.spec == jax.sharding.PartitionSpec(
        "tensor", "fsdp"
    )
    np.testing.assert_array_equal(restored["embed"]["embedding"], params["embed"]["embedding"])
    result = evaluation.evaluate(
        restored, cfg2, vocabularies.make_vocabulary(), EVAL, mesh=mesh, progress=False
    )
    assert [r["prediction"] for r in result.rows] == [r["prediction"] for r in first_run[0].rows]


def test_evaluate_refuses_a_vocabulary_larger_than_the_model():
    """Before anything is decoded or written (the model would read NaN past its table)."""
    cfg = dataclasses.replace(mc.get_preset("tiny-bloom"), vocab_size=1999)
    vocabulary = vocabularies.make_vocabulary("sentencepiece", None)  # 2000 ids
    with pytest.raises(
        evaluation.EvalError, match="has 2000 ids but the model's vocab_size is 1999"
    ):
        evaluation.evaluate(None, cfg, vocabulary, EvalConfig(mixture_or_task_name="x"))


def test_model_source_errors(tmp_path):
    with pytest.raises(evaluation.EvalError, match="exactly one of CHECKPOINT"):
        evaluation.load_model(ModelSource())
    with pytest.raises(evaluation.EvalError, match="exactly one of CHECKPOINT"):
        evaluation.load_model(ModelSource(checkpoint="a", hf_dir="b"))
    params = {"w": np.zeros(2, np.float32)}
    checkpointing.save_params(tmp_path / "params", params)
    with pytest.raises(evaluation.EvalError, match="no model_config.json"):
        evaluation.load_model(ModelSource(checkpoint=str(tmp_path)))
    # A missing checkpoint says so, without the model hint.
    missing = str(tmp_path / "nope")
    tiny = mc.get_preset("tiny-bloom")
    with pytest.raises(checkpointing.CheckpointError) as info:
        evaluation.load_model(ModelSource(checkpoint=missing, config=tiny))
    assert str(info.value) == f"checkpoint path {missing} does not exist"
    with pytest.raises(
        checkpointing.CheckpointError,
        match=r"do not match the model .*; it has no model_config.json, so the model is "
        r"ModelSource.config \(eval.gin: the included gin_configs/models/\*.gin file\): "
        "include the one of the model it holds$",
    ):
        evaluation.load_model(
            ModelSource(checkpoint=str(tmp_path), config=mc.get_preset("tiny-bloom"))
        )
    # A damaged one says so, without the model hint either.
    (tmp_path / "params" / "_METADATA").unlink()
    with pytest.raises(checkpointing.CheckpointError) as info:
        evaluation.load_model(ModelSource(checkpoint=str(tmp_path), config=tiny))
    assert str(info.value) == (
        f"{tmp_path / 'params'}: checkpoint cannot be read, damaged or incomplete (no "
        "readable metadata in params/)"
    )
    with pytest.raises(hf_io.CheckpointFormatError, match="not found"):
        evaluation.load_model(ModelSource(hf_dir=str(tmp_path)))
    # DTYPE and MODEL_OVERRIDES_EVAL: errors name the macro, before anything loads.
    for source, message in [
        (
            ModelSource(checkpoint=missing, dtype="bf16"),
            "DTYPE='bf16': must be one of 'float32', 'bfloat16', 'float16', or None",
        ),
        (
            ModelSource(checkpoint=missing, overrides={"attention": "cudnn"}),
            "MODEL_OVERRIDES_EVAL: 'attention' is not a ModelConfig field (did you mean "
            "'attention_impl'?)",
        ),
        (
            ModelSource(checkpoint=missing, overrides={"zzz": 1}),
            "MODEL_OVERRIDES_EVAL: 'zzz' is not a ModelConfig field (fields: family, "
            "vocab_size, hidden, layers, heads, kv_heads, head_dim, mlp_dim, norm_eps, "
            "rope_theta, rope_scaling, qkv_bias, tie_embeddings, max_positions, param_dtype, "
            "dtype, logits_dtype, remat_policy, scan_layers, attention_impl, bos_id, eos_id, "
            "extra_eos_ids, pad_id)",
        ),
        (
            ModelSource(checkpoint=missing, overrides=["attention_impl"]),
            "MODEL_OVERRIDES_EVAL=['attention_impl']: must be a dict of ModelConfig fields, "
            "e.g. {'attention_impl': 'cudnn'}",
        ),
    ]:
        with pytest.raises(evaluation.EvalError) as info:
            evaluation.load_model(source)
        assert str(info.value) == message
    with pytest.raises(evaluation.EvalError, match="^DTYPE='bf16'"):
        evaluation.check_source(ModelSource(hf_dir=str(tmp_path), dtype="bf16"))
    for field, value, why in [
        ("max_examples", 0, "use None or an integer >= 1"),
        ("max_examples", "8", "use None or an integer >= 1"),  # a quoted gin value
        ("batch_size", 8.0, "must be an integer >= 1"),
        ("batch_size", True, "must be an integer >= 1"),
        ("prompt_seed", None, "must be an integer"),
    ]:
        with pytest.raises(evaluation.EvalError) as info:
            EvalConfig(**{field: value})
        assert str(info.value) == f"EvalConfig.{field}={value!r}: {why}"


def test_checkpoint_without_model_config_json_uses_the_source_config(tmp_path):
    tiny = mc.get_preset("tiny-qwen2")
    rs = np.random.RandomState(0)
    params = jax.tree.map(
        lambda a: rs.normal(size=a.shape).astype(np.float32), decoder.abstract_params(tiny)
    )
    checkpointing.save_params(tmp_path / "params", params)
    source = ModelSource(checkpoint=str(tmp_path), config=tiny, overrides={"remat_policy": "full"})
    cfg, restored = evaluation.load_model(source)
    assert cfg == dataclasses.replace(tiny, remat_policy="full")
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)


def test_a_bad_override_value_is_reported_before_the_hf_weights_load(model, monkeypatch):
    _, _, _, path = model

    def no_load(*args, **kwargs):
        pytest.fail("the weights were read before the overrides were checked")

    monkeypatch.setattr(hf_io, "load_hf_params", no_load)
    source = ModelSource(hf_dir=str(path), overrides={"attention_impl": "cudnnn"})
    with pytest.raises(mc.ConfigError) as info:
        evaluation.load_model(source)
    assert str(info.value) == (
        "MODEL_OVERRIDES_EVAL: ModelConfig.attention_impl='cudnnn': must be one of "
        "('xla', 'cudnn', 'splash')"
    )
