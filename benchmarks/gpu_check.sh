#!/usr/bin/env bash
# One-command GPU check (installs nothing; run from the repository root):
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--log_dir DIR] [--python PY] [--budget_s S]
#
# The whole script stops within --budget_s (default 290 s: under 5 minutes with the
# summary's second or two): nvidia-smi gets at most 10 s, the jax probe 60 s or what is left less 5 s, each
# row its own limit or what is left less 5 s (the grace `timeout -k 5` gives a row that
# ignores its TERM), and a row that would start with under 20 s left is skipped, so rows
# 0-4 fit only if they run well inside their limits; --budget_s 600 gives every row
# room. Timings seen: on an H200 (2026-11-27, layers in a scan) rows 1 and 2 took 50 s
# each; on an H100 the same day, with bloom-560m unrolled, rows 1 and 2 each ran past
# their 95 s limit before printing anything. The benchmarks now print progress lines
# (transformers' fit, JAX's compile, each round) to their logs and the limits are
# 150 s; the transformers model is now built on the GPU (it was built on the CPU).
# 0. if pytest is installed: the cuDNN attention tests (tests/test_attention.py -k cudnn:
#    output and gradients against float32 attention on 2048-token rows); a warning if
#    they fail or skip
# 1. train step, bloom-560m shape, bf16, 8 x 2048 tokens, cuDNN attention, vs transformers
#    (if it fails other than by its time limit: again with XLA attention)
# 2. train step, bloomz-1b1 shape, same settings, vs transformers (again with remat
#    "full" if its log shows the device ran out of memory)
# 3. decoding, bloom-560m shape, greedy and beam search (4 beams), vs transformers generate
#    (at its batch 2; ours at batch 16 and at 2)
# 4. decoding, bloomz-1b1 shape, the same
# 5. if time is left: train step 2 again with loss on the last tenth of each row only
#    (--answer_fraction 0.1, EcomInstruct's answer share), vs transformers
# 6. if time is left: train step 1 again with XLA attention (blocked, flash-style
#    backward), without transformers
# 7. if time is left: train step 1 under the profiler (--profile; CUDA graphs off): the
#    operations that take its device time are printed in profile_bloom_560m.log
# 8. if time is left: train step 1 again with bfloat16 logits (--logits_dtype bfloat16),
#    without transformers
#
# Each benchmark runs in its own process under `timeout`; a failure (or "timed out") is
# printed and the next one still runs. JSON results go to LOG_DIR/results.jsonl
# (--log_dir, default a new /tmp/gpu_check.* folder) and rows are appended to
# benchmarks/RESULTS.md; with --out DIR, logs, results.jsonl and RESULTS.md are copied
# to DIR. A summary table and the attention tests' result are printed last. Needs jax
# (CUDA), flax, optax, torch and transformers only (no TensorFlow, SeqIO or gin; pytest
# for row 0); --python names the interpreter (default python3).
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3

PYTHON=python3
LOG_DIR=
OUT_DIR=
TOTAL_BUDGET_S=290
while (($#)); do
  case $1 in
    --python | --log_dir | --out | --budget_s)
      if (($# < 2)); then
        echo "gpu_check.sh: $1 needs a value" >&2
        exit 2
      fi
      case $1 in
        --python) PYTHON=$2 ;;
        --log_dir) LOG_DIR=$2 ;;
        --out) OUT_DIR=$2 ;;
        --budget_s) TOTAL_BUDGET_S=$2 ;;
      esac
      shift 2
      ;;
    -h | --help)
      sed -n '2,/^set -u/p' "$0" | sed '$d'
      exit 0
      ;;
    *)
      echo "gpu_check.sh: unknown argument $1 (see --help)" >&2
      exit 2
      ;;
  esac
done
if ! [[ $TOTAL_BUDGET_S =~ ^[0-9]+$ ]]; then
  echo "gpu_check.sh: --budget_s must be a whole number of seconds, got $TOTAL_BUDGET_S" >&2
  exit 2
