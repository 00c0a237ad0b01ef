"""The command line as a user runs it: quick suite, plugins, entry points, bad input,
report-only, a real kill mid-grid, Ray, and the `datasets` name clash."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.helpers import PLUGIN, ROOT, cli

SMALL = ["--datasets", "synthetic", "--dataset-param", "n_samples=150", "--device", "cpu", "--quiet"]


def test_quick_suite_runs_every_cpu_method_and_prints_the_table(tmp_path):
    res = cli("--quick", "--out", tmp_path, "--quiet", timeout=600)
    assert res.returncode == 0, res.stderr
    assert "## digits-reversed" in res.stdout and "| kmeans" in res.stdout
    assert (tmp_path / "leaderboard.md").read_text().startswith("# FairClusterBench quick suite")
    assert (tmp_path / "figures" / "digits-reversed_acc_vs_mnce.png").stat().st_size > 1000
    assert len(list((tmp_path / "runs").rglob("seed*.json"))) >= 3


def test_list_shows_methods_and_datasets():
    res = cli("--list")
    assert res.returncode == 0
    assert "kmeans" in res.stdout and "digits-reversed" in res.stdout and "synthetic" in res.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", "nope", "--datasets", "synthetic"], "unknown method 'nope'; accepted: "),
        (["--methods", "kmeans", "--datasets", "nope"], "unknown dataset 'nope'; accepted: "),
        (["--methods", "kmeans", "--datasets", "synthetic", "--seeds", "x"], "invalid seed 'x'; accepted"),
        (["--methods", "kmeans", "--datasets", "synthetic", "--seeds", "-1"], "invalid seed '-1'"),
        (["--methods", "kmeans", "--datasets", "synthetic", "--seeds", "1", "1"], "seeds repeat"),
        (["--methods", "kmeans", "--datasets", "synthetic", "--device", "cuda:7"], "accepted: auto, cpu"),
        (["--methods", "kmeans", "--datasets", "synthetic", "--device", "tpu"], "unknown device 'tpu'"),
        (["--methods", "kmeans", "--datasets", "synthetic", "--param", "lr=1"], "no selected method has parameter 'lr'"),
        (["--methods", "kmeans", "--datasets", "synthetic", "--param", "n_init=abc"], "is not a valid int"),
        (["--methods", "kmeans", "--datasets", "synthetic", "--plugin", "missing_file.py"], "plugin file"),
        (["--methods", "kmeans"], "give --methods and --datasets"),
        (["--report-only", "--out", "/nonexistent/folder"], "no records under"),
        (["--methods", "kmeans", "--datasets", "synthetic", "--checkpoint-every", "-5"], "accepted: seconds >= 0"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(args, message, tmp_path):
    res = cli(*args, "--out", tmp_path) if "--out" not in args else cli(*args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("where", ["out", "leaderboard", "figures"])
def test_an_output_folder_that_cannot_be_written_is_refused_before_any_training(tmp_path, where):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out, board = tmp_path / "out", tmp_path / "out" / "leaderboard.md"
    if where == "out":
        out = blocker / "out"
    elif where == "leaderboard":
        board = blocker / "leaderboard.md"
    else:
        out.mkdir()
        blocker = blocker.rename(out / "figures")
    res = cli("--methods", "kmeans", *SMALL, "--seeds", "0", "--out", out, "--leaderboard", board)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{str(blocker)!r} is a file" in lines[0] and "accepted: a folder" in lines[0], res.stderr
    assert "Traceback" not in res.stderr and not list(tmp_path.rglob("seed*.json"))


def test_report_only_into_a_folder_that_cannot_be_written_says_so_in_one_line(tmp_path):
    assert cli("--methods", "kmeans", *SMALL, "--seeds", "0", "--out", tmp_path / "out").returncode == 0
    (tmp_path / "out" / "figures").rename(tmp_path / "drawn")
    (tmp_path / "out" / "figures").write_text("not a folder")
    res = cli("--report-only", "--out", tmp_path / "out")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "cannot write the figures folder" in res.stderr
    assert cli("--report-only", "--no-figures", "--out", tmp_path / "out").returncode == 0


def test_plugin_file_outside_the_project_lands_in_the_leaderboard(tmp_path):
    outside = tmp_path / "elsewhere" / "my_method.py"
    outside.parent.mkdir()
    outside.write_text(PLUGIN.read_text())
    out = tmp_path / "out"
    res = cli("--plugin", outside, "--methods", "outside-method", "kmeans", "--seeds", "0", "1", "--out", out, *SMALL)
    assert res.returncode == 0, res.stderr
    board = (out / "leaderboard.md").read_text()
    assert "| outside-method" in board and "| kmeans" in board


def test_entry_point_registers_an_outside_method(tmp_path):
    site = tmp_path / "site"
    pkg = site / "fcb_outside_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(PLUGIN.read_text())
    dist = site / "fcb_outside_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fcb-outside-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[fairclusterbench.methods]\noutside = fcb_outside_pkg:NearestGroupCentroid\n")
    env = {"PYTHONPATH": str(site)}
    res = cli("--list", env=env)
    assert res.returncode == 0, res.stderr
    assert "outside-method" in res.stdout
    out = tmp_path / "out"
    res = cli("--methods", "outside-method", "--seeds", "0", "--out", out, *SMALL, env=env)
    assert res.returncode == 0, res.stderr
    assert "| outside-method" in (out / "leaderboard.md").read_text()


def test_report_only_rebuilds_the_leaderboard_identically(tmp_path):
    res = cli("--methods", "kmeans", "outside-method", "--plugin", PLUGIN, "--seeds", "0", "1", "--out", tmp_path,
              "--param", "kmeans.n_init=1", *SMALL)
    assert res.returncode == 0, res.stderr
    board = tmp_path / "leaderboard.md"
    before = board.read_bytes()
    board.unlink()
    res = cli("--report-only", "--out", tmp_path, "--plugin", PLUGIN)
    assert res.returncode == 0, res.stderr
    assert board.read_bytes() == before


def test_fairness_sweep_maps_to_each_methods_own_weight_and_plots_the_trade_off(tmp_path):
    res = cli("--methods", "vfc", "kmeans", "--sweep", "fairness=0,1000", "--test-config", "--seeds", "0",
              "--out", tmp_path, *SMALL, "--dataset-param", "n_attributes=2", "--dataset-param", "group_shift=3")
    assert res.returncode == 0, res.stderr
    board = (tmp_path / "leaderboard.md").read_text()
    assert "| vfc [" in board and "lmbda=0.0" in board and "lmbda=1000.0" in board
    assert board.count("| kmeans [") == 2  # no fairness weight: not swept, one row in the main and joint tables
    assert "Intersectional fairness" in board
    assert list((tmp_path / "figures").glob("*_nmi_vs_joint_mnce.png"))
    # The sweep table: vfc at each weight, in order of the weight; kmeans (no weight) is no sweep.
    sweep = board.split("Fairness-weight sweeps")[1].split("\n\n")[1].splitlines()[2:]
    assert [row.split("|")[2].strip() for row in sweep] == ["lmbda=0", "lmbda=1000"]
    assert all(row.startswith("| vfc [test config") and row.split("|")[3].strip() == "0" for row in sweep)
    assert list((tmp_path / "figures").glob("*_sweeps.png"))
    res = cli("--methods", "kmeans", "--sweep", "fairness=0,1", "--datasets", "synthetic", "--out", tmp_path)
    assert res.returncode == 2 and "no selected method declares a fairness weight" in res.stderr


def test_kill_mid_grid_then_rerun_completes_without_duplicates_or_loss(tmp_path):
    seeds = [str(s) for s in range(12)]
    cmd = [sys.executable, str(ROOT / "run_benchmark.py"), "--plugin", str(PLUGIN), "--methods", "outside-method",
           "--seeds", *seeds, "--out", str(tmp_path), "--no-figures", *SMALL]
    proc = subprocess.Popen(cmd, env={**os.environ, "FCB_TEST_SLEEP": "0.4"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.time() + 120
    while len(list(tmp_path.rglob("seed*.json"))) < 3:
        assert proc.poll() is None and time.time() < deadline, "runner ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in tmp_path.rglob("seed*.json")}
    assert 3 <= len(done_before) < len(seeds)
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert res.returncode == 0, res.stderr
    assert f"{len(done_before)} already done" in res.stdout
    records = sorted(p.name for p in tmp_path.rglob("seed*.json"))
    assert records == sorted(f"seed{s}.json" for s in seeds)  # every cell once, none lost
    assert not list(tmp_path.rglob("*.tmp"))
    for name, mtime in done_before.items():  # finished cells were not rerun
        assert next(tmp_path.rglob(name)).stat().st_mtime_ns == mtime


def _alive(pid: int) -> bool:
    """True while the process runs; a zombie, ended but not yet reaped, counts as ended."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


