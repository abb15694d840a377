#!/usr/bin/env bash
# GPU check of uisbench, run on the device machine from the repository root (`make gpu-check`):
#
#   bash scripts/gpu_check.sh [--budget 540] [--device cuda|cpu] [--plan]
#
# One call does it all inside --budget seconds (default 540: the machine gives a command 600 s), steps
# in order of value, each with a share of what is left (scripts/gpu_check.py holds the order, the
# shares and the quick sizes): install, import check, the end-to-end ViT-B/8 x ncut run with its COCO
# projection, features vs bare timm, ncut vs scipy, student vs bare torchvision, pytest -m gpu, a small
# CUDA bench cold and warm, then the masker and feature-storage benchmarks if time is left.
#
# That machine has Python 3.12, torch, torchvision, timm and scipy, but no pycocotools and no internet:
# carry the wheel of /work/shared/wheels in .whl/ (ignored by git); it is installed into a private folder
# put on PYTHONPATH, and this checkout without dependencies (pip never asks an index: PIP_NO_INDEX). Each
# is skipped when already importable. Outputs go under $OUT (default ./gpu-check-out):
#   summary.txt   one line per step (status, rc, seconds, share), then the figures in one table whose
#                 rows are the README's performance-table rows; rewritten after every step
#   env.txt       versions and GPU name; <step>.log the output of each step
#   bench-cuda/   results.json, leaderboard.{md,csv}, report.html of the small CUDA bench
#   bench-large/  results.json of the end-to-end run (e2e.json: its figures and COCO projection)
# Exit status: 1 when a step failed or timed out, else 0. Knobs: PYTHON (default python3), BENCH_LIMIT
# (images of the small CUDA bench, default 8).
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHON="$PY"
exec "$PY" scripts/gpu_check.py "$@"
