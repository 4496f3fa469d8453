#!/usr/bin/env bash
# The GPU check, in one go, on a machine with an NVIDIA GPU and no network (about 5-7 minutes,
# capped at 8): installs the carried wheels and the project, generates the synthetic 25M-rating
# set, runs benchmarks/throughput.py on the GPU in fp32 and with bfloat16 tables (bf16-true), then
# one epoch of the recommended model (configs/full25m.yaml: SVD++ term, batch auto = 262,144) in
# both precisions, then the `gpu`-marked tests. Figures and logs go to $OUT (or ./gpu_results):
#
#   gpu_check.log            everything printed
#   throughput_fp32.json     benchmarks/throughput.py --json, precision 32-true
#   throughput_bf16.json     the same with bf16-true
#   full25m_fp32.json        one epoch of configs/full25m.yaml, 32-true (target: at most 3 s)
#   full25m_bf16.json        the same, bf16-true
#   summary.md               the runs side by side and each step's status
#
# Before: `bash benchmarks/fetch_gpu_wheels.sh` (here, with network) fills .whl/ with what the GPU
# image lacks (polars, jsonargparse and its signature extras); carry .whl with the working tree.
# Run from anywhere: `bash benchmarks/gpu_check.sh`. Exits non-zero if any step failed.
#
# GPU_CHECK_DRY_RUN=1 rehearses the script without a GPU: CPU instead of CUDA, 200,000 ratings,
# the project from PYTHONPATH instead of `pip install -e` (the `gpu` tests then skip themselves).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
RESULTS=${OUT:-./gpu_results}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
PY=${PYTHON:-python3}
BUDGET_S=${GPU_CHECK_BUDGET_S:-470}  # 8 minutes less a margin for the summary and transfers
DRY_RUN=${GPU_CHECK_DRY_RUN:-0}
SITE=${GPU_CHECK_SITE:-/tmp/site}  # where the carried wheels are installed
export PYTHONUNBUFFERED=1
declare -A STATUS=()
FAILED=0

say() { echo "== [$(date +%T), ${SECONDS}s] $*"; }
left() { echo $((BUDGET_S - SECONDS)); }

# Runs a named step under the time left; records ok / failed (exit status) / timed out / skipped.
step() {
    local name=$1; shift
    local remaining; remaining=$(left)
    if (( remaining < 20 )); then
        say "$name: skipped, ${remaining}s left"; STATUS[$name]="skipped (time)"; FAILED=1; return 1
    fi
    say "$name (at most ${remaining}s): $*"
    timeout --kill-after=10 "$remaining" "$@"
    local code=$?
    case $code in
        0) STATUS[$name]=ok ;;
        124|137) STATUS[$name]="timed out"; FAILED=1 ;;
        *) STATUS[$name]="failed ($code)"; FAILED=1 ;;
    esac
    say "$name: ${STATUS[$name]}"
    return $code
}

main() {
say "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if ! "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__); \
sys.exit(0 if torch.cuda.is_available() else 1)"; then
    if [[ $DRY_RUN != 1 ]]; then
        echo "FAIL: torch sees no CUDA device; this check needs an NVIDIA GPU (GPU_CHECK_DRY_RUN=1 rehearses it on CPU)."
        return 1
    fi
    say "dry run: no CUDA device, rehearsing on CPU with a small data set"
fi
local bench=(--device cuda)
[[ $DRY_RUN == 1 ]] && bench=(--device cpu --rows 200000 --steps 30 --seed_steps 10)

# Offline installs: the carried wheels into /tmp/site, the project itself without its dependencies.
if compgen -G ".whl/*.whl" >/dev/null; then
    step wheels "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
else
    say "no .whl/ here: assuming polars and jsonargparse are installed"
fi
if [[ $DRY_RUN == 1 ]]; then
    STATUS[project]="skipped (dry run)"
else
    step project "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir -e .
fi
if [[ ${STATUS[project]} != ok ]]; then
    say "falling back to PYTHONPATH=$PWD for the project"
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
step imports "$PY" -c "import polars, jsonargparse, lightning, lightning_mf.cli; \
print('polars', polars.__version__, 'jsonargparse', jsonargparse.__version__, 'lightning', lightning.__version__)" \
    || { echo "FAIL: the project cannot be imported; see above"; return 1; }

# The 25M set is made by the first benchmark run (about 20 s) and reused by the second.
step throughput_fp32 "$PY" benchmarks/throughput.py "${bench[@]}" --precision 32-true --skip surprise \
    --json "$RESULTS/throughput_fp32.json"
step throughput_bf16 "$PY" benchmarks/throughput.py "${bench[@]}" --precision bf16-true --skip surprise seed loader \
    --json "$RESULTS/throughput_bf16.json"
for precision in fp32 bf16; do
    [[ $precision == fp32 ]] && flag=32-true || flag=bf16-true
    step "full25m_$precision" "$PY" benchmarks/throughput.py "${bench[@]}" --precision "$flag" \
        --fast_config configs/full25m.yaml --skip surprise seed loader --json "$RESULTS/full25m_$precision.json"
done
step gpu_tests "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py

say "summary"
STEPS=""
for name in wheels project imports throughput_fp32 throughput_bf16 full25m_fp32 full25m_bf16 gpu_tests; do
    STEPS+="$name=${STATUS[$name]:-not run};"
done
"$PY" - "$RESULTS" "$STEPS" "$SECONDS" <<'PYTHON' | tee "$RESULTS/summary.md"
import json, sys
from pathlib import Path

results, steps, seconds = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
runs = {name: results / f"{name}.json" for name in ("throughput_fp32", "throughput_bf16", "full25m_fp32",
                                                    "full25m_bf16")}
runs = {p: json.loads(f.read_text()) for p, f in runs.items() if f.is_file()}
print(f"# GPU check ({seconds} s)\n")
for entry in filter(None, steps.split(";")):
    name, status = entry.split("=", 1)
    print(f"- {name}: {status}")
if runs:
    first = next(iter(runs.values()))
    print(f"\n{first['device']} ({first['machine']}); torch {first['torch']}, lightning {first['lightning']}; "
          f"{first['rows']:,} ratings ({first['train_rows']:,} train), batch {first['batch_size']:,}\n")
    rows = [
        ("fast path, M ratings/s", "lmf_ratings_per_s", 1e6, 2),
        ("epoch (s)", "epoch_s", 1, 2),
        ("25M-rating epoch (s)", "epoch_25m_s", 1, 2),
        ("validation (s)", "val_s", 1, 2),
        ("val RMSE after one epoch", "val_rmse", 1, 4),
        ("peak RSS of the fit (MB)", "peak_rss_mb", 1, 0),
        ("seed config, M ratings/s", "seed_config_ratings_per_s", 1e6, 4),
        ("DataModule alone, M ratings/s", "loader_ratings_per_s", 1e6, 1),
        ("fast path / seed config", "lmf_over_seed_config", 1, 0),
        ("loader / fast path", "loader_over_lmf", 1, 1),
    ]
    print("| | " + " | ".join(runs) + " |\n|---|" + "---:|" * len(runs))
    for label, key, scale, digits in rows:
        cells = ["n/a" if r.get(key) is None else f"{r[key] / scale:,.{digits}f}" for r in runs.values()]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\nepoch: " + "; ".join(f"{p}: {r['epoch_s_kind']}" for p, r in runs.items()))
PYTHON
return $FAILED
}

main 2>&1 | tee "$RESULTS/gpu_check.log"
exit "${PIPESTATUS[0]}"
