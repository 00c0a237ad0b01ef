"""The runner: records, resume, failures, NaN losses, not-applicable cells, recomputation."""
import json
import os
import shutil

import numpy as np
import pytest

from bench import registry
from bench.report import build_report
from bench.runner import RunOptions, Spec, build_grid, run_grid
from bench.store import RecordStore
from tests.helpers import PLUGIN

OPTS = RunOptions(device="cpu", plugins=(str(PLUGIN),))


@pytest.fixture(autouse=True)
def _plugin():
    registry.load_plugin(str(PLUGIN))


def _grid(seeds=(0, 1), methods=(("kmeans", {"n_init": 1, "n_iter": 10}),), **data_params):
    dataset = Spec.make("dataset", "synthetic", {"n_samples": 200, **data_params})
    return build_grid([Spec.make("method", m, p) for m, p in methods], [dataset], list(seeds))


def test_records_are_complete_and_metrics_recomputable(tmp_path):
    store = RecordStore(tmp_path)
    cells = _grid()
    summary = run_grid(cells, store, OPTS, progress=False)
    assert len(summary.ran) == 2 and not summary.failed
    records = store.records()
    assert [r["seed"] for r in records] == [0, 1]
    for r in records:
        assert r["status"] == "ok"
        for key in ("versions", "git_commit", "device", "jobs", "wall_seconds", "train_seconds", "metrics"):
            assert key in r, key
        assert {"torch", "numpy", "python"} <= set(r["versions"])
        labels = store.labels(r)
        assert labels.shape == (200,)
        recomputed = store.recompute_metrics(r)
        assert recomputed == pytest.approx(r["metrics"])


def test_rerun_skips_finished_cells_and_force_reruns(tmp_path):
    store = RecordStore(tmp_path)
    cells = _grid()
    run_grid(cells, store, OPTS, progress=False)
    first = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("seed*.json")}
    again = run_grid(cells, store, OPTS, progress=False)
    assert len(again.skipped) == 2 and not again.ran
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("seed*.json")} == first
    forced = run_grid(cells, store, OPTS, force=True, progress=False)
    assert len(forced.ran) == 2


def test_same_seed_same_labels_across_runs(tmp_path):
    a, b = RecordStore(tmp_path / "a"), RecordStore(tmp_path / "b")
    cells = _grid(seeds=(3,))
    run_grid(cells, a, OPTS, progress=False)
    run_grid(cells, b, OPTS, progress=False)
    np.testing.assert_array_equal(a.labels(a.records()[0]), b.labels(b.records()[0]))


def test_cell_key_is_independent_of_parameter_order():
    dataset = _grid()[0].dataset
    one = Spec.make("method", "kmeans", {"n_init": 2, "n_iter": 5})
    two = Spec.make("method", "kmeans", {"n_iter": 5, "n_init": 2})
    assert build_grid([one], [dataset], [0])[0].cell_id == build_grid([two], [dataset], [0])[0].cell_id
    assert Spec.make("method", "kmeans", {"n_init": 3}).key != one.key


def test_failed_cell_is_recorded_reported_and_retried(tmp_path, monkeypatch):
    store = RecordStore(tmp_path)
    cells = _grid(methods=(("outside-method", {}),))
    monkeypatch.setenv("FCB_TEST_FAIL_SEED", "1")
    summary = run_grid(cells, store, OPTS, progress=False)
    assert len(summary.failed) == 1
    failed = store.get(cells[1])
    assert failed["status"] == "failed" and "deliberate failure for seed 1" in failed["error"]
    assert "labels_file" not in failed
    text = build_report(store, tmp_path / "lb.md", tmp_path / "fig", figures=False)
    assert "1/2 (1 failed)" in text  # never counted as a result
    monkeypatch.delenv("FCB_TEST_FAIL_SEED")
    retry = run_grid(cells, store, OPTS, progress=False)
    assert len(retry.skipped) == 1 and len(retry.ran) == 1
    assert store.get(cells[1])["status"] == "ok"


def test_dataset_that_cannot_load_is_reported_not_crashing(tmp_path, monkeypatch):
    """Every cell of a dataset whose files are missing fails; the leaderboard still builds and
    says why (the report once crashed formatting the unknown sample count)."""
    monkeypatch.setenv("FAIRCLUSTERBENCH_OFFLINE", "1")
    empty = tmp_path / "no-data"
    empty.mkdir()
    store = RecordStore(tmp_path / "out")
    cells = build_grid([Spec.make("method", "kmeans", {"n_init": 1})], [Spec.make("dataset", "mtfl-pixels", {})], [0])
    summary = run_grid(cells, store, RunOptions(device="cpu", data_dir=str(empty)), progress=False)
    assert len(summary.failed) == 1
    text = build_report(store, tmp_path / "lb.md", tmp_path / "fig", figures=False)
    assert "? samples" in text and "**failed**: DatasetNotFound" in text


def test_leaderboard_names_the_device_of_each_row(tmp_path):
    store = RecordStore(tmp_path)
    run_grid(_grid(), store, OPTS, progress=False)
    text = build_report(store, tmp_path / "lb.md", tmp_path / "fig", figures=False)
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    assert header.rstrip(" |").endswith("device")
    row = next(line for line in text.splitlines() if line.startswith("| kmeans"))
    assert row.rstrip(" |").endswith("CPU")
    # cells that shared the machine say so: their train times are not single-process times
    shared = RecordStore(tmp_path / "shared")
    run_grid(_grid(), shared, RunOptions(device="cpu", plugins=OPTS.plugins, jobs=2), progress=False)
    text = build_report(shared, tmp_path / "lb2.md", tmp_path / "fig", figures=False)
    row = next(line for line in text.splitlines() if line.startswith("| kmeans"))
    assert row.rstrip(" |").endswith("CPU ×2")


