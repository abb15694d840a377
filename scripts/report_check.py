#!/usr/bin/env python3
"""Check a uisbench report.html in a real browser (headless Chromium), as a reader would see it.

    python scripts/report_check.py runs/default/report.html [--screenshot OUT.png] [--private]

Loads ``report.html#selftest`` with ``chromium --headless --dump-dom`` (the page's script runs, sorts
and filters the leaderboard and switches the gallery, and records the outcome on ``<body>``), then
checks the DOM it left:

- the script ran (``data-js="ready"``) and its self-test passed (``data-selftest="pass"``);
- the summary holds at least one finding;
- the notice of backbones that could not run, when there is one, is collapsed;
- every plot whose data results.json (next to the report) holds is drawn: instance awareness,
  quality against cost, pseudo-mask vs student, label efficiency;
- the gallery shows mask layers (not in private reports; ``--private`` checks that no image data,
  ``data:image/`` URI or gallery is in the page at all);

and saves a screenshot (default ``report-check.png`` next to the report) whose pixels are not blank.
Exit status 0 when every check passes, 1 when one fails, 2 when Chromium is not installed.
Needs only the standard library and Pillow; no browser is downloaded.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--disable-extensions", "--mute-audio"]
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def run_chromium(browser: str, args: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="report-check-") as profile:
        cmd = [browser, *FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def expected_plots(results: dict) -> dict[str, bool]:
    """Which plots results.json has data for (read independently of the report's own code)."""
    cells = results.get("cells") or []
    pm = [((c.get("pseudo_masks") or {}).get("metrics") or {}) for c in cells]
    st = [((c.get("student_stage") or {}).get("metrics") or {}) for c in cells]
    primary = results.get("primary_metric") or {}
    metric, value = primary.get("metric"), primary.get("value")

    def has(parts: list[dict], m: str | None, v: str | None) -> bool:
        return any(((p.get(m) or {}).get("values") or {}).get(v) is not None for p in parts)

    ia = any(((p.get("instance-awareness") or {}).get("values") or {}).get("recall_single") is not None for p in pm)
    timed = any(((c.get("timings") or {}).get("features") or {}).get("images_per_s") for c in cells)
    return {
        "instance": ia,
        "cost": timed and (has(pm, metric, value) or has(st, metric, value)),
        "stages": has(pm, metric, value) or has(st, metric, value),
        "label-efficiency": bool((results.get("label_efficiency") or {}).get("rows")),
    }


def attribute(dom: str, tag: str, name: str) -> str | None:
    m = re.search(rf"<{tag}\b[^>]*\b{re.escape(name)}=\"([^\"]*)\"", dom)
    return m.group(1) if m else None


def check_dom(dom: str, html: str, results: dict | None, private: bool) -> list[str]:
    problems = []
    if attribute(dom, "body", "data-js") != "ready":
        problems.append("the page's script did not run (no data-js=ready on <body>)")
    selftest = attribute(dom, "body", "data-selftest")
    log = attribute(dom, "body", "data-selftest-log") or ""
    if selftest != "pass":
        problems.append(f"self-test: {selftest!r}: {log}")
    summary = re.search(r"<section id=\"summary\">(.*?)</section>", dom, re.S)
    if not summary or "<li" not in summary.group(1):
        problems.append("no summary finding")
    notice = re.search(r"<details[^>]*\bid=\"unavailable\"[^>]*>", dom)
    if notice and re.search(r"\bopen\b", notice.group(0)):
        problems.append("the notice of backbones that could not run is open; it should start collapsed")
    if results is not None:
        plots = set(re.findall(r"<svg[^>]*\bdata-plot=\"([^\"]+)\"", dom))
        for name, wanted in expected_plots(results).items():
            if wanted and not any(p == name or p.startswith(name + "-") for p in plots):
                problems.append(f"plot {name!r} missing although results.json has its data (drawn: {sorted(plots)})")
        missing = (results.get("backbones") or {})
        if any(b.get("status") == "unavailable" for b in missing.values()) and not notice:
            problems.append("results.json has unavailable backbones but the page has no notice")
    layers = len(re.findall(r"<img class=\"layer\"[^>]*src=\"data:image/png", dom))
    if private:
        if "data:image/" in html:
            problems.append("private report holds data:image/ URIs")
        if 'class="gimg"' in dom:
            problems.append("private report has a gallery")
    elif results is not None and any((c.get("pseudo_masks") or {}).get("status") == "ok" for c in results.get("cells") or []):
        if layers == 0:
            problems.append("the gallery shows no mask layer")
    return problems


def check_screenshot(path: Path) -> list[str]:
    from PIL import Image, ImageStat

    if not path.is_file() or path.stat().st_size == 0:
        return [f"no screenshot written at {path}"]
    image = Image.open(path).convert("L")
    stat = ImageStat.Stat(image)
    colours = image.getcolors(maxcolors=1 << 16) or []
    top = max((n for n, _ in colours), default=0) / max(1, image.size[0] * image.size[1])
    problems = []
    if stat.stddev[0] < 8.0:
        problems.append(f"screenshot looks blank (grey-level std {stat.stddev[0]:.1f})")
    if top > 0.985:
        problems.append(f"screenshot is {top:.1%} one colour")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="report.html to check")
    parser.add_argument("--screenshot", type=Path, help="where to save the screenshot (default: report-check.png next to the report)")
    parser.add_argument("--results", type=Path, help="results.json of the report (default: the one next to it)")
    parser.add_argument("--private", action="store_true", help="also check that the report holds no image data")
    parser.add_argument("--size", default="1400,2200", help="browser window WIDTH,HEIGHT for the screenshot")
    args = parser.parse_args(argv)
    report = args.report.resolve()
    if not report.is_file():
        print(f"report_check: no such file: {report}", file=sys.stderr)
        return 1
    browser = find_chromium()
    if browser is None:
        print("report_check: Chromium not found (apt-get install chromium); nothing checked", file=sys.stderr)
        return 2
    results_path = args.results or report.with_name("results.json")
    results = json.loads(results_path.read_text()) if results_path.is_file() else None
    url = report.as_uri()
    dump = run_chromium(browser, ["--virtual-time-budget=10000", "--dump-dom", url + "#selftest"])
    if dump.returncode != 0 or "<body" not in dump.stdout:
        print(f"report_check: chromium --dump-dom failed ({dump.returncode}): {dump.stderr[-2000:]}", file=sys.stderr)
        return 1
    problems = check_dom(dump.stdout, report.read_text(encoding="utf-8"), results, args.private)
    shot = (args.screenshot or report.with_name("report-check.png")).resolve()
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.unlink(missing_ok=True)
    taken = run_chromium(browser, [f"--window-size={args.size}", "--virtual-time-budget=5000", f"--screenshot={shot}", url])
    if taken.returncode != 0:
        problems.append(f"chromium --screenshot failed ({taken.returncode}): {taken.stderr[-500:]}")
    problems += check_screenshot(shot)
    log = attribute(dump.stdout, "body", "data-selftest-log") or ""
    print(f"report_check: {report}")
    print(f"  self-test: {attribute(dump.stdout, 'body', 'data-selftest')} ({log})")
    print(f"  screenshot: {shot}")
    for p in problems:
        print(f"  FAIL {p}")
    print("  ok" if not problems else f"  {len(problems)} problem(s)")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
