"""The decode benchmark (`benchmarks/decode.py`; its transformers side, `HfDecoder`, is
tested in test_hf_baselines.py)."""

import json

import jax
import numpy as np
import pytest
from benchmark_helpers import COMPARE_HF_MESH, assert_one_line_error

from benchmarks import hf_baselines, report
from ecomgpt_jax.models import config as mc
from ecomgpt_jax.models import decoder

TINY = mc.get_preset("tiny-bloom")


def test_decode_benchmark_records(capsys, tmp_path):
    """`python -m benchmarks.decode` on a tiny model: one JSON record per method whose
    rates follow from its timing, every sequence running to --new_tokens (EOS off)."""
    import json

    from benchmarks import decode as bd

    bd.main(
        ["--preset", "tiny-bloom", "--batch", "8", "--prompt_len", "8", "--new_tokens", "4"]
        + ["--repeats", "1", "--no_record"]  # the default mesh: data parallel over 8 devices
    )
    records = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [(r["method"], r["num_beams"]) for r in records] == [("greedy", 1), ("beam", 4)]
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(decoder.abstract_params(TINY)))
    for r in records:
        assert (r["batch"], r["prompt_len"], r["new_tokens"], r["params"]) == (8, 8, 4, params)
        assert r["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
        assert r["sequences_per_s"] == pytest.approx(8 / r["seconds_per_batch"])
        assert r["new_tokens_per_s"] == pytest.approx(r["sequences_per_s"] * 4)
        assert "hf" not in r
    # EOS is disabled: a decoded batch has exactly new_tokens tokens per row.
    dcfg = bd.decoding.DecodeConfig(method="beam", max_new_tokens=4, max_prompt_len=8)
    mesh = bd.partitioning.make_mesh(bd.partitioning.MeshConfig((-1, 1, 1)))
    out = bd.JaxDecoder(TINY, dcfg, mesh, bd.synthetic_prompts(TINY.vocab_size, 8, 8)).run_once()
    np.testing.assert_array_equal(out.lengths, [4] * 8)


def test_decode_benchmark_compare_hf_times_generate_on_the_same_prompts(capsys, one_device):
    """--compare_hf: transformers' generate runs --hf_batch prompts to --new_tokens (its
    own assertion); ours runs at --batch and, on the same first prompts, at --hf_batch;
    the ratios are ours / theirs in sequences per second."""
    import json

    from benchmarks import decode as bd

    bd.main(
        ["--preset", "tiny-bloom", "--batch", "8", "--prompt_len", "8", "--new_tokens", "4"]
        + ["--repeats", "1", "--no_record", "--compare_hf"]
    )
    records = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [r["method"] for r in records] == ["greedy", "beam"]
    for r in records:
        assert (r["batch"], r["mesh"]) == (8, {"data": 1, "fsdp": 1, "tensor": 1})
        hf, same = r["hf"], r["ours_at_hf_batch"]
        assert hf["batch"] == same["batch"] == 2
        for rates in (hf, same):
            assert rates["sequences_per_s"] == pytest.approx(2 / rates["seconds_per_batch"])
            assert rates["new_tokens_per_s"] == pytest.approx(rates["sequences_per_s"] * 4)
        assert r["speedup_vs_hf"] == pytest.approx(
            r["sequences_per_s"] / hf["sequences_per_s"], rel=1e-4
        )
        assert r["speedup_vs_hf_same_batch"] == pytest.approx(
            same["sequences_per_s"] / hf["sequences_per_s"], rel=1e-4
        )


def test_decode_rates_and_ratios_from_fixed_timings(capsys, monkeypatch, one_device):
    """With each run's time fixed (ours: 0.5 s + 1/16 s a row; transformers: 4 s) the
    record's rates and both ratios are exact; speedup_vs_hf_same_batch divides our rate
    at transformers' batch (2 rows: 0.625 s), not at --batch (8 rows: 1 s). Memory is
    reported in GiB."""
    from benchmarks import decode as bd

    monkeypatch.setattr(bd.JaxDecoder, "time", lambda self: 0.5 + 0.0625 * len(self.tokens))
    monkeypatch.setattr(hf_baselines.HfDecoder, "time", lambda self: 4.0)
    monkeypatch.setattr(report, "peak_memory_bytes", lambda device: 3 * 2**30 + 2**29)
    bd.main(
        ["--preset", "tiny-bloom", "--batch", "8", "--prompt_len", "8", "--new_tokens", "4"]
        + ["--method", "greedy", "--repeats", "2", "--no_record", "--compare_hf"]
    )
    out = capsys.readouterr().out.splitlines()
    (record,) = [json.loads(x) for x in out if x.startswith("{")]
    assert (record["batch"], record["seconds_per_batch"]) == (8, 1.0)
    assert (record["sequences_per_s"], record["new_tokens_per_s"]) == (8.0, 32.0)
    assert record["peak_memory_gb"] == 3.5
    keys = ("batch", "seconds_per_batch", "sequences_per_s", "new_tokens_per_s")
    assert [record["hf"][k] for k in keys] == [2, 4.0, 0.5, 2.0]
    assert record["ours_at_hf_batch"] == dict(zip(keys, [2, 0.625, 3.2, 12.8], strict=True))
    assert (record["speedup_vs_hf"], record["speedup_vs_hf_same_batch"]) == (16.0, 6.4)
    assert out[-1] == (
        "greedy: ours 8 seq/s at batch 8, transformers 0.5 seq/s at batch 2: ratio 16.00x; "
        "at batch 2 both: 6.40x"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "tiny-blom"], "error: unknown model preset 'tiny-blom'; known: "),
        (
            ["--num_beams", "0"],
            "python -m benchmarks.decode: error: argument --num_beams: '0' is not a positive "
            "integer",
        ),
        (
            ["--batch", "0"],
            "python -m benchmarks.decode: error: argument --batch: '0' is not a positive integer",
        ),
        (
            ["--batch", "4"],
            "error: --batch 4 does not divide over the mesh's data x fsdp = 8 (mesh [8, 1, 1])",
        ),
        (
            ["--compare_hf", "--hf_batch", "9"],
            "error: --hf_batch 9 exceeds --batch 8 (transformers decodes the first --hf_batch "
            "of the same prompts)",
        ),
        (
            ["--mesh", "1,1"],
            "error: MESH_SHAPE must be 3 integers (data, fsdp, tensor), one of them may be -1, "
            "got (1, 1)",
        ),
        (["--compare_hf"], COMPARE_HF_MESH),
    ],
)
def test_decode_user_errors_are_one_line(capsys, results, argv, message):
    from benchmarks import decode as bd

    assert_one_line_error(capsys, bd.main, argv, message)


