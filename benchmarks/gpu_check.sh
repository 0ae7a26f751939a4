#!/usr/bin/env bash
# One-command GPU check: train-step MFU for the bloom-560m and bloomz-1b1 shapes
# (bf16, 2048-token packed rows) and paper-setting decoding (beam 4, 164 new tokens)
# for the bloom-560m shape. Installs nothing; every benchmark runs in its own process
# with a time limit, so one failure does not stop the rest. Prints a table last.
#
#   bash benchmarks/gpu_check.sh            # about 2 minutes on one H100 (80 s measured)
#
# Rows are appended to benchmarks/RESULTS.md; with $OUT set (the device tool) the log,
# the JSON lines and RESULTS.md are copied there too.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
PY=${PYTHON:-python3}
OUTDIR=${OUT:-$(mktemp -d)}
JSONL="$OUTDIR/gpu_check.jsonl"
: > "$JSONL"

bench() {  # bench SECONDS MODULE ARGS...
  local limit=$1; shift
  echo "+ python -m $*"
  if ! timeout "$limit" "$PY" -m "$@" > "$OUTDIR/last.log" 2>&1; then
    echo "  FAILED or over ${limit}s; last lines:"; tail -n 5 "$OUTDIR/last.log"
  fi
  cat "$OUTDIR/last.log" >> "$OUTDIR/gpu_check.log"
  grep -E '^\{' "$OUTDIR/last.log" >> "$JSONL" || true
}

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
bench 110 benchmarks.train_step --preset bloomz-1b1 --batch 8 --seq 2048 --dtype bfloat16 --attention_impl cudnn --remat full \
  --steps 3 --rounds 2
bench 90 benchmarks.train_step --preset bloom-560m --batch 8 --seq 2048 --dtype bfloat16 --attention_impl cudnn \
  --steps 3 --rounds 2
bench 80 benchmarks.decode --preset bloomz-560m --batch 64 --method beam --prompt_len 512 \
  --new_tokens 164 --repeats 1
cp benchmarks/RESULTS.md "$OUTDIR/RESULTS.md" 2>/dev/null || true

"$PY" - "$JSONL" <<'PYEOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print(f"\n{'benchmark':<12} {'preset':<12} {'shape':<14} {'throughput':>22} {'MFU':>7}")
for r in rows:
    bench = r.get("bench") or r.get("benchmark")
    if bench == "train_step":
        shape, thr = f"{r['batch']}x{r['seq']}", f"{r['tokens_per_s']:,.0f} tok/s"
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
    else:
        shape = f"{r.get('method')} b{r.get('batch')}"
        thr, mfu = f"{r['sequences_per_s']:.2f} seq/s", "-"
    print(f"{bench:<12} {r['preset']:<12} {shape:<14} {thr:>22} {mfu:>7}")
PYEOF
