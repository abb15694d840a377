"""The GPU check inside one time budget: steps in order of value, each with a share of what is left.

Run by ``scripts/gpu_check.sh`` (``make gpu-check``) on the lent GPU machine, which gives one command
600 s and a session about 15 minutes in all; everything must come back from one call. Only the
standard library is imported here: this file also installs what the steps need.

The order is the value of a step's figure to the README, most valuable first (``STEPS``). Before a
step starts, ``share`` gives it a wall-clock limit out of the time that is left; a step that ends
early leaves its rest to the ones after it, and a step that did not get its turn is listed as
``not run``. ``summary.txt`` is rewritten after every step and ends with the figures in one table,
in the rows of the README's performance table, so a cut-off call still leaves what it measured.

    python scripts/gpu_check.py --plan                       # the steps and their needs, runs nothing
    python scripts/gpu_check.py --budget 540                 # the GPU check (default device cuda)
    python scripts/gpu_check.py --budget 60 --device cpu     # the same machinery on CPU, tiny sizes
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: seconds kept back at the end for the last summary and copying the bench outputs
RESERVE = 8
#: seconds a step gets between SIGTERM and SIGKILL, out of its own share
GRACE = 5
#: a step gets no turn with fewer seconds than this left (a start of Python and torch alone takes ~5 s)
MIN_STEP = 10
#: exit status of a step that stopped itself at the end of its share (as GNU timeout's)
TIMED_OUT = 124
#: COCO val2017's images, the end-to-end projection's target; CutLER's scipy MaskCut takes about 19 h there
COCO_VAL_IMAGES = 5000


@dataclass(frozen=True)
class Step:
    """One step of the check. ``need`` is the expected seconds per device at the step's quick size
    (on an H100 for ``cuda``: an estimate until a lent GPU measured it; on 2 CPU cores for ``cpu``);
    no ``cpu`` need means the step needs CUDA and is reported as skipped with ``--device cpu``."""

    name: str
    row: str  # the README performance-table row (or new row) its figure belongs to
    need: dict[str, int]
    after: str | None = None  # runs only when this step passed (the warm bench reads the cold one's cache)


STEPS: tuple[Step, ...] = (
    Step("install", "-", {"cuda": 30, "cpu": 15}),
    Step("import-check", "-", {"cuda": 15, "cpu": 15}),
    Step("e2e", "end to end: ViT-B/8 480 px x ncut, COCO val2017 projection", {"cuda": 140, "cpu": 40}),
    Step("bench_backbone", "`benchmarks/bench_backbone.py`", {"cuda": 35, "cpu": 20}),
    Step("bench_ncut", "`benchmarks/bench_ncut.py`", {"cuda": 80, "cpu": 20}),
    Step("bench_student", "`benchmarks/bench_student.py`", {"cuda": 50, "cpu": 25}),
    Step("pytest-gpu", "`pytest -m gpu`", {"cuda": 70}),
    Step("bench-cuda-cold", "`make bench` (`platform bench --all`, small, CUDA)", {"cuda": 60}),
    Step(
        "bench-cuda-warm", "`make bench` (`platform bench --all`, small, CUDA)", {"cuda": 15}, after="bench-cuda-cold"
    ),
    Step("bench_maskers", "`benchmarks/bench_maskers.py`", {"cuda": 30, "cpu": 25}),
    Step("bench_feature_storage", "`benchmarks/bench_feature_storage.py`", {"cuda": 25, "cpu": 25}),
)

#: the order of the figures table: the README's performance-table rows, then the rows the README lacks
TABLE_ROWS = (
    "`benchmarks/bench_backbone.py`",
    "`benchmarks/bench_ncut.py`",
    "`benchmarks/bench_student.py`",
    "`benchmarks/bench_maskers.py`",
    "`benchmarks/bench_feature_storage.py`",
    "`make bench` (`platform bench --all`, small, CUDA)",
    "end to end: ViT-B/8 480 px x ncut, COCO val2017 projection",
    "`pytest -m gpu`",
)


# -- the budget arithmetic ----------------------------------------------------------------------


def share(remaining: float, needs: list[int]) -> int:
    """Seconds for the first of ``needs`` (the needs of the steps still to run, in order).

    A step is given its need plus ``GRACE`` (its cost), or its part of ``remaining`` in proportion to
    the costs of all steps still to run when that is more (spare time is spread over them); never
    more than ``remaining``. So the earlier, more valuable steps get what they need and an overrun
    comes out of the later ones. 0 (not run) when fewer than ``MIN_STEP`` seconds are left or the
    step costs more than twice what is left (it would only time out): the time goes to cheaper
    steps after it.
    """
    remaining = int(remaining)
    costs = [n + GRACE for n in needs]
    if remaining < MIN_STEP or not costs or costs[0] > 2 * remaining:
        return 0
    return min(remaining, max(costs[0], remaining * costs[0] // sum(costs)))


def applicable(step: Step, device: str) -> bool:
    return "cpu" in step.need or device != "cpu"


def plan(budget: int, device: str, seconds: dict[str, float] | None = None) -> list[dict]:
    """The run ``budget`` would give when each step takes ``seconds[name]`` (default: its need,
    capped by its share: a step that overruns is stopped at its share). What ``--plan`` prints and
    what the test checks; ``run`` applies the same ``share`` to the real clock."""
    dev = "cpu" if device == "cpu" else "cuda"
    steps = [s for s in STEPS if applicable(s, device)]
    left = budget - RESERVE
    passed: set[str] = set()
    rows = []
    for i, step in enumerate(steps):
        if step.after and step.after not in passed:
            rows.append({"name": step.name, "share": 0, "used": 0, "status": "not run"})
            continue
        ahead = [s.need[dev] for s in steps[i:]]
        limit = share(left, ahead)
        if limit == 0:
            rows.append({"name": step.name, "share": 0, "used": 0, "status": "not run"})
            continue
        took = (seconds or {}).get(step.name, step.need[dev])
        used = min(took, limit)
        status = "ok" if took <= limit - GRACE else "timeout"
        if status == "ok":
            passed.add(step.name)
        left -= used
        rows.append({"name": step.name, "share": limit, "used": used, "status": status})
    return rows


# -- what each step runs --------------------------------------------------------------------------


@dataclass
class Context:
    budget: int
    device: str  # cuda or cpu
    python: str
    out: Path
    work: Path
    start: float = field(default_factory=time.monotonic)
    env: dict[str, str] = field(default_factory=dict)
    results: dict[str, dict] = field(default_factory=dict)
    device_name: str = ""

    @property
    def dev(self) -> str:
        return "cpu" if self.device == "cpu" else "cuda"

    def remaining(self) -> float:
        return self.budget - RESERVE - (time.monotonic() - self.start)


#: the benchmarks' quick sizes: on CUDA a few tens of seconds each on one H100 (estimates until a lent
#: GPU timed them), on CPU a few seconds each; the full-size runs are in each benchmark's docstring
QUICK: dict[str, dict[str, list[str]]] = {
    "bench_backbone": {
        "cuda": [
            "--model",
            "vit_small_patch16_224",
            "--size",
            "480",
            "--batch",
            "32",
            "--batches",
            "6",
            "--repeats",
            "3",
        ],
        "cpu": ["--batch", "4", "--batches", "1", "--repeats", "1"],
    },
    "bench_ncut": {
        "cuda": ["--images", "16", "--scipy-images", "1", "--repeats", "2"],
        "cpu": ["--sizes", "900", "--images", "2", "--scipy-images", "1", "--repeats", "1"],
    },
    "bench_student": {
        "cuda": ["--iterations", "30", "--images", "32"],
        "cpu": ["--iterations", "2", "--images", "4"],
    },
    "bench_maskers": {
        "cuda": ["--images", "8"],
        "cpu": ["--sizes", "900", "--images", "2", "--maskers", "ncut,kmeans"],
    },
    "bench_feature_storage": {
        "cuda": [
            "--models",
            "vit_small_patch16_224",
            "--images",
            "astronaut,chelsea,coffee,coins",
            "--facets",
            "key",
            "--storage",
            "float32,float16,bfloat16,bf16-autocast",
        ],
        "cpu": [
            "--models",
            "vit_small_patch16_224",
            "--images",
            "astronaut",
            "--facets",
            "key",
            "--n-masks",
            "3",
            "--storage",
            "float32,float16",
        ],
    },
}
#: the end-to-end run's first pass (its per-image time sizes the second pass to the step's share)
E2E_FIRST = {"cuda": 16, "cpu": 1}
#: synth-instances-large's val images, the most the end-to-end run can use
E2E_MAX = 1000


def e2e_bench_argv(python: str, device: str, limit: int, workdir: Path) -> list[str]:
    return [
        python,
        "-m",
        "uisbench",
        "bench",
        "--registry",
        "scripts/gpu_large.yaml",
        "--backbones",
        "vitb8-random-480",
        "--maskers",
        "ncut",
        "--students",
        "none",
        "--finetune",
        "none",
        "--dataset",
        "synth-instances-large",
        "--device",
        device,
        "--limit",
        str(limit),
        "--workdir",
        str(workdir),
        "--format",
        "markdown",
        "--no-report",
    ]


def command(name: str, ctx: Context, limit: int) -> list[str] | str:
    """The argv of a step, or the reason it is skipped."""
    py, dev = ctx.python, ctx.dev
    if name == "import-check":
        code = (
            "import sys, torch, pycocotools.mask, uisbench; "
            "print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda, "
            "'available', torch.cuda.is_available()); "
            "print('gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None); "
            "print('uisbench', uisbench.__version__)"
        )
        if dev == "cuda":
            code += "; assert torch.cuda.is_available(), 'no CUDA: run with --device cpu'"
        return [py, "-c", code]
    if name == "e2e":
        return [
            py,
            str(ROOT / "scripts" / "gpu_check.py"),
            "e2e",
            "--device",
            dev,
            "--python",
            py,
            "--seconds",
            str(max(1, limit - GRACE - 2)),
            "--workdir",
            str(ctx.work / "e2e"),
            "--out",
            str(ctx.out),
        ]
    if name == "pytest-gpu":
        return [
            py,
            "-m",
            "pytest",
            "-m",
            "gpu",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={ctx.out / 'pytest-gpu.xml'}",
        ]
    if name.startswith("bench-cuda-"):
        limit_images = os.environ.get("BENCH_LIMIT", "8")
        return [
            py,
            "-m",
            "uisbench",
            "bench",
            "--all",
            "--device",
            "cuda",
            "--limit",
            limit_images,
            "--workdir",
            str(ctx.work / "bench-cuda"),
            "--format",
            "markdown",
        ]
    if name in QUICK:
        if name == "bench_feature_storage" and not has_module(ctx, "skimage"):
            return "skipped (no scikit-image here: it reads skimage's sample photographs)"
        argv = [py, str(ROOT / "benchmarks" / f"{name}.py"), "--device", dev, *QUICK[name][dev]]
        if name == "bench_backbone":
            argv += ["--json", str(ctx.out / "bench_backbone.json")]
        return argv
    raise ValueError(f"gpu_check: no command for step {name!r}")


def has_module(ctx: Context, module: str) -> bool:
    """Whether ``ctx.python`` finds ``module`` (found, not imported: no torch start-up paid)."""
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([ctx.python, "-c", code], env=ctx.env, cwd=ROOT, capture_output=True).returncode == 0


#: the process group of the step running now (stopped with the check when the check is stopped)
_CURRENT: list[int] = []


def run_process(argv: list[str], log: Path, seconds: float, env: dict[str, str]) -> tuple[int, bool]:
    """Run ``argv`` in its own process group, output appended to ``log``; stop the group (its data-loader
    workers included) after ``seconds``: SIGTERM, then SIGKILL ``GRACE`` s later. (rc, timed out)."""
    with open(log, "a") as handle:
        handle.write("==> " + " ".join(argv) + "\n")
        handle.flush()
        proc = subprocess.Popen(
            argv, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True
        )
        _CURRENT[:] = [proc.pid]
        timed_out = False
        try:
            proc.wait(timeout=max(1.0, seconds))
        except subprocess.TimeoutExpired:
            timed_out = True
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=GRACE)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        _signal_group(proc.pid, signal.SIGKILL)  # what the step left behind (stray workers) goes with it
        return proc.returncode, timed_out


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def install(ctx: Context, limit: int, log: Path) -> int:
    """pycocotools from a carried wheel and this checkout, each only when missing; nothing that needs
    the internet (``PIP_NO_INDEX``), so a fresh offline machine spends seconds here, not the budget."""
    deadline = time.monotonic() + limit - GRACE
    site = ctx.work / "site"
    rc = 0
    with open(log, "a") as handle:
        handle.write(f"PYTHONPATH={ctx.env.get('PYTHONPATH', '')}\n")
    if has_module(ctx, "pycocotools"):
        _note(log, "pycocotools: already importable")
    else:
        wheels = next((w for w in (sorted(glob.glob(str(d / "*.whl"))) for d in WHEEL_DIRS) if w), [])
        if not wheels:
            _note(
                log,
                "pycocotools is missing and no wheel was carried: copy /work/shared/wheels/pycocotools-*.whl "
                "into .whl/ (ignored by git) and carry .whl with the command",
            )
            rc = 1
        else:
            rc, _ = run_process(
                [ctx.python, "-m", "pip", "install", "--no-index", "--no-deps", "--target", str(site), *wheels],
                log,
                deadline - time.monotonic(),
                ctx.env,
            )
    if installed_here(ctx):
        _note(log, f"uisbench: already installed from {ROOT} with its entry points")
        return rc
    pip_rc, _ = run_process(
        [ctx.python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", str(ROOT)],
        log,
        deadline - time.monotonic(),
        ctx.env,
    )
    if pip_rc != 0 or not installed_here(ctx):
        # without the editable install the built-in plugins are not registered; a dist-info folder
        # on PYTHONPATH registers them from the source roots, no build backend needed
        _note(log, f"pip install -e failed (rc={pip_rc}): registering the entry points from {site} instead")
        register_from_source(site)
        paths = [str(ROOT / "platform"), str(ROOT / "plugins")]
        ctx.env["PYTHONPATH"] = os.pathsep.join([*paths, ctx.env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        if not installed_here(ctx):
            return 1
    return rc


#: where a pycocotools wheel may have been carried, first found wins
WHEEL_DIRS = (ROOT / ".whl", ROOT / "shared" / "wheels", ROOT.parent / "shared" / "wheels")


def installed_here(ctx: Context) -> bool:
    """``uisbench`` resolves to this checkout and every entry point of its pyproject.toml is registered
    (an older install of the same checkout may lack a plugin added since)."""
    code = (
        "import importlib.util, importlib.metadata as m; s = importlib.util.find_spec('uisbench'); "
        "print(s.origin if s else ''); print(','.join(e.name for e in m.entry_points(group='uisbench')))"
    )
    done = subprocess.run([ctx.python, "-c", code], env=ctx.env, cwd=ROOT, capture_output=True, text=True)
    lines = done.stdout.splitlines() + ["", ""]
    _, entries = pyproject_entry_points()
    return lines[0].startswith(str(ROOT / "platform")) and set(entries) <= set(lines[1].split(","))


def pyproject_entry_points() -> tuple[str, dict[str, str]]:
    """(version, {name: module}) of pyproject.toml's ``uisbench`` entry points (no tomllib: Python 3.10)."""
    text = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M).group(1)
    section = re.search(r"^\[project\.entry-points\.uisbench\]\n(.*?)(?:^\[|\Z)", text, re.M | re.S).group(1)
    pairs = re.findall(r'^\s*([\w.-]+)\s*=\s*"([^"]+)"', section, re.M)
    return version, dict(pairs)


