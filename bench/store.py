"""The record store: one JSON record (+ compressed labels) per finished run cell.

Layout under the output folder::

    runs/<dataset-key>/truth.npz                     true labels and groups (for recomputation)
    runs/<dataset-key>/<method-key>/seed<k>.json     the record
    runs/<dataset-key>/<method-key>/seed<k>.npz      its predicted labels (and embedding, and the
                                                     labels of named intermediate stages as
                                                     ``stage_<name>``)

Every file is written to a temporary name and renamed into place (atomic on POSIX), labels
before the record, so a record that exists always has its labels. A record's ``status`` is
"ok", "failed" (error recorded, retried on the next run, never reported as a result) or
"not_applicable".
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

from .metrics import evaluate
from .paths import write_atomically


def atomic_write_bytes(path: Path, data: bytes) -> None:
    write_atomically(path, lambda tmp: tmp.write_bytes(data))


def remove_partial_writes(path: Path) -> None:
    """Delete the temporary files that writers of ``path`` left behind when they were killed
    between creating and renaming them (:func:`atomic_write_bytes`); called once the file's
    final version is in place or no longer wanted. One cell is written by one process at a
    time, so no live writer's file is touched."""
    for orphan in Path(path).parent.glob(f".{Path(path).name}.*.tmp"):
        orphan.unlink(missing_ok=True)


def _npz_bytes(**arrays) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def own_key(name: str, params: dict, version: str) -> str:
    """The folder name of a configuration that is not today's default: its name and a hash of
    every parameter and the version (:attr:`bench.runner.Spec.key`). A default configuration
    lives under the plain name instead, so a record keeps its own folder only until a default
    changes; :meth:`RecordStore.make_room` then moves it here."""
    text = json.dumps([sorted([k, v] for k, v in params.items()), version], sort_keys=True)
    return f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


FINISHED = ("ok", "not_applicable")


class TruthChanged(ValueError):
    """A dataset's labels or groups changed under unchanged parameters and version."""