def test_nan_loss_fails_the_cell(tmp_path, monkeypatch):
    monkeypatch.setenv("FCB_TEST_NAN_SEED", "0")
    store = RecordStore(tmp_path)
    summary = run_grid(_grid(seeds=(0,), methods=(("outside-method", {}),)), store, OPTS, progress=False)
    assert len(summary.failed) == 1
    assert "non-finite loss at epoch 1" in store.records()[0]["error"]


def test_not_applicable_is_shown_not_failed(tmp_path):
    store = RecordStore(tmp_path)
    cells = _grid(seeds=(0,), methods=(("outside-method", {}), ("kmeans", {"n_init": 1})), n_groups=3)
    summary = run_grid(cells, store, OPTS, progress=False)
    assert len(summary.not_applicable) == 1 and not summary.failed
    text = build_report(store, tmp_path / "lb.md", tmp_path / "fig", figures=False)
    row = next(line for line in text.splitlines() if line.startswith("| outside-method"))
    assert "| n/a " in row and "two groups" not in row  # the reason is under the table
    assert "- outside-method: n/a: outside-method handles two groups only" in text
    # a not-applicable cell is final: not retried
    assert len(run_grid(cells, store, OPTS, progress=False).skipped) == 2


def test_single_attribute_methods_see_the_primary_attribute_only(tmp_path):
    store = RecordStore(tmp_path)
    run_grid(_grid(seeds=(0,), n_attributes=3), store, OPTS, progress=False)
    rec = store.records()[0]
    assert rec["attributes"] == ["g0", "g1", "g2"] and rec["attributes_used"] == ["g0"]
    assert {"mnce[g1]", "mnce[joint]", "balance_worst", "mi_sum"} <= set(rec["metrics"])


def test_unknown_record_files_do_not_break_the_report(tmp_path):
    store = RecordStore(tmp_path)
    run_grid(_grid(seeds=(0,)), store, OPTS, progress=False)
    rec_path = next(tmp_path.rglob("seed0.json"))
    shutil.copy(rec_path, rec_path.with_name("seed0.json.tmp"))  # leftover of a killed writer
    assert len(store.records()) == 1
    assert json.loads(rec_path.read_text())["status"] == "ok"


def test_report_sets_paper_numbers_beside_ours_for_default_configurations(tmp_path):
    store = RecordStore(tmp_path)
    dataset = Spec.make("dataset", "outside-paper-blobs")
    cells = build_grid([Spec.make("method", "outside-method"), Spec.make("method", "outside-method", {"offset": 1})],
                       [dataset], [0, 1])
    run_grid(cells, store, OPTS, progress=False)
    text = build_report(store, tmp_path / "lb.md", tmp_path / "fig", figures=False)
    table = text[text.index("Compared with the papers"):]
    acc = np.mean([r["metrics"]["acc"] for r in store.records() if r["method"]["label"] == "outside-method"]) * 100
    row = next(line for line in table.splitlines() if line.startswith("| outside-method ") and "| ACC " in line)
    cells_ = [c.strip() for c in row.strip("|").split("|")]
    assert cells_[3] == "96.7" and cells_[5].startswith("FCMI (Zeng et al., CVPR 2023), Table 1")
    assert float(cells_[4]) == pytest.approx(acc - 96.7, abs=0.051)
    assert "outside-method [offset=1]" not in table  # only default configurations are compared


def test_a_record_made_under_an_older_default_is_labelled_by_its_value(tmp_path, monkeypatch):
    """A default that changed after the run (as DFC's resize did) must not let the old record
    pass for today's default configuration: its label shows the stored value, and it leaves
    the comparison with the papers."""
    store = RecordStore(tmp_path)
    cells = build_grid([Spec.make("method", "outside-method")], [Spec.make("dataset", "outside-paper-blobs")], [0])
    run_grid(cells, store, OPTS, progress=False)
    text = build_report(store, tmp_path / "lb.md", tmp_path / "fig", figures=False)
    assert "| outside-method " in text and "Compared with the papers" in text
    cls = registry.methods.get("outside-method")
    monkeypatch.setattr(cls, "parameters", {**cls.parameters, "offset": 2})
    text = build_report(store, tmp_path / "lb.md", tmp_path / "fig", figures=False)
    assert "| outside-method [offset=0] " in text and "| outside-method  " not in text
    assert "Compared with the papers" not in text
    assert store.records()[0]["method"]["label"] == "outside-method"  # the record itself is untouched


def test_report_prints_our_notes_on_differences_under_the_comparison(tmp_path, monkeypatch):
    from bench import papers

    notes = tmp_path / "notes.csv"
    notes.write_text('dataset,method,note\nmnist-usps,FCMI,"centroids differ, see X"\nmnist-usps,DFC,not shown\n')
    monkeypatch.setattr(papers, "PAPER_NOTES", notes)
    papers._notes.cache_clear()
    try:
        store = RecordStore(tmp_path / "out")
        run_grid(build_grid([Spec.make("method", "outside-method")], [Spec.make("dataset", "outside-paper-blobs")], [0]),
                 store, OPTS, progress=False)
        text = build_report(store, tmp_path / "lb.md", tmp_path / "fig", figures=False)
    finally:
        papers._notes.cache_clear()
    assert "- **outside-method**: centroids differ, see X" in text
    assert "not shown" not in text  # only notes of methods in the table