def register_from_source(site: Path) -> None:
    """A minimal ``uisbench-<version>.dist-info`` in ``site`` with pyproject's entry points."""
    version, entries = pyproject_entry_points()
    info = site / f"uisbench-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: uisbench\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[uisbench]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))


def _note(log: Path, text: str) -> None:
    with open(log, "a") as handle:
        handle.write(text + "\n")


# -- the figures --------------------------------------------------------------------------------


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def figure(name: str, out: Path) -> str | None:
    """The step's figure for the README, read from what it wrote under ``out``; None when none was found."""
    log = _read(out / f"{name}.log")
    if name == "e2e":
        try:
            e = json.loads(_read(out / "e2e.json"))
        except ValueError:
            return None
        stages = ", ".join(f"{s} {t['images_per_s']} img/s" for s, t in e["stages"].items())
        peak = max((t.get("peak_gpu_mb") or 0 for t in e["stages"].values()), default=0)
        return (
            f"{stages} ({e['images']} images{f', peak GPU {peak:.0f} MB' if peak else ''}); "
            f"COCO val2017 ({COCO_VAL_IMAGES} images): {e['projection_min']:.1f} min (CutLER's scipy MaskCut: ~19 h)"
        )
    if name == "bench_backbone":
        try:
            b = json.loads(_read(out / "bench_backbone.json"))
        except ValueError:
            return None
        return (
            f"data path {b['ratio_data_path']:.2f}×, extract {b['ratio_extract']:.2f}× of bare timm "
            f"({b['model']} at {b['size']} px, batch {b['batch']}; bare {b['median']['bare']:.0f} img/s)"
        )
    if name == "bench_ncut":
        rows = re.findall(r"^\s*(\d+)\s+(\d+)\s+[\d.]+\s+[\d.]+\s+([\d.]+)x\s+[\d.]+/([\d.]+)", log, re.M)
        if not rows:
            return None
        ratios = ", ".join(f"{r}× at {t} tokens" for t, _, r, _ in rows)
        return f"{ratios}, parity IoU min {min(float(m) for *_, m in rows):.3f} (scipy on 2 CPU threads)"
    if name == "bench_student":
        ratio = re.search(r"ratio ours/bare = ([\d.]+)", log)
        setup = re.search(r"(\w+-fpn, \d+ px, \d+ images, batch \d+, \d+ iterations)", log)
        if not ratio:
            return None
        return f"{ratio.group(1)}× of bare torchvision" + (f" ({setup.group(1)})" if setup else "")
    if name == "pytest-gpu":
        line = re.findall(r"^=*\s*((?:\d+ \w+(?:, )?)+) in [\d.]+s", log, re.M)
        return line[-1] if line else None
    if name == "bench_maskers":
        rows = re.findall(
            r"^\|\s*(\d+)\s*\|\s*([\w-]+)\s*\|\s*\d+\s*\|\s*[\d.]+\s*\|\s*([\d.]+)\s*\|\s*[\d.]+\s*\|\s*([\d.]+)",
            log,
            re.M,
        )
        if not rows:
            return None
        return "masks/s (AP50): " + ", ".join(f"{m} {rate} ({ap}) at {t}" for t, m, rate, ap in rows)
    if name == "bench_feature_storage":
        rec = re.search(r"^Recommendation \([^)]*\): (.*)$", log, re.M)
        return rec.group(1) if rec else None
    if name.startswith("bench-cuda-"):
        return None  # the row is written from both steps' seconds (``table``)
    return None


