"""``--dry-run``: the state of every cell as the runner will find it, and nothing written."""
import pytest

from bench import checkpoint, registry
from bench.plan import DONE, FAILED, NOT_APPLICABLE, RESUMES, TO_RUN, plan_grid, plan_table
from bench.runner import RunOptions, Spec, build_grid, checkpoint_path, run_grid
from bench.store import RecordStore
from tests.helpers import PLUGIN, cli


@pytest.fixture(autouse=True)
def _plugin():
    registry.load_plugin(str(PLUGIN))


def _snapshot(root):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _row(text, startswith):
    line = next(line for line in text.splitlines() if line.startswith(startswith))
    return [c.strip() for c in line.strip("|").split("|")]


def test_plan_names_each_cells_state_and_the_run_then_does_exactly_that(tmp_path, monkeypatch):
    """Finished, failed, not applicable, stopped with a checkpoint, a checkpoint of another
    configuration, never started: the plan says which, estimates the time left from the
    finished seeds, writes nothing, and a real run then skips and trains exactly those cells."""
    options = RunOptions(device="cpu", plugins=(str(PLUGIN),), checkpoint_dir=str(tmp_path / "checkpoints"))
    store = RecordStore(tmp_path)
    two_groups = Spec.make("dataset", "synthetic", {"n_samples": 200})
    three_groups = Spec.make("dataset", "synthetic", {"n_samples": 200, "n_groups": 3})
    method = Spec.make("method", "outside-method")
    monkeypatch.setenv("FCB_TEST_FAIL_SEED", "1")
    run_grid(build_grid([method], [two_groups, three_groups], [0, 1]), store, options, progress=False)
    monkeypatch.delenv("FCB_TEST_FAIL_SEED")

    cells = build_grid([method], [two_groups, three_groups], [0, 1, 2, 3])
    by_key = {(c.dataset.params, c.seed): c for c in cells}
    stopped = by_key[two_groups.params, 2]  # a cell killed part-way: its own checkpoint
    checkpoint.Checkpoint(checkpoint_path(options, stopped), stopped.cell_id, every_s=0).save("loop", {"epoch": 3})
    other = by_key[two_groups.params, 3]  # a checkpoint another configuration left: ignored
    checkpoint.Checkpoint(checkpoint_path(options, other), "another-cell", every_s=0).save("loop", {"epoch": 1})
    before = _snapshot(tmp_path)

    plan = plan_grid(cells, store, options)
    states = {(s.cell.dataset.params, s.cell.seed): s for s in plan.states}
    assert [states[two_groups.params, k].state for k in range(4)] == [DONE, FAILED, RESUMES, TO_RUN]
    assert [states[three_groups.params, k].state for k in range(4)] == [NOT_APPLICABLE] * 2 + [TO_RUN] * 2
    assert "deliberate failure for seed 1" in states[two_groups.params, 1].error
    done = store.get(by_key[two_groups.params, 0])
    assert plan.times[two_groups, method] == [(done["train_seconds"], "CPU")]
    saved = states[two_groups.params, 2].saved_seconds
    assert 0 <= saved < 10  # saved right after the checkpoint was made

    text = plan_table(plan)
    cols = _row(text, "| synthetic [n_samples=200] ")
    assert cols[2:7] == ["0", "–", f"2 ({saved:,.0f} s saved)", "1", "3"]
    left = 2 * done["train_seconds"] + max(done["train_seconds"] - saved, 0)
    assert cols[-2:] == [f"{done['train_seconds']:,.1f} CPU", f"{left:,.0f} CPU"]
    assert "8 cells: 1 done, 2 not applicable, 1 resume from a checkpoint, 1 failed (retried), 3 to run" in text
    assert _snapshot(tmp_path) == before  # nothing written, nothing moved

    summary = run_grid(cells, store, options, progress=False)
    trained = summary.ran + summary.failed + summary.not_applicable
    assert {(c.dataset.params, c.seed) for c, _ in trained} == {
        k for k, s in states.items() if s.state in (FAILED, RESUMES, TO_RUN)}
    assert {(c.dataset.params, c.seed) for c in summary.skipped} == {
        k for k, s in states.items() if s.state in (DONE, NOT_APPLICABLE)}
    resumed = store.get(stopped)
    assert resumed["status"] == "ok" and resumed["resumed_after_seconds"] == pytest.approx(saved)

    everything = plan_table(plan_grid(cells, store, options))
    assert "Training left: none." in everything and "8 cells: 4 done, 4 not applicable" in everything
    forced = plan_grid(cells, store, options, force=True)  # all rerun, timed by their own finished seeds
    assert {s.state for s in forced.states} == {TO_RUN}
    assert len(forced.times[two_groups, method]) == 4 and "no estimate" not in plan_table(forced)


