"""Hostile work directories and plugins against the bench engine: a damaged cache heals, a rerun never
loses the last good results, leftovers of a kill are swept, two benches do not share a folder, and a
plugin that breaks its contract fails its cell with a message instead of a silent number.

Each case is built on the fly with the tiny fake plugins of bench_fakes.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bench_fakes as fakes
import uisbench
from uisbench.bench import BenchOptions, load_results, run_bench


class _NotANumber(uisbench.Metric):
    higher_is_better = {"score": True}

    def update(self, sample):
        pass

    def compute(self):
        return {"score": "high"}


class _Plugin:
    @uisbench.hookimpl
    def uisbench_metrics(self):
        yield uisbench.MetricSpec(name="bad-metric", description="Returns a string.", factory=_NotANumber)


def _bench(tmp_path, workdir="w", registry=None, **options):
    host = uisbench.host.load_plugins(plugins=[("fakes", fakes), ("bad", _Plugin())], load_entry_points=False, strict=True)
    reg = uisbench.host.load_registry([fakes.write_registry(tmp_path / "registry.yaml", **(registry or {}))], host, include_default=False)
    options.setdefault("report", False)
    options.setdefault("backbones", ["pixels"])
    return run_bench(host, reg, BenchOptions(workdir=tmp_path / workdir, **options))


def _values(results):
    return {
        (c["backbone"], c["masker"], c["student"], stage, name): r["values"]
        for c in results["cells"]
        for stage in ("pseudo_masks", "student_stage")
        for name, r in ((c.get(stage) or {}).get("metrics") or {}).items()
        if name != "cost"
    }


def _computed(results):
    return results["run"]["computed"]


# ---- a cache that heals ------------------------------------------------------------------------


def test_truncated_feature_file_behind_a_summary_is_recomputed(tmp_path, capsys):
    first = _bench(tmp_path, batch_size=2)
    victim = sorted((tmp_path / "w" / "cache" / "features").glob("*/1001.pt"))[0]
    victim.write_bytes(victim.read_bytes()[:50])  # a kill mid-copy, a full disk
    again = _bench(tmp_path, batch_size=2, force=frozenset({"pseudo-masks"}))  # the features are needed again
    assert again.exit_code == 0 and _values(again) == _values(first)
    assert _computed(again)["features"] == 2  # the batch of the damaged image only
    assert f"{victim.name}" in capsys.readouterr().err  # logged, with the file


def test_feature_file_damaged_in_place_is_healed_when_read(tmp_path, capsys):
    """Same size, other bytes: the summary's size check passes, loading fails; the file is redone."""
    first = _bench(tmp_path, students=[], batch_size=2)
    victim = sorted((tmp_path / "w" / "cache" / "features").glob("*/1002.pt"))[0]
    victim.write_bytes(b"\0" * victim.stat().st_size)
    for metric in (tmp_path / "w" / "cache" / "metrics").glob("*.json"):
        metric.unlink()  # so the features are read again, by the masker's metrics
    for masks in (tmp_path / "w" / "cache" / "pseudo-masks").glob("*/*"):
        masks.unlink()
    again = _bench(tmp_path, students=[], batch_size=2)
    assert again.exit_code == 0 and _values(again) == _values(first)
    assert _computed(again)["features"] == 2  # the batch of the damaged image
    assert "damaged cache entry" in capsys.readouterr().err


def test_truncated_pseudo_mask_file_and_summary_are_recomputed(tmp_path):
    first = _bench(tmp_path)
    folder = sorted((tmp_path / "w" / "cache" / "pseudo-masks").glob("*/1003.json"))[0].parent
    (folder / "1003.json").write_text('{"image_id": 1003, "predic')
    for summary in folder.glob("summary-*.json"):
        summary.write_text(summary.read_text()[:20])
    again = _bench(tmp_path)
    assert again.exit_code == 0 and _values(again) == _values(first)
    assert _computed(again)["pseudo-masks"] >= 1 and _computed(again)["features"] == 0


def test_a_summary_of_another_stage_is_not_trusted(tmp_path):
    first = _bench(tmp_path, students=[])
    summaries = sorted((tmp_path / "w" / "cache" / "pseudo-masks").glob("*/summary-*.json"))
    data = json.loads(summaries[0].read_text())
    data["key"] = "0" * 24  # copied from elsewhere
    summaries[0].write_text(json.dumps(data))
    again = _bench(tmp_path, students=[])
    assert _values(again) == _values(first) and json.loads(summaries[0].read_text())["key"] != "0" * 24


# ---- a run never loses its last good result -----------------------------------------------------


def test_a_failing_rerun_keeps_the_previous_results(tmp_path):
    good = _bench(tmp_path)
    assert good.exit_code == 0
    registry = {"backbones": {"pixels": {"plugin": "fake-pixels", "fail": True}}}
    bad = _bench(tmp_path, registry=registry)
    assert bad.exit_code == 1
    w = tmp_path / "w"
    assert json.loads((w / "results.previous.json").read_text())["cells"] == json.loads(json.dumps(good["cells"]))
    assert json.loads((w / "results.json").read_text())["cells"][0]["status"] == "failed"