def test_every_note_on_differences_refers_to_reported_numbers():
    from bench import papers

    papers._notes.cache_clear()
    notes = papers._notes()
    assert len(notes) > 0 and notes.note.str.len().min() > 20
    for _, row in notes.iterrows():
        assert len(papers.reported(row.dataset, row.method)), (row.dataset, row.method)


def test_embeddings_are_stored_only_on_request(tmp_path):
    """Labels are all the metrics need; embeddings (megabytes a run) are opt-in."""
    fcmi = (("fcmi", {"epochs": 2, "warmup_epochs": 1, "batch_size": 64, "kmeans_iter": 5, "kmeans_restarts": 1,
                      "width": 0.125}),)
    for save, folder in ((False, "plain"), (True, "with")):
        store = RecordStore(tmp_path / folder)
        opts = RunOptions(device="cpu", plugins=OPTS.plugins, save_embeddings=save)
        summary = run_grid(_grid(seeds=(0,), methods=fcmi), store, opts, progress=False)
        assert len(summary.ran) == 1, summary.failed
        (record,) = store.records()
        with np.load(store.runs / record["dataset"]["key"] / record["method"]["key"] / record["labels_file"]) as f:
            assert ("embedding" in f.files) is save
            assert f["labels"].shape == (200,)


def test_intermediate_stages_are_stored_and_scored_like_the_final_labels(tmp_path):
    """FCMI's warm-up clustering and DFC's k-means start: stored beside the final labels, scored
    in the record, recomputable; the final labels stay the result."""
    tiny = {"fcmi": {"epochs": 3, "warmup_epochs": 1, "batch_size": 64, "kmeans_iter": 5, "kmeans_restarts": 1,
                     "width": 0.125},
            "dfc": {**registry.methods.get("dfc").test_parameters}}
    store = RecordStore(tmp_path)
    methods = (*tiny.items(), ("kmeans", {"n_init": 1, "n_iter": 10}))  # kmeans keeps no stage
    summary = run_grid(_grid(seeds=(0,), methods=methods), store, OPTS, progress=False)
    assert len(summary.ran) == 3, summary.failed
    stage_of = {"fcmi": "warmup", "dfc": "start"}
    for record in store.records():
        if record["method"]["name"] == "kmeans":
            assert "stages" not in record
            continue
        stage = stage_of[record["method"]["name"]]
        assert set(record["stages"]) == {stage}
        labels = store.labels(record, stage)
        assert labels.shape == (200,) and labels.min() >= 0 and labels.max() < record["n_clusters"]
        assert store.recompute_metrics(record, stage) == pytest.approx(record["stages"][stage])
        assert store.recompute_metrics(record) == pytest.approx(record["metrics"])
    text = build_report(store, tmp_path / "lb.md", tmp_path / "fig", figures=False)
    table = text.split("Intermediate stages")[1].split("\n\n## ")[0]
    assert "| kmeans " not in table and len([ln for ln in table.splitlines() if ln.startswith("| ")]) == 3
    for record in store.records():
        if record["method"]["name"] == "kmeans":
            continue
        stage = stage_of[record["method"]["name"]]
        row = next(line for line in table.splitlines() if line.startswith(f"| {record['method']['label']} ")
                   and f"| {stage} " in line)
        assert f"| {100 * record['stages'][stage]['acc']:.1f} " in row     # percent, like the final ACC
        assert f"| {100 * record['metrics']['acc']:.1f} " in row


def test_work_reused_from_an_earlier_cell_is_charged_to_every_cell_that_reuses_it(tmp_path):
    """SpFC builds its k-NN graph once per worker and later cells reuse it: each of those
    reports the build time as reused_seconds, which the runner adds to its train_seconds, so
    no cell's time depends on what ran before it in the worker."""
    from methods import _fair_classical as fc

    fc._LAST_GRAPH.clear()
    store = RecordStore(tmp_path)
    methods = (("spfc-unnorm", {}), ("spfc-norm", {}))
    summary = run_grid(_grid(seeds=(0, 1), methods=methods), store, OPTS, progress=False)
    assert len(summary.ran) == 4, summary.failed
    records = store.records()
    builder = [r for r in records if "reused_seconds" not in r]
    reusers = [r for r in records if "reused_seconds" in r]
    assert len(builder) == 1 and len(reusers) == 3  # one graph for the two variants and two seeds
    graph_seconds = reusers[0]["reused_seconds"]
    assert graph_seconds > 0 and all(r["reused_seconds"] == graph_seconds for r in reusers)
    assert graph_seconds < builder[0]["train_seconds"]
    assert all(r["train_seconds"] > graph_seconds for r in reusers)