def test_plan_counts_the_records_the_run_moves_and_times_by_them(tmp_path, monkeypatch):
    """After a default changed, the new default's cells are to run; the plan counts every
    older record the run moves (also of seeds outside the grid), marks the grid's seeds among
    them, and times the new default by them until a seed of its own has finished."""
    options = RunOptions(device="cpu", plugins=(str(PLUGIN),))
    store = RecordStore(tmp_path)
    dataset = Spec.make("dataset", "outside-paper-blobs")
    run_grid(build_grid([Spec.make("method", "outside-method")], [dataset], [0, 1, 2]), store, options, progress=False)
    older = {r["seed"]: r for r in store.records()}
    cls = registry.methods.get("outside-method")
    monkeypatch.setattr(cls, "parameters", {**cls.parameters, "offset": 2})
    cells = build_grid([Spec.make("method", "outside-method")], [dataset], [0, 3])
    plan = plan_grid(cells, store, options)
    assert [(s.state, s.moves_older) for s in plan.states] == [(TO_RUN, True), (TO_RUN, False)]
    assert plan.moves == 3 and sorted(plan.times[dataset, cells[0].method]) == sorted(
        (r["train_seconds"], "CPU") for r in older.values())
    text = plan_table(plan)
    assert "| 0* 3 " in text and "moves 3 finished records" in text
    mean = sum(r["train_seconds"] for r in older.values()) / 3
    assert _row(text, "| outside-paper-blobs")[-2] == f"{mean:,.1f} CPU (older default)"
    assert f"Training left: {2 * mean:,.0f} s as run on CPU" in text
    assert len(run_grid(cells, store, options, progress=False).relocated) == plan.moves
    monkeypatch.setattr(cls, "parameters", {**cls.parameters, "offset": 3})  # nothing to go by
    assert "Training left: no estimate" in plan_table(plan_grid(
        build_grid([Spec.make("method", "outside-method")], [Spec.make("dataset", "synthetic", {})], [0]), store,
        options))


def test_dry_run_from_the_command_line_needs_no_device_and_writes_nothing(tmp_path):
    args = ["--methods", "kmeans", "--param", "n_init=1", "--datasets", "synthetic", "--dataset-param",
            "n_samples=150", "--quiet", "--no-figures", "--out", tmp_path]
    assert cli(*args, "--seeds", "0", "--device", "cpu").returncode == 0
    before = _snapshot(tmp_path)
    res = cli(*args, "--seeds", "0", "1", "--device", "cuda:7", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert _row(res.stdout, "| synthetic")[2:7] == ["0", "–", "–", "–", "1"]
    assert "2 cells: 1 done" in res.stdout and "Nothing was trained or written" in res.stdout
    assert _snapshot(tmp_path) == before
    for wrong in (["--methods", "no-such-method"], ["--device", "tpu"], ["--device", "cuda:x"], ["--report-only"]):
        bad = cli(*args, *wrong, "--dry-run")
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, wrong
        assert "accepted" in bad.stderr
