#!/usr/bin/env python3
"""kill -9 in every stage, then resume: the results must equal an uninterrupted run's.

    .venv/bin/python scripts/kill_matrix.py [--out /tmp/kill-matrix]

For each stage (features, pseudo-masks, student, finetune, metrics) a bench run on a tiny synthetic
set is started in a subprocess and killed with SIGKILL as soon as that stage's first cache file
appears; then the same command runs to the end. The table printed compares its numbers with a run
that was never interrupted (scripts/compare_results.py), and checks that no temporary file and no
partial entry was left behind. A few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_results import compare  # noqa: E402

REGISTRY = """\
version: 1
datasets:
  kill-synth: {plugin: synth-instances, train_images: 8, val_images: 6, size: 64}
backbones:
  kill-pixels: {plugin: pixels, size: 64, patch_size: 8}
students:
  kill-student: {plugin: maskrcnn, iterations: 12, batch_size: 2, warmup_iters: 2, checkpoint_every: 2, fpn_channels: 32,
                 representation_size: 64, mask_head_channels: 32, rpn_post_nms_top_n_train: 100,
                 box_batch_size_per_image: 32, predict_batch_size: 4, copy_paste: false}
finetune:
  kill-few: {budgets: [0, 4], seeds: 1, student: {iterations: 4, checkpoint_every: 1}}
bench:
  backbones: [kill-pixels]
  maskers: [ncut]
  students: [kill-student]
  metrics: [coco, instance-awareness]
  dataset: kill-synth
  finetune: kill-few
  bootstrap: 20
"""

#: stage -> the cache files whose appearance means the stage is under way
MARKERS = {
    "features": "cache/features/*/*.pt",
    "pseudo-masks": "cache/pseudo-masks/*/*.json",
    "student": "cache/student/*/maskrcnn-checkpoint.pt",
    "finetune": "cache/finetune/*/maskrcnn-checkpoint.pt",
    "metrics": "cache/metrics/*.json",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/kill-matrix"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    registry = args.out / "registry.yaml"
    registry.write_text(REGISTRY)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "uisbench", "bench", "--registry", str(registry), "--device", "cpu", "--no-report",
            "--batch-size", "2"]

    def run(workdir: Path) -> subprocess.CompletedProcess:
        return subprocess.run([*base, "--workdir", str(workdir)], env=env, capture_output=True, text=True, timeout=1800)

    started = time.perf_counter()
    reference = run(args.out / "reference")
    if reference.returncode != 0:
        print(reference.stderr[-3000:])
        return 2
    expected = json.loads((args.out / "reference" / "results.json").read_text())
    rows = []
    for stage, pattern in MARKERS.items():
        workdir = args.out / stage
        proc = subprocess.Popen([*base, "--workdir", str(workdir)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        killed = False
        while proc.poll() is None:
            if list(workdir.glob(pattern)):
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.02)
        proc.wait()
        leftovers = [p for p in workdir.rglob("*.tmp")]
        resumed = run(workdir)
        got = json.loads((workdir / "results.json").read_text()) if resumed.returncode == 0 else None
        differences = compare(expected, got) if got else ["resume failed: " + resumed.stderr[-300:]]
        computed = (got or {}).get("run", {}).get("computed", {})
        rows.append((stage, "killed" if killed else "finished before the kill", len(leftovers), resumed.returncode,
                     len(differences), computed))
    print(f"{'stage':<13} {'kill':<26} {'.tmp left':>9} {'resume rc':>9} {'differences':>11}  computed on resume")
    for stage, kill, tmp, rc, diff, computed in rows:
        print(f"{stage:<13} {kill:<26} {tmp:>9} {rc:>9} {diff:>11}  {computed}")
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0 if all(r[4] == 0 and r[3] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