def describe(result: dict) -> str:
    status = result["status"]
    if status == "not run":
        return f"not run ({result['note']})"
    if status == "skipped":
        return result["note"]
    if status == "timeout":
        return f"timed out at {result['seconds']} s (see {result['name']}.log)"
    if status == "failed":
        return f"failed, rc={result['rc']} (see {result['name']}.log)"
    return ""


def table(ctx: Context) -> list[str]:
    """The figures, one row per README performance-table row; steps that did not run say so."""
    by_row: dict[str, list[dict]] = {}
    for step in STEPS:
        res = ctx.results.get(step.name) or {
            "name": step.name,
            "status": "not run",
            "note": "the call ended before its turn",
        }
        by_row.setdefault(step.row, []).append(res)
    lines = [f"| row | {ctx.dev.upper() if ctx.dev == 'cpu' else 'GPU'}: {ctx.device_name or ctx.dev} |", "|---|---|"]
    for row in TABLE_ROWS:
        parts = []
        for res in by_row.get(row, []):
            if res["status"] == "ok":
                if res["name"].startswith("bench-cuda-"):
                    parts.append(f"{res['name'].rsplit('-', 1)[1]} {res['seconds']} s")
                else:
                    parts.append(figure(res["name"], ctx.out) or f"ran; no figure found in {res['name']}.log")
            else:
                parts.append(f"{res['name']}: {describe(res)}" if row.startswith("`make") else describe(res))
        if row.startswith("`make"):
            parts = [f"--limit {os.environ.get('BENCH_LIMIT', '8')}: " + ", ".join(parts)]
        lines.append(f"| {row} | {'; '.join(parts)} |")
    return lines


