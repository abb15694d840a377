"""Helpers shared by tests (importable because pyproject sets pytest `pythonpath = ["tests"]`)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


class FakeDist:
    def __init__(self, name: str, version: str = "1.0") -> None:
        self.metadata = {"Name": name}
        self.version = version


class FakeEntryPoint:
    """A stand-in for importlib.metadata.EntryPoint whose ``load`` returns an object or raises."""

    def __init__(self, name: str, obj=None, error: Exception | None = None, dist: str = "uisbench-fake") -> None:
        self.name = name
        self.value = f"fake:{name}"
        self.dist = FakeDist(dist)
        self._obj = obj
        self._error = error

    def load(self):
        if self._error is not None:
            raise self._error
        return self._obj


def pseudo_mask_ap50(ds, ids, preds) -> float:
    """Mask AP50 of per-image prediction lists against the dataset's ground truth, straight from
    pycocotools (the independent reference; 0.0 when there is nothing to score)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = [p.to_coco() for ps in preds for p in ps]
    if not results:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = ds.coco_ground_truth(ids)
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[1])


def weights_inspect(path) -> tuple[int, str]:
    """``platform weights inspect PATH``: its exit code and what it printed."""
    from uisbench.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["weights", "inspect", str(path)])
    return code, buf.getvalue()