@pytest.mark.parametrize("how, status, message", [
    (signal.SIGINT, 130, "interrupted"),              # Ctrl-C sent to the runner alone
    (signal.SIGTERM, 143, "terminated (SIGTERM)"),    # kill, a scheduler's time limit
    (signal.SIGKILL, -signal.SIGKILL, ""),            # kill -9, an out-of-memory kill
])
def test_a_stopped_parallel_run_leaves_no_worker_training_on(tmp_path, how, status, message):
    """--jobs 2 with cells that would train for ten minutes: however the runner is stopped, it
    ends at once and so do its two worker processes, rather than train on, orphaned, beside
    the rerun."""
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    cmd = [sys.executable, str(ROOT / "run_benchmark.py"), "--plugin", str(PLUGIN), "--methods", "outside-method",
           "--seeds", "0", "1", "2", "3", "--jobs", "2", "--out", str(tmp_path / "out"), "--no-figures", *SMALL]
    # Ctrl-C as at a terminal: a shell without job control starts background jobs with SIGINT
    # ignored, and Python keeps an inherited SIG_IGN, so give the runner the default back.
    proc = subprocess.Popen(cmd, env={**os.environ, "FCB_TEST_SLEEP": "600", "FCB_TEST_PID_DIR": str(pid_dir)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while len(list(pid_dir.iterdir())) < 2:
            assert proc.poll() is None and time.time() < deadline, "the workers did not start their cells"
            time.sleep(0.05)
        workers = [int(path.name) for path in pid_dir.iterdir()]
        assert all(_alive(pid) for pid in workers) and os.getpid() not in workers
        proc.send_signal(how)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == status, err[-2000:]
        assert message in err
        deadline = time.time() + 30
        while any(_alive(pid) for pid in workers):
            assert time.time() < deadline, "a worker process outlived its runner"
            time.sleep(0.05)
    finally:  # a failing run must not leave its processes behind
        for pid in [proc.pid] * (proc.poll() is None) + [int(path.name) for path in pid_dir.iterdir()]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert not list((tmp_path / "out").rglob("seed*.json"))  # no cell finished, none recorded as failed


def test_ray_executor_runs_a_small_grid_into_the_same_store(tmp_path):
    pytest.importorskip("ray")
    local, distributed = tmp_path / "local", tmp_path / "ray"
    common = ["--plugin", PLUGIN, "--methods", "kmeans", "outside-method", "--seeds", "0", "1", "--no-figures",
              "--param", "kmeans.n_init=1", *SMALL]
    assert cli(*common, "--out", local).returncode == 0
    res = cli(*common, "--out", distributed, "--executor", "ray", env={"RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"},
              timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    import json

    def metrics(root):
        return {p.relative_to(root).as_posix(): json.loads(p.read_text())["metrics"]
                for p in sorted((root / "runs").rglob("seed*.json"))}

    assert metrics(distributed) == metrics(local) and len(metrics(local)) == 4
    assert "| outside-method" in (distributed / "leaderboard.md").read_text()


def test_our_datasets_package_wins_without_breaking_hugging_face_datasets(tmp_path):
    """A stand-in for Hugging Face's `datasets` on the path: our CLI still finds our loaders,
    and plain `import datasets` elsewhere still gets theirs, even in the same process."""
    fake = tmp_path / "site" / "datasets"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("HUGGING_FACE = True\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    res = cli("--list", env=env)
    assert res.returncode == 0 and "digits-reversed" in res.stdout, res.stderr
    code = textwrap.dedent(f"""
        import sys
        import datasets
        assert datasets.HUGGING_FACE
        sys.path.insert(0, {str(ROOT)!r})
        from bench import registry
        names = registry.datasets.names()
        assert "digits-reversed" in names, names
        import datasets as again
        assert again.HUGGING_FACE  # theirs is untouched
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
    # and without our root on the path, `import datasets` is theirs
    res = subprocess.run([sys.executable, "-c", "import datasets; print(datasets.HUGGING_FACE)"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.stdout.strip() == "True"


def test_killed_mid_training_resumes_from_its_checkpoint_with_the_same_labels(tmp_path):
    """kill -9 while a deep method trains; the same command continues the cell from its last
    checkpoint and stores the labels an uninterrupted run gives."""
    import json

    import numpy as np

    args = ["--methods", "fcmi", "--test-config", "--param", "epochs=60", "--seeds", "0", "--no-figures", *SMALL]
    reference = cli(*args, "--out", tmp_path / "ref", "--checkpoint-every", "0")
    assert reference.returncode == 0, reference.stderr
    cmd = [sys.executable, str(ROOT / "run_benchmark.py"), *args, "--out", str(tmp_path / "out"),
           "--checkpoint-every", "0.05"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.time() + 120
    while not list((tmp_path / "out").rglob("seed0.pt")):
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list((tmp_path / "out").rglob("seed0.json")), "the cell finished before the kill"
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert res.returncode == 0, res.stderr
    (record_path,) = (tmp_path / "out").rglob("seed0.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "ok" and record["resumed_after_seconds"] > 0
    (ref_labels,) = (tmp_path / "ref").rglob("seed0.npz")
    np.testing.assert_array_equal(np.load(record_path.with_suffix(".npz"))["labels"], np.load(ref_labels)["labels"])
    assert not list((tmp_path / "out").rglob("*.pt")) and not list((tmp_path / "out").rglob("*.tmp"))


def test_deep_training_on_the_cpu_is_announced_once_and_only_at_full_schedule(tmp_path, capsys):
    """Deep methods at their own schedule on the CPU get one stderr line naming them (k-means,
    no schedule, is not named, nor a shortened schedule, nor a finished cell); the test
    configuration does not either."""
    from bench.cli import _note_deep_training_on_cpu
    from bench.runner import Spec, build_grid

    data = [Spec.make("dataset", "digits-reversed", {})]
    full = build_grid([Spec.make("method", n, {}) for n in ("ae", "kmeans", "fcmi")], data, [0, 1])
    _note_deep_training_on_cpu(full)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("note: no GPU in use") and ": ae, fcmi will train on the CPU at full schedule" in line
    short = build_grid([Spec.make("method", "ae", {"epochs": 1}), Spec.make("method", "dec", {"pretrain_epochs": 2})],
                       data, [0])
    _note_deep_training_on_cpu(short)
    assert capsys.readouterr().err == ""

    res = cli("--methods", "ae", "kmeans", "--param", "ae.epochs=1", "--param", "ae.width=0.125", "--seeds", "0",
              "--out", tmp_path, *SMALL)
    assert res.returncode == 0 and "note: no GPU" not in res.stderr, res.stderr
    res = cli("--methods", "ae", "--test-config", "--seeds", "0", "--out", tmp_path, *SMALL)
    assert res.returncode == 0 and "note: no GPU" not in res.stderr

    class FinishedFcmi:  # a store in which the fcmi cells are finished
        def is_done(self, cell):
            return cell.method.name == "fcmi"

    _note_deep_training_on_cpu(full, FinishedFcmi())
    (line,) = capsys.readouterr().err.splitlines()
    assert ": ae will train on the CPU at full schedule" in line