def write_summary(ctx: Context, final: bool = False) -> str:
    """summary.txt: the steps so far, then the figures table; written whole and renamed into place, so
    a call cut off mid-step still leaves a readable file."""
    head = [
        f"uisbench GPU check: budget {ctx.budget} s, device {ctx.dev} ({ctx.device_name or 'unknown'}), "
        f"{time.monotonic() - ctx.start:.0f} s used" + ("" if final else " so far"),
        f"{'step':<22} {'status':<8} {'rc':>4} {'seconds':>8} {'share':>6}  note",
    ]
    for step in STEPS:
        r = ctx.results.get(step.name)
        if r is None:
            head.append(f"{step.name:<22} {'pending' if not final else 'not run':<8}")
            continue
        head.append(
            f"{step.name:<22} {r['status']:<8} {r.get('rc', ''):>4} {r.get('seconds', ''):>8} {r.get('share', ''):>6}  {r.get('note', '')}"
        )
    text = "\n".join([*head, "", *table(ctx)]) + "\n"
    tmp = ctx.out / "summary.txt.tmp"
    tmp.write_text(text)
    os.replace(tmp, ctx.out / "summary.txt")
    return text


# -- the run ------------------------------------------------------------------------------------


def machine_name(ctx: Context) -> str:
    if ctx.dev == "cuda":
        found = re.search(r"^gpu (.+)$", _read(ctx.out / "import-check.log"), re.M)
        return found.group(1) if found and found.group(1) != "None" else ""
    cpu = re.search(r"^model name\s*:\s*(.+)$", _read(Path("/proc/cpuinfo")), re.M)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu.group(1).strip() if cpu else 'cpu'}, {cores} cores"