def test_bad_stage_labels_fail_the_cell_with_the_reason(tmp_path, monkeypatch):
    import methods.kmeans as km
    from bench import MethodOutput

    real = km.KMeansBaseline.fit

    def fit(self, data, seed, device):
        out = real(self, data, seed, device)
        return MethodOutput(labels=out.labels, stages={"half": out.labels[:10]})

    monkeypatch.setattr(km.KMeansBaseline, "fit", fit)
    store = RecordStore(tmp_path)
    summary = run_grid(_grid(seeds=(0,)), store, OPTS, progress=False)
    assert len(summary.failed) == 1
    assert "stage 'half': method returned labels of shape (10,), expected (200,)" in store.records()[0]["error"]

    def fit_bad_name(self, data, seed, device):
        out = real(self, data, seed, device)
        return MethodOutput(labels=out.labels, stages={"a b": out.labels})

    monkeypatch.setattr(km.KMeansBaseline, "fit", fit_bad_name)
    store = RecordStore(tmp_path / "named")
    summary = run_grid(_grid(seeds=(0,)), store, OPTS, progress=False)
    assert len(summary.failed) == 1
    assert "stage name 'a b' must be an identifier" in store.records()[0]["error"]


def test_trade_off_series_join_only_configurations_that_differ_in_the_fairness_weight():
    from bench.report import _sweep_series

    def params(**kw):
        return Spec.make("method", "fcmi", {"epochs": 50, **kw}).param_dict

    a, b = _sweep_series("fcmi", params(beta=0.1)), _sweep_series("fcmi", params(beta=0.5))
    assert a == ("fcmi [epochs=50]", 0.1, "beta") and b == ("fcmi [epochs=50]", 0.5, "beta")
    assert _sweep_series("fcmi", params())[0] == "fcmi [epochs=50]"  # the default weight joins the sweep
    assert _sweep_series("fcmi", params(kmeans_seed="fixed"))[0] == "fcmi [epochs=50, kmeans_seed=fixed]"
    label, weight, weight_key = _sweep_series("not-registered", {"x": 1})
    assert label == "not-registered" and np.isnan(weight) and weight_key == ""


def test_report_flags_runs_whose_soft_assignments_collapsed(tmp_path):
    """A run whose last-epoch H(C|X) is at least 90 % of log K is listed under "Collapsed soft
    assignments" with its seed and ratio; a run below is not; methods without the history key
    are never listed."""
    store = RecordStore(tmp_path)
    fcmi = Spec.make("method", "fcmi", registry.methods.get("fcmi").test_parameters)
    cells = build_grid([fcmi, Spec.make("method", "kmeans", {"n_init": 1, "n_iter": 10})],
                       [Spec.make("dataset", "synthetic", {"n_samples": 200})], [0, 1])
    run_grid(cells, store, OPTS, progress=False)
    log_k = np.log(store.records()[0]["n_clusters"])
    for path in tmp_path.rglob("seed*.json"):
        rec = json.loads(path.read_text())
        if rec["method"]["name"] == "fcmi":
            assert "h_c_given_x" in rec["history"][-1]
            rec["history"][-1]["h_c_given_x"] = (0.95 if rec["seed"] == 1 else 0.5) * log_k
            path.write_text(json.dumps(rec))
    text = build_report(store, tmp_path / "lb.md", tmp_path / "fig", figures=False)
    notes = text[text.index("Collapsed soft assignments"):].split("\n\n")[1].splitlines()
    assert notes == ["- fcmi [test config]: seed 1 (0.95)"]