fi
LOG_DIR=${LOG_DIR:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
mkdir -p "$LOG_DIR"
RESULTS="$LOG_DIR/results.jsonl"
: > "$RESULTS"
START=$(date +%s)

LAST=  # how the last row ended: ok, skipped, timed_out or failed

run() {  # run NAME TIMEOUT_S ARGS... : one benchmark process, never fatal
  local name=$1 limit=$2
  shift 2
  local left=$((TOTAL_BUDGET_S - ($(date +%s) - START)))
  if ((left < 20)); then
    echo "=== $name: SKIPPED (time budget spent)"
    LAST=skipped
    return
  fi
  # Less the 5 s that `timeout -k 5` may add before the kill.
  ((limit > left - 5)) && limit=$((left - 5))
  echo "=== $name (timeout ${limit}s): $PYTHON $*"
  local t0=$(date +%s)
  timeout -k 5 "$limit" "$PYTHON" "$@" > "$LOG_DIR/$name.log" 2>&1
  local rc=$?
  grep '^{' "$LOG_DIR/$name.log" | sed "s/^{/{\"check\": \"$name\", /" >> "$RESULTS"
  if ((rc == 124 || rc == 137)); then  # timeout's TERM, then its KILL
    LAST=timed_out
    echo "--- $name timed out (exit $rc after $(($(date +%s) - t0))s); last lines:"
    tail -n 15 "$LOG_DIR/$name.log"
  elif ((rc != 0)); then
    LAST=failed
    echo "--- $name FAILED (exit $rc after $(($(date +%s) - t0))s); last lines:"
    tail -n 15 "$LOG_DIR/$name.log"
  else
    LAST=ok
    echo "--- $name ok ($(($(date +%s) - t0))s)"
  fi
  return $rc
}

out_of_memory() {  # out_of_memory NAME: the row's log says the device ran out of memory
  # transformers' "batch 8 ran out of memory, halving" is its own retry, not the failure.
  grep -v 'out of memory, halving' "$LOG_DIR/$1.log" 2>/dev/null |
    grep -qiE 'RESOURCE_EXHAUSTED|out of memory'
}

timeout 10 nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
# A driver or plugin problem can hang jax's start-up: limited like a row.
PROBE_S=$((TOTAL_BUDGET_S - ($(date +%s) - START) - 5))
((PROBE_S > 60)) && PROBE_S=60
((PROBE_S < 1)) && PROBE_S=1
timeout -k 5 "$PROBE_S" "$PYTHON" -c "import jax; print('jax', jax.__version__, jax.devices())" \
  2>&1 | tail -n 1

# The numbers below mean little if the kernel computes the wrong attention. The tests'
# set-up keeps jax on the CPU unless JAX_PLATFORMS says otherwise.
ATTENTION="not run (no pytest)"
if "$PYTHON" -c "import pytest" 2>/dev/null; then
  (
    export JAX_PLATFORMS=cuda
    run attention_tests 120 -m pytest -q -rs -p no:cacheprovider tests/test_attention.py -k cudnn
  )
  summary=$(tail -n 1 "$LOG_DIR/attention_tests.log" 2>/dev/null)
  echo "    $summary"
  if [[ $summary != *passed* || $summary == *skipped* || $summary == *failed* ||
    $summary == *error* ]]; then
    echo "!!! the cuDNN attention tests did not all pass on the GPU: distrust the numbers below"
    ATTENTION="NOT ALL PASSED: ${summary:-no output}"
  else
    ATTENTION=$summary
  fi
fi

TRAIN_OURS=(-m benchmarks.train_step --batch 8 --seq 2048 --dtype bfloat16 --steps 3 --rounds 2)
TRAIN=("${TRAIN_OURS[@]}" --compare_hf)
# cuDNN attention first; if it fails (e.g. an unsupported mask/bias combination on this
# cuDNN), the same shape is measured with XLA attention so the step is still covered. Not
# after a timeout: that says the row is slow, not that cuDNN attention cannot run.
XLA_560M_DONE=0
run train_bloom_560m 150 "${TRAIN[@]}" --preset bloom-560m --attention_impl cudnn
if [[ $LAST == failed ]]; then
  run train_bloom_560m_xla 120 "${TRAIN[@]}" --preset bloom-560m --attention_impl xla
  XLA_560M_DONE=1
fi
# bloomz-1b1's preset keeps the projection outputs (remat, layers in a scan); if that runs
# out of memory on this card, the same shape is measured recomputing whole layers (which
# only makes a row that merely ran out of time slower).
REMAT_1B1=()
run train_bloomz_1b1 150 "${TRAIN[@]}" --preset bloomz-1b1 --attention_impl cudnn
if [[ $LAST == failed ]] && out_of_memory train_bloomz_1b1; then
  REMAT_1B1=(--remat full)
  run train_bloomz_1b1_remat 150 "${TRAIN[@]}" --preset bloomz-1b1 --attention_impl cudnn \
    ${REMAT_1B1[@]+"${REMAT_1B1[@]}"}
fi
DECODE=(-m benchmarks.decode --method both --num_beams 4 --batch 16 --prompt_len 256
  --new_tokens 64 --repeats 2 --compare_hf)
run decode_bloom_560m 120 "${DECODE[@]}" --preset bloom-560m
run decode_bloomz_1b1 120 "${DECODE[@]}" --preset bloomz-1b1
# (${A[@]+"${A[@]}"}: an empty array under `set -u` on bash before 4.4.)
run train_bloomz_1b1_answers 150 "${TRAIN[@]}" --preset bloomz-1b1 --attention_impl cudnn \
  ${REMAT_1B1[@]+"${REMAT_1B1[@]}"} --answer_fraction 0.1
((XLA_560M_DONE)) ||
  run train_bloom_560m_xla 120 "${TRAIN_OURS[@]}" --preset bloom-560m --attention_impl xla
run profile_bloom_560m 120 "${TRAIN_OURS[@]}" --preset bloom-560m --attention_impl cudnn \
  --steps 2 --rounds 1 --profile "$LOG_DIR/trace" --profile_top 40 --no_record
run train_bloom_560m_bf16_logits 120 "${TRAIN_OURS[@]}" --preset bloom-560m \
  --attention_impl cudnn --logits_dtype bfloat16

if [[ -n "$OUT_DIR" ]]; then
  mkdir -p "$OUT_DIR"
  cp "$LOG_DIR"/*.log "$RESULTS" "$OUT_DIR"/ 2>/dev/null
  cp benchmarks/RESULTS.md "$OUT_DIR"/RESULTS.md 2>/dev/null
fi

echo
echo "=== summary ($(($(date +%s) - START))s; logs in $LOG_DIR)"
"$PYTHON" - "$RESULTS" <<'EOF'
import json, sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
# mem GiB: the benchmarks' peak_memory_gb, in GiB (2**30 bytes).
head = f"{'check':22} {'what':24} {'ours':>10} {'hf':>10} {'x hf':>6} {'mfu':>6} {'mem GiB':>7}"
print(head)
print("-" * len(head))


def fmt(x):
    if x is None:
        return "-"
    return f"{x:,.0f}" if isinstance(x, float) and x >= 100 else f"{x:.3g}"


for r in rows:
    hf = r.get("hf") if isinstance(r.get("hf"), dict) else {}
    note = ""
    if r.get("bench") == "train_step":
        answers = r.get("answer_fraction", 1.0)
        shape = f"b{r['batch']}x{r['seq']}" + (f"a{answers:g}" if answers != 1.0 else "")
        what = f"{r['preset']} {shape} tok/s"
        ours, theirs = r.get("tokens_per_s"), hf.get("tokens_per_s")
        ratio, mfu, mem = r.get("speedup_vs_hf"), r.get("mfu"), r.get("peak_memory_gb")
    else:  # decode: transformers runs at its own batch (hf.batch), ours at `batch`
        what = f"{r.get('preset')} {r.get('method')} b{r.get('batch')} seq/s"
        ours, theirs = r.get("sequences_per_s"), hf.get("sequences_per_s")
        ratio, mfu, mem = r.get("speedup_vs_hf"), None, r.get("peak_memory_gb")
        if theirs is not None:
            same = fmt(r.get("speedup_vs_hf_same_batch"))
            b = hf.get("batch")
            note = f"  (hf at b{b}; x hf with ours at b{b}: {same})"
    err = r.get("error") or hf.get("error")
    print(f"{r['check']:22} {what:24} {fmt(ours):>10} {fmt(theirs):>10} {fmt(ratio):>6} "
          f"{fmt(mfu):>6} {fmt(mem):>7}" + note + (f"  ERROR {err}" if err else ""))
if not rows:
    print("(no results)")
EOF
echo "cuDNN attention tests: $ATTENTION"