def run(ctx: Context) -> int:
    """Every step in order, each with its share of what is left; summary.txt after each. Exit status 1
    when a step failed or timed out, else 0 (steps not run are listed, not failures)."""
    ctx.device_name = machine_name(ctx)
    for i, step in enumerate(STEPS):
        log = ctx.out / f"{step.name}.log"
        result = {"name": step.name}
        need = step.need.get(ctx.dev)
        if not applicable(step, ctx.device):
            result.update(status="skipped", note="skipped (needs CUDA; --device cpu)")
        elif step.after and ctx.results.get(step.after, {}).get("status") != "ok":
            result.update(status="not run", note=f"{step.after} did not pass")
        else:
            left = ctx.remaining()
            limit = share(left, [s.need[ctx.dev] for s in STEPS[i:] if applicable(s, ctx.device)])
            if limit == 0:
                result.update(status="not run", note=f"needs ~{need} s, {max(0, left):.0f} s of the budget left")
            else:
                result["share"] = limit
                t0 = time.monotonic()
                argv = None if step.name == "install" else command(step.name, ctx, limit)
                if isinstance(argv, str):
                    result.update(status="skipped", note=argv)
                else:
                    if argv is None:
                        rc, timed_out = install(ctx, limit, log), False
                    else:
                        rc, timed_out = run_process(argv, log, limit - GRACE, ctx.env)
                    status = "timeout" if timed_out or rc == TIMED_OUT else ("ok" if rc == 0 else "failed")
                    result.update(status=status, rc=rc, seconds=round(time.monotonic() - t0))
        ctx.results[step.name] = result
        if step.name == "import-check" and "rc" in result:
            ctx.device_name = machine_name(ctx) or ctx.device_name
            write_env(ctx, log)
        print(
            f"{step.name:<22} {result['status']:<8} {result.get('seconds', '-'):>4} s of {result.get('share', '-')}"
            f"  {result.get('note', '')}",
            flush=True,
        )
        write_summary(ctx)
    keep_bench_outputs(ctx)
    text = write_summary(ctx, final=True)
    print("\n" + text.split("\n\n", 1)[1], end="")
    bad = [r["name"] for r in ctx.results.values() if r["status"] in ("failed", "timeout")]
    print(f"{'FAILED: ' + ', '.join(bad) if bad else 'no step failed'}; outputs in {ctx.out}")
    return 1 if bad else 0


