#!/usr/bin/env bash
# The GPU benchmark in one command (fits the device tool's 10-minute limit):
#
#   bash bench/gpu_run.sh                 # install what is missing, correctness check, throughput table
#   bash bench/gpu_run.sh --install-only  # only install (when the wheels come in two carries)
#
# The GPU image has torch, transformers, peft and accelerate only. The trainer also needs datasets
# (pyarrow, pandas, dill, multiprocess, xxhash, fsspec), pydantic and pyyaml; QLoRA rows need
# bitsandbytes; Liger rows need liger-kernel. Put wheels for the GPU machine's Python in
# $WHEELS (default build/wheels/, git-ignored: carry it), e.g. here:
#   pip download --only-binary=:all: --python-version 3.X -d build/wheels datasets bitsandbytes==0.50.2 \
#       liger-kernel==0.8.5 trl==1.16.0 torch-optimi pydantic pyyaml
# They go to build/gpu-site/ (git-ignored, kept between calls on a warm machine). pyarrow (55 MB) and
# bitsandbytes (43 MB) together exceed one 64 MiB carry: carry them in two calls, the first with
# --install-only. What stays missing is reported, and the rows that need it fail alone, named.
#
# Output: $OUT/throughput.json and $OUT/throughput.md (when $OUT is set), the table on stdout.
set -u
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-build/wheels}
SITE=$PWD/build/gpu-site
ROW_TIMEOUT=${ROW_TIMEOUT:-150}
OUT=${OUT:-build/bench-out}
mkdir -p "$SITE" "$OUT"
export PYTHONPATH="$PWD/operator:$PWD/trainer:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

need() {  # module -> pip name
  case "$1" in
    yaml) echo pyyaml ;; liger_kernel) echo liger-kernel ;; optimi) echo torch-optimi ;; *) echo "$1" ;;
  esac
}
missing=()
for module in pydantic yaml pyarrow pandas datasets bitsandbytes liger_kernel trl optimi; do
  $PY -c "import $module" >/dev/null 2>&1 || missing+=("$(need "$module")")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[gpu_run] missing: ${missing[*]}; installing from $WHEELS"
  if [ -d "$WHEELS" ]; then
    timeout 180 $PY -m pip install -q --no-index --no-deps --target "$SITE" "$WHEELS"/*.whl 2>&1 | tail -3 || true
  else
    echo "[gpu_run] no wheels folder $WHEELS"
  fi
fi
[ "${1:-}" = "--install-only" ] && { echo "[gpu_run] installed into $SITE"; exit 0; }

$PY - <<'EOF'
import importlib, torch, transformers, peft
print(f"[gpu_run] {torch.cuda.get_device_name()} torch {torch.__version__} transformers {transformers.__version__} peft {peft.__version__}")
for m in ("datasets", "bitsandbytes", "liger_kernel"):
    try:
        mod = importlib.import_module(m); print(f"[gpu_run] {m} {getattr(mod, '__version__', '?')}")
    except Exception as err:
        print(f"[gpu_run] {m} NOT AVAILABLE: {err}")
EOF

# 1. Correctness on the GPU: the optimised path's loss on one packed batch vs the plain model on the
#    same documents one per row (bf16; Liger + flex as the defaults pick them).
timeout 120 $PY bench/gpu_check.py 2>&1 | grep -v Warning | tail -8

# 1b. Parity of the fast path: each objective trained by `kubetune run` with Liger + flex vs plain sdpa (bf16).
timeout 240 $PY bench/gpu_parity.py --json "$OUT/parity.json" 2>&1 | grep '^gpu_parity' | tail -8

# 2. Throughput: every row in its own process with a timeout; partial tables still print.
timeout 500 $PY bench/trainer_throughput.py --isolate --row-timeout "$ROW_TIMEOUT" \
  --work build/bench-work --json "$OUT/throughput.json" 2> "$OUT/throughput.log" | tee "$OUT/throughput.md"
status=${PIPESTATUS[0]}
[ "$status" -ne 0 ] && { echo "[gpu_run] throughput exit $status; last log lines:"; tail -5 "$OUT/throughput.log"; }

# 3. The memory plan against the peaks just measured (target: within 15 %).
[ -f "$OUT/throughput.json" ] && $PY bench/memory_plan.py --gpu "$OUT/throughput.json" | tee "$OUT/memory_plan.md"
exit 0
