"""What a grid run would do, without training anything: ``run_benchmark.py ... --dry-run``.

For each cell of the grid, the state the runner will find it in: finished (skipped), not
applicable (skipped), failed (retried), stopped part-way with a checkpoint (continued from
it), or not started. Grouped by dataset and method configuration, with the train time of the
finished seeds and, from it, an estimate of the training time left, so that a run on a
machine held for a limited time can be planned. Nothing is written or moved.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tabulate import tabulate

from .report import short_device
from .runner import Cell, RunOptions, checkpoint_path
from .store import FINISHED, RecordStore

DONE, NOT_APPLICABLE, FAILED, RESUMES, TO_RUN = "done", "n/a", "failed", "resumes", "to run"


@dataclass(frozen=True)
class CellState:
    cell: Cell
    state: str                            # one of DONE, NOT_APPLICABLE, FAILED, RESUMES, TO_RUN
    train_seconds: Optional[float] = None  # a finished cell's; a resuming cell's seconds saved so far
    device: str = ""                      # where a finished cell ran ("H100 ×10", "CPU")
    error: str = ""                       # a failed cell's error
    #: the cell's record file holds a finished record of another configuration (made before a
    #: default changed); the run moves it to that configuration's own folder first
    moves_older: bool = False
    older_seconds: Optional[float] = None  # that record's train time, and where it ran
    older_device: str = ""


def _saved_seconds(path: Optional[Path], cell_id: str) -> Optional[float]:
    """Training seconds stored in a cell's checkpoint, or None when it has none of its own
    (absent, unreadable, or left by another configuration: the runner ignores those too)."""
    if path is None or not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001 - a damaged file means the cell starts over
        return None
    if not isinstance(saved, dict) or saved.get("cell_id") != cell_id:
        return None
    return float(saved.get("seconds", 0.0))


def _older_default(store: RecordStore, cell: Cell) -> dict:
    """What the run would move aside from the cell's record file: a finished record of
    another configuration (``CellState`` fields), or nothing."""
    try:
        other = json.loads(store.record_path(cell).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    if other.get("cell_id") == cell.cell_id or other.get("status") not in FINISHED:
        return {}
    return {"moves_older": True, "older_seconds": other.get("train_seconds"),
            "older_device": short_device(other.get("device", ""), other.get("jobs", 1))}


def cell_states(cells: list[Cell], store: RecordStore, options: RunOptions, force: bool = False) -> list[CellState]:
    """The state of every cell as :func:`bench.runner.run_grid` would find it."""
    states = []
    for cell in cells:
        record = store.get(cell)
        older = _older_default(store, cell) if record is None else {}
        status = record.get("status") if record else None
        if status == "ok" and not force:
            states.append(CellState(cell, DONE, record.get("train_seconds"),
                                    short_device(record.get("device", ""), record.get("jobs", 1))))
            continue
        if status == "not_applicable" and not force:
            states.append(CellState(cell, NOT_APPLICABLE, error=str(record.get("error", ""))))
            continue
        saved = _saved_seconds(checkpoint_path(options, cell), cell.cell_id)
        if saved is not None:
            states.append(CellState(cell, RESUMES, saved, **older))
        elif status == "failed":
            states.append(CellState(cell, FAILED, error=str(record.get("error", "")).splitlines()[0][:120]
                                    if record.get("error") else ""))
        else:
            states.append(CellState(cell, TO_RUN, **older))
    return states


def _seeds(states, *which) -> str:
    return " ".join(str(s.cell.seed) for s in states if s.state in which) or "–"


def plan_table(states: list[CellState]) -> str:
    """One row per dataset and method configuration: which seeds are in which state, the mean
    train time of its finished seeds (with their devices) and the training time left, estimated
    from that mean (a resuming cell counts its saved seconds as done). A seed marked "*"
    replaces, in its folder, a record of an older default, which the run moves aside; where no
    seed of the configuration has finished, those records' train times stand in, marked
    "(older default)". The estimate holds for the device and load they ran under; "?" where
    there is nothing to go by."""
    groups: dict = defaultdict(list)
    for s in states:
        groups[(s.cell.dataset.label, s.cell.method.label)].append(s)
    rows, total_left, unknown = [], defaultdict(float), 0
    for (dataset, method), members in groups.items():
        finished = [s.train_seconds for s in members if s.state == DONE and s.train_seconds is not None]
        devices = sorted({s.device for s in members if s.state == DONE and s.device})
        stand_in = not finished and any(s.older_seconds is not None for s in members)
        if stand_in:
            finished = [s.older_seconds for s in members if s.older_seconds is not None]
            devices = sorted({s.older_device for s in members if s.older_seconds is not None and s.older_device})
        mean = float(np.mean(finished)) if finished else None
        pending = [s for s in members if s.state in (TO_RUN, FAILED, RESUMES)]
        if not pending:
            left = "0"
        elif mean is None:
            left, unknown = "?", unknown + len(pending)
        else:
            seconds = sum(max(mean - ((s.train_seconds or 0.0) if s.state == RESUMES else 0.0), 0.0) for s in pending)
            total_left[", ".join(devices) or "?"] += seconds
            left = f"{seconds:,.0f}"
        resumes = " ".join(f"{s.cell.seed}{'*' if s.moves_older else ''} ({s.train_seconds:,.0f} s saved)"
                           for s in members if s.state == RESUMES)
        rows.append([dataset, method, _seeds(members, DONE), _seeds(members, NOT_APPLICABLE), resumes or "–",
                     _seeds(members, FAILED), " ".join(f"{s.cell.seed}*" if s.moves_older else str(s.cell.seed)
                              for s in members if s.state == TO_RUN) or "–",
                     "–" if mean is None else f"{mean:,.1f}" + (" (older default)" if stand_in else ""),
                     ", ".join(devices) or "–", left])
    table = tabulate(rows, headers=["dataset", "method", "done", "n/a", "resumes", "failed (retried)", "to run",
                                    "train s (finished)", "device (finished)", "est. s left"],
                     tablefmt="github", disable_numparse=True)
    moved = sum(s.moves_older for s in states)
    counts = {k: sum(s.state == k for s in states) for k in (DONE, NOT_APPLICABLE, RESUMES, FAILED, TO_RUN)}
    if unknown and not total_left:
        left_text = f"no estimate: none of the {unknown} cells left has a finished seed of its configuration to go by"
    else:  # per device: seconds on a GPU and on a CPU do not add up
        left_text = ("; ".join(f"{sec:,.0f} s as run on {dev}" for dev, sec in sorted(total_left.items()))
                     + " (estimated from finished seeds of the same configuration, or of the older default it "
                     "replaces)" + (f", plus {unknown} cells with no finished seed to go by" if unknown else ""))
    summary = (f"{len(states)} cells: {counts[DONE]} done, {counts[NOT_APPLICABLE]} not applicable, "
               f"{counts[RESUMES]} resume from a checkpoint, {counts[FAILED]} failed (retried), "
               f"{counts[TO_RUN]} to run. Training left: {left_text}. Nothing was trained or written."
               + (f" The run first moves {moved} finished records (seeds marked *) of configurations that were the "
                  "default when they ran to their own folders; nothing is overwritten." if moved else ""))
    failed = [f"  failed before: {s.cell}: {s.error}" for s in states if s.state == FAILED and s.error]
    return "\n".join([table, "", summary] + failed)