def test_temporary_files_of_a_killed_run_are_removed(tmp_path):
    _bench(tmp_path, students=[])
    leftovers = [tmp_path / "w" / ".results.json.k2j4h1a9.tmp", tmp_path / "w" / "cache" / "features" / ".12.pt.aaaabbbb.tmp"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    _bench(tmp_path, students=[])
    assert not any(p.exists() for p in leftovers)


def test_a_second_bench_on_the_same_workdir_exits_naming_the_first(tmp_path):
    from uisbench.bench._workdir import WorkdirLock

    (tmp_path / "w").mkdir()
    holder = WorkdirLock(tmp_path / "w")
    holder.acquire(["platform", "bench"])
    try:
        with pytest.raises(uisbench.ConfigError, match=rf"in use by another bench \(pid {os.getpid()} on "):
            _bench(tmp_path, students=[])
    finally:
        holder.release()
    assert _bench(tmp_path, students=[]).exit_code == 0  # released: the next one runs


# ---- clear messages instead of tracebacks --------------------------------------------------------


def test_workdir_that_is_a_file_is_a_config_error(tmp_path):
    (tmp_path / "w").write_text("not a folder")
    with pytest.raises(uisbench.ConfigError, match="is a file, not a folder"):
        _bench(tmp_path, students=[])


def test_a_metric_returning_a_non_number_fails_its_cell_naming_it(tmp_path):
    registry = {"metrics": {"bad": {"plugin": "bad-metric"}}}
    out = _bench(tmp_path, registry=registry, students=[], metrics=["coco", "bad"])
    cell = out["cells"][0]
    assert out.exit_code == 1 and cell["status"] == "failed"
    assert "metric bad" in cell["reason"] and "'score'" in cell["reason"] and "not a number" in cell["reason"]
    assert cell["pseudo_masks"]["metrics"]["coco"]["status"] == "ok"


def test_the_log_does_not_follow_a_planted_symbolic_link(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    (tmp_path / "w" / "logs").mkdir(parents=True)
    (tmp_path / "w" / "logs" / "bench.log").symlink_to(target)
    registry = {"backbones": {"pixels": {"plugin": "fake-pixels", "fail": True}}}
    assert _bench(tmp_path, registry=registry, students=[]).exit_code == 1  # writes a traceback to the log
    assert target.read_text() == "keep me\n"
    log = tmp_path / "w" / "logs" / "bench.log"
    assert not log.is_symlink() and "boom" in log.read_text()


def test_unreadable_results_file_is_a_config_error(tmp_path):
    (tmp_path / "results.json").mkdir()  # a folder where the file should be
    with pytest.raises(uisbench.ConfigError, match="cannot read it"):
        load_results(tmp_path)
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "results.json").write_text("[" * 100000)
    with pytest.raises(uisbench.ConfigError, match="not a readable results file"):
        load_results(tmp_path / "deep")


def test_weights_hash_memo_sees_a_file_replaced_with_its_old_mtime(tmp_path):
    from uisbench.bench._cache import file_sha256

    weights, memo = tmp_path / "w.pth", tmp_path / "memo.json"
    weights.write_bytes(b"first")
    before = file_sha256(weights, memo)
    stat = weights.stat()
    weights.write_bytes(b"other")  # same size
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the old modification time
    assert file_sha256(weights, memo) != before
    memo.write_text('["not", "a", "table"]')  # a damaged memo is ignored, not a crash
    assert file_sha256(weights, memo) == uisbench.io.file_sha256(weights) == hashlib.sha256(b"other").hexdigest()


def test_skipped_unreadable_images_still_get_a_report_without_them(tmp_path):
    """--skip-bad-images on a folder with a broken file: the bench goes on with the other images,
    results.json lists the file (an image refused while the dataset was built was left out of it
    silently), and report.html is written, naming the file but never trying to show it."""
    import numpy as np
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "d"):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(photos / f"{name}.png")
    (photos / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    extra = tmp_path / "mine.yaml"
    extra.write_text(f"version: 1\ndatasets:\n  mine: {{plugin: images, root: {photos}}}\n")
    host = uisbench.host.load_plugins(strict=True)
    registry = uisbench.host.load_registry([str(extra)], host)
    options = BenchOptions(workdir=tmp_path / "w", dataset="mine", backbones=["pixels"], maskers=["kmeans"], students=[],
                           metrics=["cost"], finetune="none", skip_bad_images=True, bootstrap=0, device="cpu")
    out = run_bench(host, registry, options)
    assert out.exit_code == 0 and [c["status"] for c in out["cells"]] == ["ok"]
    skipped = out["dataset"]["skipped_images"]
    assert [s["image_id"] for s in skipped] == [3] and skipped[0]["file"].endswith("c.png")
    page = (tmp_path / "w" / "report.html").read_text()
    assert "c.png" in page and page.count("data:image/png;base64,") >= 1
    shown = sorted(p.name for p in (tmp_path / "w" / "report").glob("image-*.png"))
    assert shown == ["image-1.png", "image-2.png", "image-4.png"]  # the gallery never reloads image 3


# ---- issue 25: second round ----------------------------------------------------------------------


def _cli_env(tmp_path, **registry):
    return fakes.cli_env(tmp_path, **registry)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_case8_sigterm_and_sighup_say_interrupted_like_ctrl_c(tmp_path, signum):
    """A batch scheduler's SIGTERM (a closed terminal's SIGHUP) ended the run silently; now it says what
    Ctrl-C says, exits 130, leaves no temporary file and the rerun resumes."""
    students = {"student": {"plugin": "fake-student", "epochs": 4, "sleep": 0.5}}
    env = _cli_env(tmp_path, students=students)
    cmd = [sys.executable, "-m", "uisbench", "bench", "--backbones", "pixels", "--no-report", "--workdir", str(tmp_path / "w")]
    # the signal at its default disposition in the child: under `nohup` (or a CI runner that ignores
    # SIGHUP) the bench rightly leaves an inherited SIG_IGN alone, and the test would see exit 0
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signum, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list((tmp_path / "w" / "cache" / "student").glob("*/ckpt-0.json")):
            assert proc.poll() is None, "bench ended before the student checkpointed"
            time.sleep(0.05)
        os.killpg(proc.pid, signum)  # to the whole group, as schedulers and terminals do
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted; finished work is saved, rerun the same command to resume." in err and "Traceback" not in err
    assert not list((tmp_path / "w").rglob("*.tmp")) and not (tmp_path / "w" / "results.json").exists()


def _photos_bench(tmp_path, photos, workdir):
    extra = tmp_path / "mine.yaml"
    extra.write_text(f"version: 1\ndatasets:\n  mine: {{plugin: images, root: {photos}}}\nmetrics:\n  lf: {{plugin: label-free}}\n")
    host = uisbench.host.load_plugins(strict=True)
    registry = uisbench.host.load_registry([str(extra)], host)
    options = BenchOptions(workdir=tmp_path / workdir, dataset="mine", backbones=["pixels"], maskers=["kmeans"], students=[],
                           metrics=["lf"], finetune="none", bootstrap=0, device="cpu", report=False)
    return run_bench(host, registry, options)


def test_case1_images_replaced_in_place_are_noticed(tmp_path):
    """Other pixels of the same byte size, modification times set back: the rerun took every stage
    from the cache. The content hashes (memoised on inode, size, mtime and ctime) see it."""
    import numpy as np
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):  # PPM: the byte size is fixed by the image size, whatever the pixels
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(photos / f"{name}.ppm")
    first = _photos_bench(tmp_path, photos, "w")
    assert _photos_bench(tmp_path, photos, "w")["run"]["computed"]["features"] == 0  # the memo: nothing recomputed
    victim = photos / "b.ppm"
    before = victim.stat()
    stripes = np.zeros((48, 48, 3), np.uint8)
    stripes[::8] = 255
    Image.fromarray(stripes).save(victim)
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert victim.stat().st_size == before.st_size and victim.stat().st_mtime_ns == before.st_mtime_ns
    rerun = _photos_bench(tmp_path, photos, "w")
    assert rerun["run"]["computed"]["features"] >= 1 and rerun["run"]["computed"]["pseudo-masks"] >= 1
    fresh = _photos_bench(tmp_path, photos, "fresh")
    assert _values(rerun) == _values(fresh) and _values(rerun) != _values(first)


