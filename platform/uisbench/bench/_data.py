"""The run's dataset: one object per split, built on first use, its image ids (``--limit``), the
images found unreadable on the way (``--skip-bad-images``) and the identity that enters cache keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ._cache import content_digest

__all__ = ["BenchData"]


class BenchData:
    """Splits of the run's dataset entry; every stage reads images through here."""

    def __init__(self, entry: Any, limit: int | None, skip_bad_images: bool, hash_memo: Path | None = None) -> None:
        self.entry = entry
        #: where the image files' content hashes are remembered (``cache/file-hashes.json``)
        self.hash_memo = hash_memo
        self.limit = limit
        self.skip_bad_images = skip_bad_images
        self._datasets: dict[str, Any] = {}
        self._ids: dict[str, list[int]] = {}
        self._identity: dict[str, dict[str, Any]] = {}
        #: images that could not be decoded, per split: id -> {"image_id", "file", "reason"}
        self.skipped: dict[str, dict[int, dict[str, Any]]] = {"train": {}, "val": {}}

    @property
    def name(self) -> str:
        return self.entry.name

    def dataset(self, split: str) -> Any:
        if split not in self._datasets:
            extra: dict[str, Any] = {"split": split}
            if self.skip_bad_images:
                if self.entry.spec.param("skip_bad_images") is None:
                    raise ConfigError(f"--skip-bad-images: dataset plugin {self.entry.plugin!r} has no skip_bad_images parameter.")
                extra["skip_bad_images"] = True
            splits = getattr(self.entry.spec, "splits", ("train", "val"))
            if split not in splits:
                raise ConfigError(f"dataset {self.name!r} has no {split!r} split (it has {', '.join(splits)}).")
            self._datasets[split] = self.entry.build(**extra)
        return self._datasets[split]

    def ids(self, split: str) -> list[int]:
        """The split's image ids, sorted, cut to ``--limit``."""
        if split not in self._ids:
            ids = sorted(int(i) for i in self.dataset(split).image_ids())
            if self.limit is not None:
                ids = ids[: max(0, int(self.limit))]
            if not ids:
                raise ConfigError(f"dataset {self.name!r} split {split!r} has no images.")
            # images a dataset refused while it was built (--skip-bad-images) never reach a stage, so
            # no stage reports them: note them here, or results.json would not say they were left out
            refused = [x for x in getattr(self.dataset(split), "skipped", None) or []
                       if x.get("image_id") is not None and (self.limit is None or int(x["image_id"]) <= ids[-1])]
            self.note_skipped(split, refused)
            self._ids[split] = ids
        return self._ids[split]

    def known_ids(self, split: str) -> list[int] | None:
        """The split's ids if they were listed in this run already (never builds the dataset)."""
        return self._ids.get(split)

    def usable(self, split: str) -> list[int]:
        """The split's ids without the images skipped as unreadable (known once a stage saw them)."""
        bad = self.skipped.get(split, {})
        return [i for i in self.ids(split) if i not in bad]

    def note_skipped(self, split: str, items: Any) -> None:
        for item in items or []:
            self.skipped.setdefault(split, {})[int(item["image_id"])] = {
                "image_id": int(item["image_id"]),
                "file": item.get("file"),
                "reason": str(item.get("reason", "")),
            }

    def skipped_among(self, split: str, ids: list[int]) -> list[dict[str, Any]]:
        wanted = set(ids)
        return [self.skipped[split][i] for i in sorted(self.skipped.get(split, {})) if i in wanted]

    def batches(self, split: str, ids: list[int], transform: Any, batch_size: int, num_workers: int) -> Any:
        """``(ids, pixels)`` batches of ``transform``-ed images, decoded in DataLoader workers (images
        that fail to decode are left out, and recorded, when skipping bad images)."""
        from ..data import iter_batches

        dataset = self.dataset(split)
        for batch_ids, pixels, _ in iter_batches(dataset, ids, transform, batch_size=batch_size, num_workers=num_workers):
            yield [int(i) for i in batch_ids], pixels

    def identity(self, split: str) -> dict[str, Any]:
        """What a split's content depends on: the entry's identity, the dataset's own fingerprint and
        the bytes of the split's image files.

        A plugin's fingerprint looks at names, sizes and at most modification times, which a file
        replaced in place can keep; so the files are hashed too, memoised on inode, size, mtime and
        ctime (a user cannot set ctime back): a rerun costs one ``stat`` per image (README, Reliability).
        """
        if split not in self._identity:
            dataset = self.dataset(split)
            files = [f for f in (dataset.record(i).file for i in self.ids(split)) if f]
            self._identity[split] = {**self.entry.identity, "fingerprint": dataset.fingerprint(), "split": split,
                                     "content": content_digest(files, self.hash_memo) if files else None}
        return self._identity[split]

    def transductive(self) -> bool:
        """Whether the train split holds evaluation images: the dataset says so, or the two splits
        share image files, or (images generated in memory) their content fingerprints are equal."""
        train, val = self.dataset("train"), self.dataset("val")
        if getattr(train, "transductive", False):
            return True
        train_files = {train.record(i).file for i in self.ids("train")} - {None}
        if train_files & {val.record(i).file for i in self.ids("val")}:
            return True
        return not train_files and train.fingerprint() == val.fingerprint()

    @property
    def has_ground_truth(self) -> bool:
        dataset = self.dataset("val")
        return bool(getattr(dataset, "has_ground_truth", getattr(self.entry.spec, "has_ground_truth", True)))
