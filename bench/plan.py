"""What a grid run would do, without training anything: ``run_benchmark.py ... --dry-run``.

For each cell of the grid, the state the runner will find it in: finished (skipped), not
applicable (skipped), failed (retried), stopped part-way with a checkpoint (continued from
it), or not started; and the records of older defaults the run will first move aside
(:meth:`bench.store.RecordStore.records_to_move`, the same selection the run uses). Grouped by
dataset and method configuration, with the train time of the configuration's finished seeds
per device and, from it, an estimate of the training time left, so that a run on a machine
held for a limited time can be planned. Nothing is written or moved.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tabulate import tabulate

from .report import short_device
from .runner import Cell, RunOptions, checkpoint_path
from .store import RecordStore

DONE, NOT_APPLICABLE, FAILED, RESUMES, TO_RUN = "done", "n/a", "failed", "resumes", "to run"
PENDING = (FAILED, RESUMES, TO_RUN)


@dataclass(frozen=True)
class CellState:
    cell: Cell
    state: str                             # one of DONE, NOT_APPLICABLE, FAILED, RESUMES, TO_RUN
    saved_seconds: Optional[float] = None  # a resuming cell's training seconds saved so far
    error: str = ""                        # a failed cell's error (first line)
    #: the cell's record file holds a finished record of another configuration, which the run
    #: moves to that configuration's own folder first
    moves_older: bool = False


@dataclass
class Plan:
    states: list[CellState]
    #: per (dataset spec, method spec): (train seconds, device) of its finished seeds (any
    #: seed, also outside the grid), or else of the older default's records it replaces
    times: dict = field(default_factory=dict)
    stand_in: set = field(default_factory=set)  # configurations timed by an older default
    moves: int = 0                              # finished records the run moves aside first


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


def _timing(record: dict) -> Optional[tuple[float, str]]:
    if record.get("status") != "ok" or record.get("train_seconds") is None:
        return None
    return float(record["train_seconds"]), short_device(record.get("device", ""), record.get("jobs", 1))


def _finished_times(store: RecordStore, cell: Cell) -> list[tuple[float, str]]:
    """(train seconds, device) of every finished seed of the cell's configuration."""
    out = []
    for path in sorted(store.record_path(cell).parent.glob("seed*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        same = all((rec.get(kind, {}).get("params"), rec.get(kind, {}).get("version", "1")) == (spec.param_dict, spec.version)
                   for kind, spec in (("dataset", cell.dataset), ("method", cell.method)))
        if same and _timing(rec):
            out.append(_timing(rec))
    return out


def plan_grid(cells: list[Cell], store: RecordStore, options: RunOptions, force: bool = False) -> Plan:
    """The state of every cell as :func:`bench.runner.run_grid` would find it, the records it
    would move aside, and the times to estimate the training left from."""
    states = []
    for cell in cells:
        record = store.get(cell)
        status = record.get("status") if record else None
        if status == "ok" and not force:
            states.append(CellState(cell, DONE))
            continue
        if status == "not_applicable" and not force:
            states.append(CellState(cell, NOT_APPLICABLE, error=str(record.get("error", ""))))
            continue
        saved = _saved_seconds(checkpoint_path(options, cell), cell.cell_id)
        if saved is not None:
            states.append(CellState(cell, RESUMES, saved))
        elif status == "failed":
            states.append(CellState(cell, FAILED, error=(str(record.get("error") or "").splitlines() or [""])[0][:120]))
        else:
            states.append(CellState(cell, TO_RUN))
    moves = store.records_to_move([s.cell for s in states if s.state in PENDING])
    moved_paths = {path for path, _, _ in moves}
    states = [CellState(s.cell, s.state, s.saved_seconds, s.error, store.record_path(s.cell) in moved_paths)
              if s.state in PENDING else s for s in states]
    plan = Plan(states, moves=len(moves))
    for s in states:
        key = (s.cell.dataset, s.cell.method)
        if key in plan.times:
            continue
        plan.times[key] = _finished_times(store, s.cell)
        if not plan.times[key]:  # the older default's records in the same folder stand in
            folder = store.record_path(s.cell).parent
            plan.times[key] = [t for path, rec, _ in moves if path.parent == folder and (t := _timing(rec))]
            if plan.times[key]:
                plan.stand_in.add(key)
    return plan


def _seeds(states, which) -> str:
    return " ".join(f"{s.cell.seed}{'*' if s.moves_older else ''}" for s in states if s.state == which) or "–"


def plan_table(plan: Plan) -> str:
    """One row per dataset and method configuration: which seeds are in which state (a seed
    marked "*" replaces, in its folder, a record of an older default, which the run moves
    aside), the mean train time of the configuration's finished seeds per device (where none
    has finished, that of the older default's records, marked "(older default)"), and the
    training left per device, estimated from it (a resuming cell counts its saved seconds as
    done). The estimate holds for the device and load those seeds ran under; "?" where there
    is nothing to go by."""
    groups: dict = defaultdict(list)
    for s in plan.states:
        groups[(s.cell.dataset, s.cell.method)].append(s)
    rows, total_left, unknown = [], defaultdict(float), 0
    for key, members in groups.items():
        by_device = defaultdict(list)
        for seconds, device in plan.times.get(key, []):
            by_device[device or "?"].append(seconds)
        means = {d: float(np.mean(v)) for d, v in sorted(by_device.items())}
        pending = [s for s in members if s.state in PENDING]
        left = {}
        if pending and not means:
            unknown += len(pending)
        for device, mean in means.items():
            left[device] = sum(max(mean - (s.saved_seconds or 0.0), 0.0) for s in pending)
            total_left[device] += left[device]
        resumes = " ".join(f"{s.cell.seed}{'*' if s.moves_older else ''} ({s.saved_seconds:,.0f} s saved)"
                           for s in members if s.state == RESUMES)
        timed = "; ".join(f"{m:,.1f} {d}" for d, m in means.items())
        rows.append([key[0].label, key[1].label, _seeds(members, DONE), _seeds(members, NOT_APPLICABLE),
                     resumes or "–", _seeds(members, FAILED), _seeds(members, TO_RUN),
                     (timed + (" (older default)" if key in plan.stand_in else "")) if timed else "–",
                     "0" if not pending else "; ".join(f"{v:,.0f} {d}" for d, v in left.items()) or "?"])
    table = tabulate(rows, headers=["dataset", "method", "done", "n/a", "resumes", "failed (retried)", "to run",
                                    "train s (finished)", "est. s left"], tablefmt="github", disable_numparse=True)
    counts = {k: sum(s.state == k for s in plan.states) for k in (DONE, NOT_APPLICABLE, RESUMES, FAILED, TO_RUN)}
    if not any(s.state in PENDING for s in plan.states):
        left_text = "none"
    elif not total_left:
        left_text = f"no estimate: none of the {unknown} cells left has a finished seed of its configuration to go by"
    else:  # per device: seconds on a GPU and on a CPU do not add up
        left_text = ("; ".join(f"{sec:,.0f} s as run on {dev}" for dev, sec in sorted(total_left.items()))
                     + " (estimated from finished seeds of the same configuration, or of the older default it "
                     "replaces)" + (f", plus {unknown} cells with nothing to go by" if unknown else ""))
    summary = (f"{len(plan.states)} cells: {counts[DONE]} done, {counts[NOT_APPLICABLE]} not applicable, "
               f"{counts[RESUMES]} resume from a checkpoint, {counts[FAILED]} failed (retried), "
               f"{counts[TO_RUN]} to run. Training left: {left_text}. Nothing was trained or written."
               + (f" The run first moves {plan.moves} finished records of configurations that were the default "
                  "when they ran (seeds marked * are among them) to their own folders; nothing is overwritten."
                  if plan.moves else ""))
    failed = [f"  failed before: {s.cell}: {s.error}" for s in plan.states if s.state == FAILED and s.error]
    return "\n".join([table, "", summary] + failed)
