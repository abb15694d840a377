"""Measuring a stage: wall time, peak host memory (RSS high-water mark) and peak GPU memory."""

from __future__ import annotations

import functools
import os
import platform as _stdlib_platform  # the standard library module (uisbench is not `platform`)
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from ..contracts import StageCost


def _reset_host_peak() -> bool:
    """Reset the kernel's RSS high-water mark of this process (Linux >= 4.0); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _host_peak_mb() -> float:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def _torch_cuda(device: str) -> Any | None:
    if not device.startswith("cuda") or "torch" not in sys.modules:
        return None
    import torch

    return torch.cuda if torch.cuda.is_available() else None


@functools.cache
def hardware(device: str) -> str:
    """A short name of the hardware a stage ran on."""
    if device.startswith("cuda"):
        try:
            import torch

            index = torch.device(device).index or 0
            return f"{torch.cuda.get_device_name(index)} (CUDA)"
        except Exception:  # pragma: no cover - no driver
            return "CUDA device"
    name = _stdlib_platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name or _stdlib_platform.machine()} ({cores} cores)"


@dataclass
class Meter:
    """Measures one stage run; ``images`` counts what was actually computed."""

    stage: str
    device: str
    images: int = 0
    seconds: float = 0.0
    peak_host_mb: float = 0.0
    peak_gpu_mb: float | None = None
    _start: float = field(default=0.0, repr=False)

    def __enter__(self) -> Meter:
        _reset_host_peak()
        cuda = _torch_cuda(self.device)
        if cuda is not None:
            cuda.reset_peak_memory_stats()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds += time.perf_counter() - self._start
        self.peak_host_mb = max(self.peak_host_mb, _host_peak_mb())
        cuda = _torch_cuda(self.device)
        if cuda is not None:
            self.peak_gpu_mb = max(self.peak_gpu_mb or 0.0, cuda.max_memory_allocated() / 2**20)

    def record(self) -> dict[str, Any]:
        return cost_record(self.stage, self.images, self.seconds, self.peak_host_mb, self.peak_gpu_mb, self.device)


def cost_record(
    stage: str, images: int, seconds: float, host_mb: float, gpu_mb: float | None, device: str
) -> dict[str, Any]:
    return {
        "stage": stage,
        "images": int(images),
        "seconds": round(float(seconds), 6),
        # from the stored seconds, so a reader can check images / seconds
        "images_per_s": round(images / round(float(seconds), 6), 3) if round(float(seconds), 6) > 0 and images else None,
        "peak_host_mb": round(float(host_mb), 1),
        "peak_gpu_mb": None if gpu_mb is None else round(float(gpu_mb), 1),
        "device": device,
        "hardware": hardware(device),
    }


def combine_ranks(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Cost of ranks that ran side by side: images add up, wall time is the slowest rank's."""
    if not records:
        return None
    if len(records) == 1:
        return records[0]
    gpu = [r["peak_gpu_mb"] for r in records if r.get("peak_gpu_mb") is not None]
    return cost_record(
        records[0]["stage"],
        sum(r["images"] for r in records),
        max(r["seconds"] for r in records),
        max(r["peak_host_mb"] for r in records),
        max(gpu) if gpu else None,
        records[0]["device"],
    )


def combine_parts(stage: str, records: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """One record from consecutive parts (e.g. the train and val splits): images and seconds add up,
    peaks take the maximum."""
    records = [r for r in records if r]
    if not records:
        return None
    images = sum(r["images"] for r in records)
    seconds = sum(r["seconds"] for r in records)
    gpu = [r["peak_gpu_mb"] for r in records if r.get("peak_gpu_mb") is not None]
    out = cost_record(stage, images, seconds, max(r["peak_host_mb"] for r in records), max(gpu) if gpu else None, records[0]["device"])
    out["hardware"] = records[0].get("hardware", out["hardware"])
    return out


def with_member_time(record: dict[str, Any], members: list[dict[str, Any]]) -> dict[str, Any]:
    """``record`` charged with the time of the work it consumed (an ensemble's members): seconds add
    up, peaks take the maximum, the image count stays ``record``'s own."""
    if not members:
        return record
    gpu = [r["peak_gpu_mb"] for r in [record, *members] if r.get("peak_gpu_mb") is not None]
    out = cost_record(record["stage"], record["images"], record["seconds"] + sum(r["seconds"] for r in members),
                      max(r["peak_host_mb"] for r in [record, *members]), max(gpu) if gpu else None, record["device"])
    out["hardware"] = record.get("hardware", out["hardware"])
    return out


def to_stage_cost(record: dict[str, Any]) -> StageCost:
    return StageCost(
        stage=record["stage"],
        images=int(record["images"]),
        seconds=float(record["seconds"]),
        peak_host_mb=float(record["peak_host_mb"]),
        peak_gpu_mb=record.get("peak_gpu_mb"),
        device=record["device"],
        hardware=record.get("hardware", ""),
    )