def test_report_times_the_fairness_term_per_device(tmp_path):
    """The cost table lists each method that times its fairness term (infomin, IFC), with the
    mean of the history's per-epoch ``fair_step_s`` in milliseconds, the estimator's fit only
    where there is one, and never averages runs from different devices; FCMI (no timing) and
    k-means are not listed."""
    store = RecordStore(tmp_path)
    specs = [Spec.make("method", m, registry.methods.get(m).test_parameters) for m in ("infomin-slice", "ifc", "fcmi")]
    cells = build_grid(specs, [Spec.make("dataset", "synthetic", {"n_samples": 200})], [0, 1])
    run_grid(cells, store, OPTS, progress=False)
    expected = {}
    for path in tmp_path.rglob("seed*.json"):
        rec = json.loads(path.read_text())
        if rec["method"]["name"] == "ifc" and rec["seed"] == 1:
            rec["jobs"] = 2  # as if it had shared the cores with another job
        if rec["method"]["name"] == "infomin-slice":  # epochs of unequal cost: a mean, not a median
            last = rec["history"][-1]
            rec["history"] += [{**last, "fair_step_s": 3 * last["fair_step_s"]},
                               {**last, "fair_step_s": 10 * last["fair_step_s"]}]
        path.write_text(json.dumps(rec))
        steps = [h["fair_step_s"] for h in rec["history"] if "fair_step_s" in h]
        expected[rec["method"]["name"], rec["seed"]] = 1000 * np.mean(steps) if steps else None
        if steps:  # what the term read in its last epoch, beside the exact plug-in I(Q;G)
            read = [(h["fair"], h["mi_cg"]) for h in rec["history"] if "fair_step_s" in h][-1]
            expected["read", rec["method"]["name"], rec["seed"]] = read
    assert expected["fcmi", 0] is None and expected["infomin-slice", 0] > 0 and expected["ifc", 0] > 0
    text = build_report(store, tmp_path / "lb.md", tmp_path / "fig", figures=False)
    table = text[text.index("Cost of the fairness term"):].split("\n\n")[1].splitlines()[2:]
    rows = {(c[0], c[1]): c[2:] for c in ([x.strip() for x in line.strip("|").split("|")] for line in table)}
    assert set(rows) == {("ifc [test config]", "CPU"), ("ifc [test config]", "CPU ×2"),
                         ("infomin-slice [test config]", "CPU")}
    slice_ms = [expected["infomin-slice", s] for s in (0, 1)]
    assert rows["infomin-slice [test config]", "CPU"][:2] == [
        "2", f"{np.mean(slice_ms):.2f} ± {np.std(slice_ms, ddof=1):.2f}"]
    assert rows["infomin-slice [test config]", "CPU"][2] != "–"  # the sliced estimator has a fit step
    assert rows["ifc [test config]", "CPU"][:3] == ["1", f"{expected['ifc', 0]:.2f}", "–"]
    assert rows["ifc [test config]", "CPU ×2"][:2] == ["1", f"{expected['ifc', 1]:.2f}"]
    for column, which in ((4, 0), (5, 1)):  # D̂ last, I(Q;G) last: means over the seeds
        values = [expected["read", "infomin-slice", s][which] for s in (0, 1)]
        assert rows["infomin-slice [test config]", "CPU"][column] == f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def test_a_changed_default_moves_old_records_aside_instead_of_overwriting_them(tmp_path, monkeypatch):
    """Records of a configuration that was the default when it ran share the plain folder with
    today's default (``runs/<dataset>/<method>/``). A run of the new default moves every one of
    them (not only the seeds it reruns) to the folder their own configuration names, with their
    labels; nothing is overwritten, the report keeps both configurations apart, metrics still
    recompute, and the old configuration's cells count as done."""
    store = RecordStore(tmp_path)
    method, dataset = Spec.make("method", "outside-method"), Spec.make("dataset", "outside-paper-blobs")
    run_grid(build_grid([method], [dataset], [0, 1]), store, OPTS, progress=False)
    old = {r["seed"]: r for r in store.records()}
    cls = registry.methods.get("outside-method")
    monkeypatch.setattr(cls, "parameters", {**cls.parameters, "offset": 2})
    new = Spec.make("method", "outside-method")
    assert new.key == old[0]["method"]["key"] == "outside-method" and new.param_dict != method.param_dict
    summary = run_grid(build_grid([new], [dataset], [0]), store, OPTS, progress=False)
    assert len(summary.ran) == 1 and len(summary.relocated) == 2
    records = store.records()
    assert len(records) == 3
    moved = [r for r in records if r["method"]["params"]["offset"] == 0]
    assert {r["seed"] for r in moved} == {0, 1}
    assert {r["method"]["key"] for r in moved} == {Spec.from_json("method", old[0]["method"]).key} != {"outside-method"}
    for r in moved:
        assert r["cell_id"] == old[r["seed"]]["cell_id"] and r["relocated_from"] == [
            f"outside-paper-blobs/outside-method/seed{r['seed']}.json"]
        assert r["metrics"] == pytest.approx(store.recompute_metrics(r))
    # the old configuration is found where it now lives: asking for it again runs nothing
    again = run_grid(build_grid([Spec.make("method", "outside-method", {"offset": 0})], [dataset], [0, 1]), store,
                     OPTS, progress=False)
    assert len(again.skipped) == 2 and not again.ran and not again.relocated
    text = build_report(store, tmp_path / "lb.md", tmp_path / "fig", figures=False)
    assert "| outside-method [offset=0] | 2/2 " in text and "| outside-method            | 1/2 " in text


def test_a_changed_dataset_default_moves_its_records_and_truth_aside(tmp_path, monkeypatch):
    """The same for a dataset whose default changed: its old records go to the dataset's own
    folder with a copy of the truth they were scored against."""
    store = RecordStore(tmp_path)
    ds_cls = registry.datasets.get("outside-paper-blobs")
    monkeypatch.setattr(ds_cls, "parameters", {"variant": 1})
    method = Spec.make("method", "outside-method")
    run_grid(build_grid([method], [Spec.make("dataset", "outside-paper-blobs")], [0]), store, OPTS, progress=False)
    monkeypatch.setattr(ds_cls, "parameters", {"variant": 2})
    summary = run_grid(build_grid([method], [Spec.make("dataset", "outside-paper-blobs")], [0]), store, OPTS,
                       progress=False)
    assert len(summary.ran) == 1 and len(summary.relocated) == 1
    old = next(r for r in store.records() if r["dataset"]["params"] == {"variant": 1})
    assert old["dataset"]["key"].startswith("outside-paper-blobs-")
    assert (tmp_path / "runs" / old["dataset"]["key"] / "truth.npz").exists()
    assert old["metrics"] == pytest.approx(store.recompute_metrics(old))


def test_records_made_before_a_parameter_existed_keep_their_own_row(tmp_path, monkeypatch):
    """A record that lacks a parameter declared later shares today's default label; once the
    new default has run too, the old row reads ``[before <parameter>]`` and leaves the
    comparison with the papers to the new one."""
    store = RecordStore(tmp_path)
    dataset = Spec.make("dataset", "outside-paper-blobs")
    run_grid(build_grid([Spec.make("method", "outside-method")], [dataset], [0]), store, OPTS, progress=False)
    cls = registry.methods.get("outside-method")
    monkeypatch.setattr(cls, "parameters", {**cls.parameters, "scale": 1})
    text = build_report(store, tmp_path / "lb.md", tmp_path / "fig", figures=False)
    table = text[text.index("## outside-paper-blobs"):text.index("Compared with the papers")]
    assert "| outside-method " in table and "[before scale]" not in text  # alone, it keeps its label
    assert "made before scale existed" in text  # ... and the overview marks its cell with a dagger
    summary = run_grid(build_grid([Spec.make("method", "outside-method")], [dataset], [0]), store, OPTS,
                       progress=False)
    assert len(summary.relocated) == 1 and len(store.records()) == 2
    text = build_report(store, tmp_path / "lb.md", tmp_path / "fig", figures=False)
    table = text[:text.index("Compared with the papers")]
    assert "| outside-method [before scale] | 1/1 " in table and "| outside-method                | 1/1 " in table
    comparison = text[text.index("Compared with the papers"):]
    assert "| outside-method " in comparison and "before scale" not in comparison
    from bench.report import _series, _summary, records_frame  # the figures name their series as the rows

    assert sorted(_series(_summary(records_frame(store.records()), ["acc"]))) == [
        "outside-method", "outside-method [before scale]"]


