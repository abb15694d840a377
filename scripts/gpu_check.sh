#!/usr/bin/env bash
# GPU check of uisbench, run on the device machine from the repository root (`make gpu-check`).
#
# That machine has Python 3.12, torch, torchvision and timm, but no pycocotools and no internet:
# the wheels carried in .whl/ are installed into a private folder put on PYTHONPATH, then this
# checkout is installed editable without dependencies. Each step runs under `timeout` and the
# script goes on when one fails, then exits 1 if any step failed or timed out (0 only when all
# passed); everything it produces goes under $OUT (default ./gpu-check-out):
#   summary.txt         one line per step: status, exit code, seconds
#   env.txt             versions, nvidia-smi
#   <step>.log          the output of each step
#   bench-cuda/         results.json, leaderboard.{md,csv}, report.html of a small CUDA bench run
# Environment knobs: PYTHON (default python3), STEP_TIMEOUT (default 420 s), BENCH_LIMIT (default 24).
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT="${OUT:-$PWD/gpu-check-out}"
STEP_TIMEOUT="${STEP_TIMEOUT:-420}"
BENCH_LIMIT="${BENCH_LIMIT:-24}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
FAILED=()
WORK="$(mktemp -d "${TMPDIR:-/tmp}/uisbench-gpu-check.XXXXXX")"
SITE="$WORK/site"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

step() {  # step NAME TIMEOUT COMMAND...
    local name="$1" limit="$2"; shift 2
    local start end rc status
    start=$(date +%s)
    echo "==> $name: $*" | tee -a "$OUT/$name.log"
    timeout --kill-after=20 "$limit" "$@" >> "$OUT/$name.log" 2>&1
    rc=$?
    end=$(date +%s)
    case $rc in
        0) status=ok ;;
        124|137) status=timeout ;;
        *) status=failed ;;
    esac
    printf '%-22s %-8s rc=%-4s %5ss\n' "$name" "$status" "$rc" "$((end - start))" | tee -a "$SUMMARY"
    [ "$status" = ok ] || FAILED+=("$name")
    return 0
}

{
    echo "date: $(date -u +%FT%TZ)"
    echo "git: $(git rev-parse HEAD 2>/dev/null || echo n/a)"
    "$PY" -c 'import sys, torch; print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available()); print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)' 2>&1
    nvidia-smi 2>&1 || true
} > "$OUT/env.txt"

if compgen -G ".whl/*.whl" > /dev/null; then
    step install-wheels 300 "$PY" -m pip install --no-index --no-deps --target "$SITE" .whl/*.whl
else
    echo "install-wheels         skipped  (no .whl/*.whl carried)" | tee -a "$SUMMARY"
fi
step install-editable 300 "$PY" -m pip install --no-deps --no-build-isolation -e .
step import-check 120 "$PY" -c 'import pycocotools.mask, uisbench, torch; assert torch.cuda.is_available(), "no CUDA"; print("ok", uisbench.__version__)'
step pytest-gpu "$STEP_TIMEOUT" "$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$OUT/pytest-gpu.xml"
for bench in bench_backbone bench_ncut bench_student bench_maskers; do
    if [ -f "benchmarks/$bench.py" ]; then
        step "$bench" "$STEP_TIMEOUT" "$PY" "benchmarks/$bench.py" --device cuda
    else
        echo "$bench skipped  (benchmarks/$bench.py not found)" | tee -a "$SUMMARY"
    fi
done
# A small bench on CUDA (calibration and baseline rows, a few images), cold then warm (all cached).
BENCH_DIR="$WORK/bench-cuda"
step bench-cuda-cold "$STEP_TIMEOUT" "$PY" -m uisbench bench --all --device cuda --limit "$BENCH_LIMIT" --workdir "$BENCH_DIR" --format markdown
step bench-cuda-warm 180 "$PY" -m uisbench bench --all --device cuda --limit "$BENCH_LIMIT" --workdir "$BENCH_DIR" --format markdown
# End to end at CutLER's scale per image: random-init ViT-B/8 at 480 px (declared pretrained: false in
# scripts/gpu_large.yaml) x ncut on synth-instances-large's val split; wall time per stage, and the
# projection to COCO val2017's 5000 images (CutLER's scipy MaskCut: about 19 hours there).
LARGE_DIR="$WORK/bench-large"
step bench-large "$STEP_TIMEOUT" "$PY" -m uisbench bench --registry scripts/gpu_large.yaml --backbones vitb8-random-480 \
    --maskers ncut --students none --finetune none --dataset synth-instances-large --device cuda \
    ${LARGE_LIMIT:+--limit "$LARGE_LIMIT"} --workdir "$LARGE_DIR" --format markdown --no-report
step bench-large-projection 60 "$PY" - "$LARGE_DIR/results.json" <<'PYEOF'
import json, sys
cell = json.load(open(sys.argv[1]))["cells"][0]
for stage, t in cell["timings"].items():
    per = t["seconds"] / max(1, t["images"])
    print(f"{stage}: {t['images']} images in {t['seconds']:.1f} s ({t['images_per_s']} img/s, peak GPU {t['peak_gpu_mb']} MB); "
          f"COCO val2017 (5000 images): {5000 * per / 60:.1f} min")
PYEOF
mkdir -p "$OUT/bench-large"
[ -f "$LARGE_DIR/results.json" ] && cp "$LARGE_DIR/results.json" "$OUT/bench-large/"
mkdir -p "$OUT/bench-cuda"
for f in results.json leaderboard.md leaderboard.csv report.html; do
    [ -f "$BENCH_DIR/$f" ] && cp "$BENCH_DIR/$f" "$OUT/bench-cuda/"
done
[ -d "$BENCH_DIR/logs" ] && cp -r "$BENCH_DIR/logs" "$OUT/bench-cuda/"
rm -rf "$WORK"
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "FAILED: ${FAILED[*]}; outputs in $OUT" | tee -a "$SUMMARY"
    exit 1
fi
echo "all steps ok; outputs in $OUT" | tee -a "$SUMMARY"