def _limit_file_size(limit: int):
    def apply():  # in the child, before exec: what `ulimit -f` does (writes past it fail with EFBIG)
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@contextlib.contextmanager
def _small_tmpfs(where: Path):
    """A 64 KB tmpfs at ``where`` where this process may mount one (root with CAP_SYS_ADMIN), else skip."""
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here; the file size limit case stands in for a full disk")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


@pytest.mark.parametrize("how", ["ulimit-f", "tmpfs"])
def test_case6_a_full_disk_is_one_clear_message_naming_the_workdir(tmp_path, how):
    """A full disk (a 64 KB tmpfs where one can be mounted) or RLIMIT_FSIZE (`ulimit -f`): the run gave
    raw `[Errno 28] No space left on device` / `[Errno 27] File too large` tracebacks, and failed
    again while logging the failure."""
    env = _cli_env(tmp_path)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    with contextlib.ExitStack() as stack:
        if how == "tmpfs":
            workdir = stack.enter_context(_small_tmpfs(tmp_path / "small")) / "w"
            needle, limit = "No space left on device", None
        else:
            workdir, needle, limit = tmp_path / "w", "(`ulimit -f`)", _limit_file_size(2048)
        cmd = [sys.executable, "-m", "uisbench", "bench", "--backbones", "pixels", "--no-report", "--workdir", str(workdir)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, preexec_fn=limit)
        err = proc.stderr
        assert proc.returncode == 2, err[-3000:]
        assert f"cannot write in the work directory {workdir}" in err and needle in err, err[-3000:]
        assert "free on its file system" in err and "rerun the same command to resume" in err
        assert "Traceback" not in err and "Errno" not in err
        assert not list(workdir.rglob("*.tmp")) and not (workdir / "results.json").exists()