def test_overview_sets_each_default_configuration_against_each_dataset(tmp_path, monkeypatch):
    """The overview at the top of the leaderboard: ACC / NMI / MNCE means of default
    configurations only, "(k/n)" where seeds are missing, n/a where a method cannot run, "–"
    where only another configuration ran; absent when nothing ran at the defaults."""
    store = RecordStore(tmp_path)
    two = Spec.make("dataset", "synthetic", {})
    three = Spec.make("dataset", "outside-paper-blobs")
    run_grid(build_grid([Spec.make("method", "kmeans", {"n_init": 1})], [two], [0, 1]), store, OPTS,
             progress=False)  # not the default: "–" for kmeans on synthetic
    quick = build_report(store, tmp_path / "lb.md", tmp_path / "fig", figures=False)
    assert "## Overview" not in quick
    run_grid(build_grid([Spec.make("method", "kmeans")], [three], [0, 1]), store, OPTS, progress=False)
    run_grid(build_grid([Spec.make("method", "outside-method")], [two], [0]), store, OPTS, progress=False)
    text = build_report(store, tmp_path / "lb.md", tmp_path / "fig", figures=False)
    table = text[text.index("## Overview"):].split("\n\n")[2].splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    rows = {c[0]: dict(zip(header[1:], c[1:])) for c in
            ([x.strip() for x in line.strip("|").split("|")] for line in table[2:])}
    assert header == ["method", "outside-paper-blobs", "synthetic"] and set(rows) == {"kmeans", "outside-method"}
    runs = [r for r in store.records() if r["method"]["params"].get("n_init") == 10]
    expected = " / ".join(f"{100 * np.mean([r['metrics'][k] for r in runs]):.1f}" for k in ("acc", "nmi", "mnce"))
    assert rows["kmeans"] == {"outside-paper-blobs": expected, "synthetic": "–"}
    assert rows["outside-method"]["outside-paper-blobs"] == "–"
    assert rows["outside-method"]["synthetic"].endswith(" (1/2)")
    method_cls = registry.methods.get("outside-method")  # a parameter declared after the runs
    monkeypatch.setattr(method_cls, "parameters", {**method_cls.parameters, "scale": 1})
    text = build_report(store, tmp_path / "lb3.md", tmp_path / "fig", figures=False)
    overview = text[text.index("## Overview"):text.index("## outside-paper-blobs")]
    assert rows["outside-method"]["synthetic"].replace(" (1/2)", " † (1/2)") in overview
    assert "† outside-method on synthetic: made before scale existed" in overview
    assert f"| {expected} " in overview  # kmeans, which did not change, is not marked
    ds_cls = registry.datasets.get("synthetic")  # three groups by default: outside-method is not applicable
    monkeypatch.setattr(ds_cls, "parameters", {**ds_cls.parameters, "n_groups": 3})
    na = RecordStore(tmp_path / "na")
    run_grid(build_grid([Spec.make("method", "outside-method")], [Spec.make("dataset", "synthetic", {})], [0]),
             na, OPTS, progress=False)
    text = build_report(na, tmp_path / "lb2.md", tmp_path / "fig", figures=False)
    assert "| outside-method | n/a " in text[text.index("## Overview"):]