def test_decode_config_errors_exit_with_one_line(capsys):
    from ecomgpt_jax import decoding

    with pytest.raises(SystemExit) as e, report.exit_on_user_error():
        decoding.DecodeConfig(num_beams=0)
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: DecodeConfig.num_beams=0: must be >= 1\n"
    with pytest.raises(ZeroDivisionError), report.exit_on_user_error():
        _ = 1 / 0  # a bug keeps its trace


@pytest.mark.parametrize("fails_in", ["build", "time"])
def test_a_transformers_failure_keeps_our_figures(capsys, monkeypatch, one_device, fails_in):
    """transformers missing, out of memory or failing in generate: our record is still
    emitted, with the error in place of transformers' figures and no ratio."""
    from benchmarks import decode as bd

    def fail(*args, **kwargs):
        raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")

    monkeypatch.setattr(bd.JaxDecoder, "time", lambda self: 0.5)
    monkeypatch.setattr(hf_baselines.HfDecoder, "__init__" if fails_in == "build" else "time", fail)
    bd.main(
        ["--preset", "tiny-bloom", "--batch", "8", "--prompt_len", "8", "--new_tokens", "4"]
        + ["--method", "greedy", "--repeats", "2", "--no_record", "--compare_hf"]
    )
    captured = capsys.readouterr()
    (record,) = [json.loads(x) for x in captured.out.splitlines() if x.startswith("{")]
    assert (record["sequences_per_s"], record["new_tokens_per_s"]) == (16.0, 64.0)
    assert record["hf"] == {"error": "RuntimeError: CUDA out of memory."}
    assert "speedup_vs_hf" not in record and "ours_at_hf_batch" not in record
    assert "transformers greedy: failed: RuntimeError: CUDA out of memory." in captured.err
