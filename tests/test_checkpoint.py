"""Resumable cells (bench/checkpoint.py): a training stopped part-way and resumed from its
checkpoint gives the labels and history of an uninterrupted run, for every stopping point."""
import numpy as np
import pytest
import torch

from bench import checkpoint, registry
from bench.checkpoint import Checkpoint
from bench.runner import RunOptions, Spec, build_grid, checkpoint_path, run_grid
from bench.store import RecordStore

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
CPU = torch.device("cpu")


class Killed(BaseException):
    """Stands for the process being killed: nothing in a method or the runner catches it."""


class KilledAfter(Checkpoint):
    """Saves every time it is offered state (every_s=0), and is 'killed' after ``n`` saves."""

    def __init__(self, path, n):
        super().__init__(path, cell_id="cell", every_s=0.0)
        self.n = n

    def save(self, stage, state):
        super().save(stage, state)
        if self.saves >= self.n:
            raise Killed


@pytest.fixture(scope="module")
def digits():
    return registry.datasets.get("digits-reversed")().load()


@pytest.fixture(scope="module")
def synthetic2():
    return registry.datasets.get("synthetic")(n_samples=240, n_features=6, n_clusters=3, n_attributes=2).load()


def _fit(name, data, ckpt, **params):
    method = registry.methods.get(name)(**{**registry.methods.get(name).test_parameters, **params})
    with checkpoint.active(ckpt):
        return method.fit(method.prepare_input(data.clustering_input()), 0, CPU)


def _comparable(history):
    """History without wall-clock figures (seconds differ between runs by nature)."""
    return [{k: v for k, v in row.items() if k != "time_s" and not k.endswith("_s")} for row in history]


def _check_every_stop(tmp_path, name, data, **params):
    """Stop the run after 1, 2, ... saves; resume each; all must equal the uninterrupted run."""
    reference = _fit(name, data, Checkpoint(), **params)
    counter = Checkpoint(tmp_path / "count.pt", cell_id="cell", every_s=0.0)
    again = _fit(name, data, counter, **params)
    np.testing.assert_array_equal(again.labels, reference.labels)  # saving changes nothing
    assert counter.saves >= 2, "the run never offered its state"
    for n in range(1, counter.saves + 1):
        path = tmp_path / f"stop{n}.pt"
        with pytest.raises(Killed):
            _fit(name, data, KilledAfter(path, n), **params)
        resumed = _fit(name, data, Checkpoint(path, cell_id="cell", every_s=0.0), **params)
        np.testing.assert_array_equal(resumed.labels, reference.labels, err_msg=f"{name}: stopped after save {n}")
        assert _comparable(resumed.history) == _comparable(reference.history), f"{name}: history after save {n}"
        assert resumed.stages.keys() == reference.stages.keys(), f"{name}: stages after save {n}"
        for stage, labels in reference.stages.items():
            np.testing.assert_array_equal(resumed.stages[stage], labels, err_msg=f"{name}: {stage} after save {n}")
    return counter.saves


def test_fcmi_resumes_exactly_from_every_epoch(tmp_path, digits):
    saves = _check_every_stop(tmp_path, "fcmi", digits, epochs=4, warmup_epochs=1)
    assert saves == 3  # one per epoch but the last


@pytest.mark.parametrize("name, params", [
    ("infomin-club", {}),  # a critic with its own optimiser and generator
    ("infomin-slice", {}),  # slices drawn from the estimator's generator
    ("ifc", {}),  # discriminators inside the penalty module, step records in its extra state
])
def test_fcmi_style_methods_resume_exactly(tmp_path, synthetic2, name, params):
    _check_every_stop(tmp_path, name, synthetic2, epochs=4, warmup_epochs=1, **params)


def test_dec_resumes_exactly_in_pretraining_and_clustering(tmp_path, synthetic2):
    """AE pretraining (FCMI's loop), then DEC's own loop with its periodic target and SGD."""
    saves = _check_every_stop(tmp_path, "dec", synthetic2, pretrain_epochs=3, epochs=5, update_interval=3, tol=0.0)
    assert saves >= 6


def test_dfc_resumes_exactly_from_every_phase(tmp_path, synthetic2):
    """Pooled VAE, each group's VAE and DEC teacher, and the DFC iterations: stopped inside
    each and at each boundary, then resumed."""
    saves = _check_every_stop(tmp_path, "dfc", synthetic2, iters=20, log_every=5)
    assert saves >= 10


def test_checkpoint_of_another_cell_or_damaged_is_ignored(tmp_path):
    path = tmp_path / "c.pt"
    Checkpoint(path, cell_id="a", every_s=0).save("loop", {"epoch": 3})
    assert Checkpoint(path, cell_id="a").load("loop") == {"epoch": 3}
    assert Checkpoint(path, cell_id="b").load("loop") is None
    path.write_bytes(b"not a checkpoint")
    assert Checkpoint(path, cell_id="a").load("loop") is None
    assert Checkpoint().load("loop") is None and not Checkpoint().due()


def test_runner_resumes_a_killed_cell_and_removes_its_checkpoint(tmp_path, monkeypatch):
    """A cell killed part-way keeps its checkpoint and no record; the next run resumes it,
    gives the uninterrupted labels, counts earlier seconds and deletes the checkpoint."""
    method = Spec.make("method", "fcmi", {**registry.methods.get("fcmi").test_parameters, "epochs": 4,
                                          "warmup_epochs": 1})
    dataset = Spec.make("dataset", "synthetic", {"n_samples": 200})
    cells = build_grid([method], [dataset], [0])
    reference = RecordStore(tmp_path / "ref")
    run_grid(cells, reference, RunOptions(device="cpu"), progress=False)

    store = RecordStore(tmp_path / "out")
    options = RunOptions(device="cpu", checkpoint_dir=str(tmp_path / "out" / "checkpoints"), checkpoint_every_s=0.0)
    original = Checkpoint.save

    def save_then_die(self, stage, state):
        original(self, stage, state)
        if self.saves >= 2:
            raise Killed

    monkeypatch.setattr(Checkpoint, "save", save_then_die)
    with pytest.raises(Killed):
        run_grid(cells, store, options, progress=False)
    path = checkpoint_path(options, cells[0])
    assert path.exists() and store.records() == []
    monkeypatch.setattr(Checkpoint, "save", original)
    # a kill in the middle of a write leaves the writer's temporary file (bench.store.atomic_write_bytes)
    record_path = store.record_path(cells[0])
    record_path.parent.mkdir(parents=True)
    partial = [path.parent / f".{path.name}.x1.tmp", record_path.parent / f".{record_path.name}.x2.tmp",
               record_path.parent / f".{record_path.stem}.npz.x3.tmp"]
    for file in partial:
        file.write_bytes(b"half a file")

    summary = run_grid(cells, store, options, progress=False)
    assert len(summary.ran) == 1 and not summary.failed
    (record,) = store.records()
    (expected,) = reference.records()
    np.testing.assert_array_equal(store.labels(record), reference.labels(expected))
    assert record["resumed_after_seconds"] > 0
    assert record["train_seconds"] >= record["resumed_after_seconds"]
    assert not any(file.exists() for file in partial)
    assert not path.exists() and not path.parent.exists()  # no empty folders left behind
