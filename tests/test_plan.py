"""``--dry-run``: the state of every cell as the runner will find it, and nothing written."""
import pytest

from bench import checkpoint, registry
from bench.plan import DONE, FAILED, NOT_APPLICABLE, RESUMES, TO_RUN, cell_states, plan_table
from bench.runner import RunOptions, Spec, build_grid, checkpoint_path, run_grid
from bench.store import RecordStore
from tests.helpers import PLUGIN, cli


@pytest.fixture(autouse=True)
def _plugin():
    registry.load_plugin(str(PLUGIN))


def _snapshot(root):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


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
    ckpt = checkpoint.Checkpoint(checkpoint_path(options, stopped), stopped.cell_id, every_s=0)
    ckpt.save("loop", {"epoch": 3})
    other = by_key[two_groups.params, 3]  # a checkpoint another configuration left: ignored
    checkpoint.Checkpoint(checkpoint_path(options, other), "another-cell", every_s=0).save("loop", {"epoch": 1})
    before = _snapshot(tmp_path)

    states = {(s.cell.dataset.params, s.cell.seed): s for s in cell_states(cells, store, options)}
    assert [states[two_groups.params, k].state for k in range(4)] == [DONE, FAILED, RESUMES, TO_RUN]
    assert [states[three_groups.params, k].state for k in range(4)] == [NOT_APPLICABLE] * 2 + [TO_RUN] * 2
    assert "deliberate failure for seed 1" in states[two_groups.params, 1].error
    done = store.get(by_key[two_groups.params, 0])
    assert states[two_groups.params, 0].train_seconds == done["train_seconds"]
    saved = states[two_groups.params, 2].train_seconds
    assert 0 <= saved < 10  # saved right after the checkpoint was made

    text = plan_table(list(states.values()))
    row = next(line for line in text.splitlines() if line.startswith("| synthetic [n_samples=200] "))
    cols = [c.strip() for c in row.strip("|").split("|")]
    assert cols[2:7] == ["0", "–", f"2 ({saved:,.0f} s saved)", "1", "3"]
    left = 2 * done["train_seconds"] + max(done["train_seconds"] - saved, 0)
    assert cols[-1] == f"{left:,.0f}"
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


def test_plan_marks_seeds_whose_folder_holds_an_older_default(tmp_path, monkeypatch):
    """After a default changed, the new default's cells are to run, the plan says the run will
    first move the older configuration's records aside, and their train times stand in for the
    estimate (there is no finished seed of the new default yet)."""
    options = RunOptions(device="cpu", plugins=(str(PLUGIN),))
    store = RecordStore(tmp_path)
    dataset = Spec.make("dataset", "outside-paper-blobs")
    run_grid(build_grid([Spec.make("method", "outside-method")], [dataset], [0]), store, options, progress=False)
    cls = registry.methods.get("outside-method")
    monkeypatch.setattr(cls, "parameters", {**cls.parameters, "offset": 2})
    cells = build_grid([Spec.make("method", "outside-method")], [dataset], [0, 1])
    states = cell_states(cells, store, options)
    assert [(s.state, s.moves_older) for s in states] == [(TO_RUN, True), (TO_RUN, False)]
    (older,) = store.records()
    assert states[0].older_seconds == older["train_seconds"] and states[1].older_seconds is None
    text = plan_table(states)
    assert "| 0* 1 " in text and "moves 1 finished records (seeds marked *)" in text
    row = next(line for line in text.splitlines() if line.startswith("| outside-paper-blobs"))
    assert [c.strip() for c in row.strip("|").split("|")][-3:-1] == [f"{older['train_seconds']:,.1f} (older default)",
                                                                     "CPU"]
    assert f"Training left: {2 * older['train_seconds']:,.0f} s as run on CPU" in text
    monkeypatch.setattr(cls, "parameters", {**cls.parameters, "offset": 3})  # nothing to go by
    assert "Training left: no estimate" in plan_table(cell_states(
        build_grid([Spec.make("method", "outside-method")], [Spec.make("dataset", "synthetic", {})], [0]), store,
        options))


def test_dry_run_from_the_command_line_needs_no_device_and_writes_nothing(tmp_path):
    args = ["--methods", "kmeans", "--param", "n_init=1", "--datasets", "synthetic", "--dataset-param",
            "n_samples=150", "--quiet", "--no-figures", "--out", tmp_path]
    assert cli(*args, "--seeds", "0", "--device", "cpu").returncode == 0
    before = _snapshot(tmp_path)
    res = cli(*args, "--seeds", "0", "1", "--device", "cuda:7", "--dry-run")
    assert res.returncode == 0, res.stderr
    row = next(line for line in res.stdout.splitlines() if line.startswith("| synthetic"))
    assert [c.strip() for c in row.strip("|").split("|")][2:7] == ["0", "–", "–", "–", "1"]
    assert "2 cells: 1 done" in res.stdout and "Nothing was trained or written" in res.stdout
    assert _snapshot(tmp_path) == before
    for wrong in (["--methods", "no-such-method"], ["--device", "tpu"], ["--device", "cuda:x"]):
        bad = cli(*args, *wrong, "--dry-run")
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, wrong
        assert "accepted" in bad.stderr