def write_env(ctx: Context, import_log: Path) -> None:
    """env.txt: the commit, the versions the import check printed, and nvidia-smi on CUDA."""
    lines = [f"date: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"]
    # the device machine gets a copy of the working tree, maybe without git or .git
    for label, argv in [("git", ["git", "rev-parse", "HEAD"])] + (
        [("nvidia-smi", ["nvidia-smi"])] if ctx.dev == "cuda" else []
    ):
        try:
            done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=10)
            lines.append(f"{label}: {(done.stdout + done.stderr).strip() or 'n/a'}")
        except (OSError, subprocess.TimeoutExpired) as err:
            lines.append(f"{label}: n/a ({err})")
    lines.append(_read(import_log))
    (ctx.out / "env.txt").write_text("\n".join(lines) + "\n")


def keep_bench_outputs(ctx: Context) -> None:
    src, dst = ctx.work / "bench-cuda", ctx.out / "bench-cuda"
    for name in ("results.json", "leaderboard.md", "leaderboard.csv", "report.html"):
        if (src / name).is_file():
            dst.mkdir(exist_ok=True)
            shutil.copyfile(src / name, dst / name)
    if (src / "logs").is_dir():
        shutil.copytree(src / "logs", dst / "logs", dirs_exist_ok=True)


def e2e_figures(results_json: Path) -> dict | None:
    """Per-stage timings of the end-to-end run and their projection to COCO val2017."""
    try:
        timings = json.loads(results_json.read_text())["cells"][0]["timings"]
    except (OSError, ValueError, KeyError, IndexError):
        return None
    stages = {s: timings[s] for s in ("features", "pseudo-masks") if timings.get(s) and timings[s].get("images")}
    if len(stages) < 2:
        return None
    per_image = sum(t["seconds"] / t["images"] for t in stages.values())
    return {
        "stages": stages,
        "images": min(t["images"] for t in stages.values()),
        "seconds": sum(t["seconds"] for t in stages.values()),
        "per_image_s": per_image,
        "projection_min": COCO_VAL_IMAGES * per_image / 60,
    }