def _same_configuration(path: Path, dataset) -> bool:
    """Whether the record at ``path`` is finished and of ``dataset``'s configuration."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    spec = rec.get("dataset", {})
    return rec.get("status") in FINISHED and (spec.get("params"), spec.get("version", "1")) == (
        dataset.param_dict, dataset.version)


def _write_record(path: Path, record: dict) -> None:
    atomic_write_bytes(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())


class RecordStore:
    def __init__(self, root):
        self.root = Path(root)
        self.runs = self.root / "runs"

    def record_path(self, cell) -> Path:
        return self.runs / cell.dataset.key / cell.method.key / f"seed{cell.seed}.json"

    def get(self, cell) -> dict | None:
        path = self.record_path(cell)
        try:
            record = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return record if record.get("cell_id") == cell.cell_id else None

    def is_done(self, cell) -> bool:
        """Finished cells are skipped on a rerun; failed ones are not."""
        record = self.get(cell)
        return record is not None and record["status"] in ("ok", "not_applicable")

    def put(self, cell, record: dict, labels=None, embedding=None, stages=None) -> Path:
        path = self.record_path(cell)
        if labels is not None:
            arrays = {"labels": np.asarray(labels, dtype=np.int64)}
            if embedding is not None:
                arrays["embedding"] = np.asarray(embedding, dtype=np.float32)
            for name, stage_labels in (stages or {}).items():
                arrays[f"stage_{name}"] = np.asarray(stage_labels, dtype=np.int64)
            atomic_write_bytes(path.with_suffix(".npz"), _npz_bytes(**arrays))
            remove_partial_writes(path.with_suffix(".npz"))
            record = {**record, "labels_file": path.with_suffix(".npz").name}
        _write_record(path, record)
        remove_partial_writes(path)
        return path

    def records_to_move(self, cells) -> list[tuple[Path, dict, Path]]:
        """The finished records of other configurations in the folders the given cells write
        to, as (path, record, target) in the order :meth:`make_room` moves them; reads only.
        Records of an older dataset configuration (anywhere in the dataset's folder) go to the
        dataset's own folder, then records of an older method configuration to the method's
        own folder."""
        moves, seen = [], set()
        for dataset in {c.dataset.key: c.dataset for c in cells}.values():
            for path, rec in self._other_configurations(self.runs / dataset.key, "*/seed*.json", "dataset", dataset):
                key = own_key(rec["dataset"]["name"], rec["dataset"]["params"], rec["dataset"].get("version", "1"))
                moves.append((path, rec, self.runs / key / path.parent.name / path.name))
                seen.add(path)
        for cell in {(c.dataset.key, c.method.key): c for c in cells}.values():
            folder = self.record_path(cell).parent
            for path, rec in self._other_configurations(folder, "seed*.json", "method", cell.method):
                if path not in seen:  # a record of an older dataset configuration moves with its dataset
                    key = own_key(rec["method"]["name"], rec["method"]["params"], rec["method"].get("version", "1"))
                    moves.append((path, rec, folder.parent / key / path.name))
        return moves

    def make_room(self, cells) -> list[str]:
        """Move aside the finished records of other configurations from the folders the given
        cells write to (:meth:`records_to_move`): a record made before a default changed sits
        in the plain folder that today's default configuration also maps to
        (``runs/mnist-usps/fcmi/`` then holds another configuration), where a new run would
        overwrite it seed by seed. A record moved with its dataset takes a copy of the
        dataset's ``truth.npz``; its labels move with it; the ``key`` it stores is rewritten to
        match, and ``relocated_from`` names where it was. Nothing is deleted; failed records of
        another configuration are left to be overwritten, as a retry would. Returns
        "old -> new" per moved record."""
        moved = []
        for path, rec, target in self.records_to_move(cells):
            kind = "dataset" if target.parents[1] != path.parents[1] else "method"
            if kind == "dataset":
                truth = path.parents[1] / "truth.npz"
                if truth.exists() and not (target.parents[1] / "truth.npz").exists():
                    target.parents[1].mkdir(parents=True, exist_ok=True)
                    shutil.copy2(truth, target.parents[1] / "truth.npz")
            if target.exists():
                raise FileExistsError(f"cannot move {path} of an older configuration: {target} exists")
            labels = path.parent / rec["labels_file"] if rec.get("labels_file") else None
            if labels is not None and labels.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(labels, target.parent / labels.name)
            new_key = target.parents[1].name if kind == "dataset" else target.parent.name
            rec = {**rec, kind: {**rec[kind], "key": new_key},
                   "relocated_from": rec.get("relocated_from", []) + [str(path.relative_to(self.runs))]}
            _write_record(target, rec)
            path.unlink()
            moved.append(f"{path.relative_to(self.runs)} -> {target.relative_to(self.runs)}")
        return moved

    def _other_configurations(self, folder: Path, pattern: str, kind: str, current):
        """The finished records under ``folder`` whose ``kind`` ("dataset" or "method")
        configuration is not ``current`` (a :class:`bench.runner.Spec`), as (path, record)."""
        for path in sorted(folder.glob(pattern)):
            try:
                rec = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            spec = rec[kind]
            if rec.get("status") in FINISHED and (spec["params"], spec.get("version", "1")) != (
                    current.param_dict, current.version):
                yield path, rec

    def put_truth(self, dataset, y, groups) -> None:
        """Store the labels and groups that the records of ``dataset`` (a
        :class:`bench.runner.Spec`) are scored against. A file that differs belongs to an older
        configuration of the dataset, whose records :meth:`make_room` has moved with a copy of
        it, and is replaced. If finished records of this very configuration remain beside it,
        the loader changed without a new ``version``: :class:`TruthChanged` is raised rather
        than leave those records unrecomputable."""
        path = self.runs / dataset.key / "truth.npz"
        y, groups = np.asarray(y, np.int64), np.asarray(groups, np.int64)
        if path.exists():
            try:
                with np.load(path) as f:
                    if np.array_equal(f["y"], y) and np.array_equal(f["groups"], groups):
                        return
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # unreadable: write it again
                pass
            else:
                same = [p for p in sorted((self.runs / dataset.key).glob("*/seed*.json"))
                        if _same_configuration(p, dataset)]
                if same:
                    raise TruthChanged(
                        f"dataset {dataset.key!r} now loads other labels or groups than its {len(same)} finished "
                        f"records were scored against (e.g. {same[0].relative_to(self.runs)}), with the same "
                        "parameters and version: bump the dataset's version so that they are kept apart")
        atomic_write_bytes(path, _npz_bytes(y=y, groups=groups))

    def records(self) -> list[dict]:
        """Every stored record, sorted by path (deterministic)."""
        out = []
        for path in sorted(self.runs.glob("*/*/seed*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except json.JSONDecodeError:  # cannot happen with atomic writes, but never crash a report
                continue
        return out

    def labels(self, record: dict, stage: str | None = None) -> np.ndarray:
        """The run's final labels, or those of a named intermediate ``stage`` (the record's
        ``stages``)."""
        path = self.runs / record["dataset"]["key"] / record["method"]["key"] / record["labels_file"]
        with np.load(path) as f:
            return f["labels" if stage is None else f"stage_{stage}"]

    def recompute_metrics(self, record: dict, stage: str | None = None) -> dict:
        """The record's metrics (or a stage's), recomputed from its stored labels and the
        dataset's truth."""
        with np.load(self.runs / record["dataset"]["key"] / "truth.npz") as f:
            y, groups = f["y"], f["groups"]
        return evaluate(
            y, self.labels(record, stage), groups, record["n_clusters"],
            attribute_names=record["attributes"], n_values=record.get("attribute_values"),
        )