def test_truth_follows_a_changed_dataset_default(tmp_path, monkeypatch):
    """When a dataset's default changes what it loads, the new default's records are scored
    against the new truth and stay recomputable; the old records keep theirs."""
    store = RecordStore(tmp_path)
    cls = registry.datasets.get("synthetic")
    kmeans = Spec.make("method", "kmeans", {"n_init": 1, "n_iter": 10})
    run_grid(build_grid([kmeans], [Spec.make("dataset", "synthetic")], [0]), store, OPTS, progress=False)
    monkeypatch.setattr(cls, "parameters", {**cls.parameters, "n_samples": cls.parameters["n_samples"] // 2})
    summary = run_grid(build_grid([kmeans], [Spec.make("dataset", "synthetic")], [0]), store, OPTS, progress=False)
    assert len(summary.ran) == 1 and len(summary.relocated) == 1
    records = store.records()
    assert sorted(r["n_samples"] for r in records) == [cls.parameters["n_samples"], 2 * cls.parameters["n_samples"]]
    for r in records:
        assert r["metrics"] == pytest.approx(store.recompute_metrics(r))


def test_report_lists_runs_that_leave_clusters_empty(tmp_path):
    """A run whose stored labels use fewer than K clusters is listed with its seed and the
    clusters it used; runs that use all K are not."""
    store = RecordStore(tmp_path)
    run_grid(_grid(seeds=(0, 1, 2)), store, OPTS, progress=False)
    text = build_report(store, tmp_path / "lb.md", tmp_path / "fig", figures=False)
    assert "leave clusters empty" not in text
    record = next(r for r in store.records() if r["seed"] == 1)
    path = tmp_path / "runs" / record["dataset"]["key"] / record["method"]["key"] / record["labels_file"]
    labels = np.load(path)["labels"]
    np.savez(path, labels=np.minimum(labels, 1))  # two clusters left of K
    text = build_report(store, tmp_path / "lb.md", tmp_path / "fig", figures=False)
    notes = text[text.index("leave clusters empty"):].split("\n\n")[1].splitlines()
    assert notes == [f"- kmeans [n_init=1, n_iter=10]: seed 1 (2 of {record['n_clusters']})"]


def test_a_loader_that_changes_without_a_new_version_fails_the_cell_not_the_store(tmp_path, monkeypatch):
    """Other labels under the same parameters and version: the new cell fails with a message
    asking for a version bump, and the finished records keep the truth they were scored
    against."""
    import dataclasses

    from bench import runner

    store = RecordStore(tmp_path)
    kmeans = Spec.make("method", "kmeans", {"n_init": 1, "n_iter": 10})
    run_grid(_grid(seeds=(0,)), store, OPTS, progress=False)
    cls = registry.datasets.get("synthetic")
    load = cls.load
    monkeypatch.setattr(cls, "load", lambda self, d: dataclasses.replace(load(self, d), y=load(self, d).y[::-1].copy()))
    monkeypatch.setattr(runner._CACHE, "spec", None)  # the worker's cached copy is of the old loader
    summary = run_grid(build_grid([kmeans], [_grid()[0].dataset], [1]), store, OPTS, progress=False)
    assert not summary.ran and len(summary.failed) == 1
    assert "TruthChanged" in summary.failed[0][1]["error"] and "bump the dataset's version" in summary.failed[0][1]["error"]
    (old,) = [r for r in store.records() if r["status"] == "ok"]
    assert old["metrics"] == pytest.approx(store.recompute_metrics(old))


def test_a_version_bump_keeps_the_older_records_apart_in_the_report(tmp_path, monkeypatch):
    """Same parameters, new code version: the old rows read ``[version=1]`` at once (a version
    bump says the results changed), the old records move to their own folder when the new
    version runs, and the overview and the papers' comparison count only the new version's."""
    store = RecordStore(tmp_path)
    dataset = Spec.make("dataset", "outside-paper-blobs")
    run_grid(build_grid([Spec.make("method", "outside-method")], [dataset], [0, 1]), store, OPTS, progress=False)
    monkeypatch.setattr(registry.methods.get("outside-method"), "version", "2")
    alone = build_report(store, tmp_path / "lb.md", tmp_path / "fig", figures=False)
    # before the new version has run, the old row already says it is not today's default
    assert "| outside-method [version=1] | 2/2 " in alone
    assert "## Overview" not in alone and "Compared with the papers" not in alone
    summary = run_grid(build_grid([Spec.make("method", "outside-method")], [dataset], [0]), store, OPTS,
                       progress=False)
    assert len(summary.relocated) == 2
    text = build_report(store, tmp_path / "lb.md", tmp_path / "fig", figures=False)
    table = text[text.index("## outside-paper-blobs"):]
    assert "| outside-method [version=1] | 2/2 " in table and "| outside-method             | 1/2 " in table
    overview = text[text.index("## Overview"):text.index("## outside-paper-blobs")]
    assert "(1/2)" in overview
    # the figures too: two series named as the rows, not one "outside-method" joining both
    from bench.report import _series, _summary, records_frame

    series = _series(_summary(records_frame(store.records()), ["acc"]))
    assert sorted(series) == ["outside-method", "outside-method [version=1]"]
    assert [len(pts) for pts in series.values()] == [1, 1]


def test_ray_workers_get_our_packages_and_the_commit_wherever_they_run():
    """The local cluster this process starts uses the tree in place; a cluster it joins (auto
    or an address, possibly other machines) gets the tree shipped, with the commit, which the
    shipped copy (no .git) could not tell."""
    from bench.provenance import git_commit
    from bench.runner import ray_runtime_env
    from bench.paths import PROJECT_ROOT

    for local in (None, "local"):
        env = ray_runtime_env(local)
        assert "working_dir" not in env and env["env_vars"]["PYTHONPATH"].split(":")[0] == str(PROJECT_ROOT)
    for joined in ("auto", "ray://head:10001"):
        env = ray_runtime_env(joined)
        assert env["working_dir"] == str(PROJECT_ROOT) and ".git/" in env["excludes"]
        assert env["env_vars"] == {"PYTHONPATH": ".", "FAIRCLUSTERBENCH_GIT_COMMIT": git_commit()}


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_commit_is_marked_dirty_by_changed_code_not_by_the_runners_own_outputs(tmp_path, monkeypatch):
    import subprocess

    from bench import provenance

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                       check=True, capture_output=True)

    for name in ("bench/core.py", "results/runs/d/m/seed0.json", "leaderboard.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("v1\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "c")
    monkeypatch.setattr(provenance, "PROJECT_ROOT", tmp_path)
    monkeypatch.delenv("FAIRCLUSTERBENCH_GIT_COMMIT", raising=False)

    def commit():
        provenance.git_commit.cache_clear()
        return provenance.git_commit()

    try:
        clean = commit()
        assert len(clean) == 40
        # a report rewrites the leaderboard and records; new records are untracked files
        (tmp_path / "leaderboard.md").write_text("v2\n")
        (tmp_path / "results/runs/d/m/seed0.json").write_text("v2\n")
        (tmp_path / "results/runs/d/m/seed1.json").write_text("new\n")
        assert commit() == clean
        (tmp_path / "bench/core.py").write_text("v2\n")
        assert commit() == clean + "+dirty"
    finally:
        provenance.git_commit.cache_clear()


def test_stopping_the_pool_ends_its_running_workers_and_spares_other_children():
    """A caller that catches the interrupt keeps running, so the workers must be ended by
    ``_stop_workers`` itself, not by their watch on the parent; a child of the caller that the
    pool did not start must survive."""
    import multiprocessing
    import time
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing.connection import wait as wait_for_sentinels

    from bench.runner import _stop_workers

    ctx = multiprocessing.get_context("spawn")
    bystander = ctx.Process(target=time.sleep, args=(60,))
    bystander.start()
    try:
        others = set(multiprocessing.active_children())
        pool = ProcessPoolExecutor(2, mp_context=ctx)
        futures = [pool.submit(time.sleep, 600) for _ in range(3)]
        deadline = time.monotonic() + 60
        while sum(f.running() for f in futures) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = [p for p in multiprocessing.active_children() if p not in others]
        assert len(workers) == 2
        sentinels = [p.sentinel for p in workers]
        _stop_workers(pool, others)
        # ended means the sentinel is ready; not ``is_alive``, which can call a dead worker
        # alive while the executor's thread reaps it (its ``waitpid`` and ours race)
        assert len(wait_for_sentinels(sentinels, timeout=0)) == 2
        # queued cells are cancelled; the executor's thread fails the running ones once it sees
        # their workers gone (asynchronously, so give it time): none is left running 600 s
        deadline = time.monotonic() + 30
        while not all(f.done() for f in futures) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(f.done() for f in futures), [f._state for f in futures]
        assert bystander.is_alive()
    finally:
        bystander.terminate()
        bystander.join(10)


def test_ctrl_c_while_the_pool_waits_comes_out_as_keyboard_interrupt_every_time():
    """Ctrl-C raised wherever it lands inside ``concurrent.futures.wait`` can leave the
    executor's locks half-updated and surface as ``RuntimeError: release unlocked lock`` (a
    few times in a hundred here), a traceback instead of the runner's message and exit 130.
    The runner holds signals back and raises between two waits: 400 Ctrl-Cs at random moments
    of the same loop must all come out as KeyboardInterrupt, with no waiter left behind."""
    import signal

    # Python's own Ctrl-C handler, as in a terminal: a test run started in the background
    # (nohup, `cmd &`) inherits SIGINT ignored, which the runner rightly leaves ignored
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _press_ctrl_c_400_times_while_the_pool_waits()
    finally:
        signal.signal(signal.SIGINT, inherited)


def _press_ctrl_c_400_times_while_the_pool_waits():
    import random
    import signal
    import threading
    import time
    from concurrent.futures import FIRST_COMPLETED, Future, wait

    from bench.runner import _signals_deferred

    go = threading.Event()
    rng = random.Random(0)

    def press_ctrl_c():
        while True:
            go.wait()
            go.clear()
            time.sleep(rng.random() * 0.001)
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    outcomes = []
    for _ in range(400):
        futures = [Future() for _ in range(4)]
        try:
            with _signals_deferred() as deliver:
                go.set()
                while True:
                    wait(futures, timeout=0.0, return_when=FIRST_COMPLETED)
                    deliver()
        except BaseException as exc:  # noqa: B036 - the point is which exception comes out
            outcomes.append(type(exc).__name__ + " + waiter left" * any(f._waiters for f in futures))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert outcomes == ["KeyboardInterrupt"] * 400, {o: outcomes.count(o) for o in set(outcomes)}


def test_a_report_without_figures_keeps_the_links_to_figures_already_drawn(tmp_path):
    """``--report-only --no-figures`` once dropped every figure link from a leaderboard whose
    figures were still on disk; it now keeps them and says they were not redrawn."""
    store = RecordStore(tmp_path / "out")
    run_grid(_grid(), store, OPTS, progress=False)
    board, figures = tmp_path / "lb.md", tmp_path / "fig"

    def links(text):
        return [line for line in text.splitlines() if ".png](" in line]

    assert links(build_report(store, board, figures, figures=False)) == []  # nothing drawn yet
    drawn = links(build_report(store, board, figures))
    assert len(drawn) == 1 and "_acc_vs_mnce.png](" in drawn[0] and "_metrics.png](" in drawn[0]
    kept = links(build_report(store, board, figures, figures=False))
    assert kept == [drawn[0] + " (drawn by an earlier report: --no-figures did not redraw them)"]


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_records_get_the_permissions_the_umask_gives_every_other_file(tmp_path, umask):
    # Records are written to a temporary file and renamed into place; mkstemp makes that file
    # 0600, which left a shared results folder unreadable to everyone but the runner's user.
    old = os.umask(umask)
    try:
        store = RecordStore(tmp_path)
        assert not run_grid(_grid(seeds=(0,)), store, OPTS, progress=False).failed
    finally:
        os.umask(old)
    written = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert {p.suffix for p in written} == {".json", ".npz"}  # the record, its labels, the truth
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {p.name: oct(0o666 & ~umask) for p in written}