def e2e(argv: list[str]) -> int:
    """The end-to-end step: a first pass of a few images, whose time per image sizes a second pass to
    what is left of the step's share (up to synth-instances-large's 1000 val images); the figure is
    the largest pass that finished, so the step has a figure even when its share was small."""
    ap = argparse.ArgumentParser(prog="gpu_check.py e2e")
    ap.add_argument("--device", required=True)
    ap.add_argument("--python", required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    deadline = time.monotonic() + args.seconds
    n, best = E2E_FIRST[args.device], None
    for k in (1, 2):
        workdir = args.workdir / f"pass{k}"
        print(f"== pass {k}: {n} images", flush=True)
        t0 = time.monotonic()
        try:
            rc = subprocess.run(
                e2e_bench_argv(args.python, args.device, n, workdir), cwd=ROOT, timeout=max(1.0, deadline - t0)
            ).returncode
        except subprocess.TimeoutExpired:
            print(f"pass {k} stopped at the end of the step's share", flush=True)
            break
        figs = e2e_figures(workdir / "results.json") if rc == 0 else None
        if figs is None:
            print(f"pass {k}: no timings (rc={rc})", flush=True)
            break
        best = figs
        (args.out / "bench-large").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(workdir / "results.json", args.out / "bench-large" / "results.json")
        for stage, t in figs["stages"].items():
            print(
                f"{stage}: {t['images']} images in {t['seconds']:.1f} s ({t['images_per_s']} img/s, peak GPU "
                f"{t['peak_gpu_mb']} MB); COCO val2017 ({COCO_VAL_IMAGES} images): "
                f"{COCO_VAL_IMAGES * t['seconds'] / t['images'] / 60:.1f} min",
                flush=True,
            )
        print(f"both stages: {figs['projection_min']:.1f} min for COCO val2017", flush=True)
        # the bench's start-up (imports, model, CUDA context) is paid again by the next pass
        overhead = max(0.0, time.monotonic() - t0 - figs["seconds"])
        room = deadline - time.monotonic() - overhead
        n_next = min(E2E_MAX, int(0.8 * room / figs["per_image_s"]))
        if k == 2 or n_next < 2 * n:
            if k == 1:
                print(f"no second pass: {room:.0f} s left fit {n_next} images", flush=True)
            break
        n = n_next
    if best is None:
        return TIMED_OUT if time.monotonic() >= deadline else 1
    (args.out / "e2e.json").write_text(json.dumps(best, indent=1) + "\n")
    return 0


def _stop(signum, _frame) -> None:
    """Killed from outside (the machine's own limit): take the running step's process group along;
    summary.txt already holds every finished step."""
    for pgid in _CURRENT:
        _signal_group(pgid, signal.SIGKILL)
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["e2e"]:
        return e2e(argv[1:])
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 3)[-1],
    )
    ap.add_argument(
        "--budget", type=int, default=540, help="seconds for the whole check, installs included (default 540)"
    )
    ap.add_argument(
        "--device", default="cuda", choices=("cuda", "cpu"), help="cuda (default) or cpu (CUDA-only steps skipped)"
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("OUT") or ROOT / "gpu-check-out"),
        help="where logs, summary.txt and results go (default $OUT, else ./gpu-check-out)",
    )
    ap.add_argument(
        "--python", default=os.environ.get("PYTHON") or sys.executable, help="the Python that runs the steps"
    )
    ap.add_argument(
        "--plan", action="store_true", help="print each step's share if every step took its need; run nothing"
    )
    args = ap.parse_args(argv)
    if args.budget < MIN_STEP + RESERVE:
        ap.error(f"--budget {args.budget}: at least {MIN_STEP + RESERVE} s are needed for one step")
    if args.plan:
        dev = "cpu" if args.device == "cpu" else "cuda"
        print(f"budget {args.budget} s on {args.device} ({RESERVE} s kept for the end), if each step takes its need:")
        for row in plan(args.budget, args.device):
            step = next(s for s in STEPS if s.name == row["name"])
            print(f"{row['name']:<22} need {step.need.get(dev, '-'):>4} s  share {row['share']:>4} s  {row['status']}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    # outputs of an earlier call would pass for this one's (a log is appended to, a figure read back)
    for old in [
        *args.out.glob("*.log"),
        *(args.out / n for n in ("e2e.json", "bench_backbone.json", "pytest-gpu.xml")),
    ]:
        old.unlink(missing_ok=True)
    for old in ("bench-cuda", "bench-large"):
        shutil.rmtree(args.out / old, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix="uisbench-gpu-check."))
    env = dict(
        os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1"
    )
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(work / "site"), os.environ.get("PYTHONPATH", "")) if p)
    ctx = Context(budget=args.budget, device=args.device, python=args.python, out=args.out, work=work, env=env)
    signal.signal(signal.SIGTERM, _stop)
    try:
        return run(ctx)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
