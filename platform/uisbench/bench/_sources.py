"""What a cell's numbers came from: whose features, whose pseudo-masks.

A cell of an ordinary masker has one source, its backbone: the backbone's features made the masks,
and the student (if any) trained on them with the same features. An ensemble masker's masks are
made by its members (other ``backbone/masker`` cells), not by the row's backbone, so they are one
row of their own, with no backbone (``backbone`` is ``None``), whose source names the members; a
student trained on those masks with backbone X's features is X's cell, labelled with both.

Pure functions of results.json cells (no pipeline): the walk, the leaderboard and the report all
name a cell the same way through them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ENSEMBLE_ROW", "masks_from", "is_ensemble_row", "masks_label", "backbone_label", "row_key", "cell_label"]

#: what ids and tables show in the backbone place of an ensemble's own row (it has no backbone)
ENSEMBLE_ROW = "*"


def masks_from(masker: str, backbone: str | None, members: list[tuple[str, str]] | None) -> dict[str, Any]:
    """results.json's ``masks_from`` of a cell: ``{"label", "ensemble", "members"}``.

    ``label`` is ``backbone/masker`` for an ordinary masker and ``ensemble = a/m1 + b/m2`` for an
    ensemble (its members in the entry's order)."""
    if members:
        names = [f"{b}/{m}" for b, m in members]
        return {"label": f"{masker} = " + " + ".join(names), "ensemble": masker, "members": names}
    return {"label": f"{backbone}/{masker}", "ensemble": None, "members": None}


def is_ensemble_row(cell: dict[str, Any]) -> bool:
    """The one row that carries an ensemble's pseudo-mask values (it has no backbone)."""
    return cell.get("backbone") is None


def masks_label(cell: dict[str, Any]) -> str:
    """What the masker column shows: the masker entry, or for an ensemble's masks its source
    (``vote = a/kmeans + b/kmeans``)."""
    source = cell.get("masks_from") or {}
    return str(source["label"]) if source.get("ensemble") else str(cell["masker"])


def backbone_label(cell: dict[str, Any]) -> str:
    """What the backbone column shows: the backbone whose features the cell used (``-`` for an
    ensemble's own row, which used no single backbone's features)."""
    return "-" if is_ensemble_row(cell) else str(cell["backbone"])


def row_key(cell: dict[str, Any]) -> str:
    """Who a cell's point belongs to in the report's plots and gallery (a colour, a choice): its
    backbone, or for an ensemble's own row the ensemble's source, never some backbone's name."""
    return masks_label(cell) if is_ensemble_row(cell) else str(cell["backbone"])


def cell_label(cell: dict[str, Any], *, student: bool = True) -> str:
    """One line naming a cell: ``backbone / masker [/ student]``; an ensemble's row is its source,
    and a student on an ensemble's masks says both (``features X / masks vote = ... / student``)."""
    if is_ensemble_row(cell):
        return masks_label(cell)
    if (cell.get("masks_from") or {}).get("ensemble"):
        parts = [f"features {cell['backbone']}", f"masks {masks_label(cell)}"]
    else:
        parts = [str(cell["backbone"]), str(cell["masker"])]
    if student and cell.get("student"):
        parts.append(str(cell["student"]))
    return " / ".join(parts)

