"""Command line: ``python run_benchmark.py [options]`` (see ``--help``)."""
from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

from . import registry
from .api import ParameterError
from .paths import PROJECT_ROOT
from .registry import PluginError, UnknownName
from .plan import plan_grid, plan_table
from .report import build_report
from .runner import RunOptions, Spec, build_grid, run_grid
from .seeding import DeviceError, check_device_form, resolve_device
from .store import RecordStore

QUICK_DATASET = "digits-reversed"
QUICK_SEEDS = [0, 1, 2]
MAIN_OUT = PROJECT_ROOT / "results"
#: ``--sweep fairness=...`` sweeps each method's declared ``fairness_weight`` parameter.
FAIRNESS = "fairness"


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would also print the usage)
        raise UsageError(message + " (see --help)")


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}; accepted: non-negative integers") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}; accepted: non-negative integers")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"invalid --checkpoint-every {text!r}; accepted: seconds >= 0 (0: no checkpoints)")
    return value


def _jobs(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid --jobs {text!r}; accepted: a positive integer")
    return int(text)


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="run_benchmark.py",
        description="FairClusterBench: run fair clustering methods on datasets over paired seeds, then write "
        "leaderboard.md. With no arguments: the quick suite (every CPU-capable method, tiny configurations, "
        f"on the embedded '{QUICK_DATASET}' dataset, seeds {QUICK_SEEDS}, written under results/quick/).",
    )
    p.add_argument("--methods", nargs="+", metavar="NAME", help="method names, or 'all'")
    p.add_argument("--datasets", nargs="+", metavar="NAME", help="dataset names, or 'all' (real datasets)")
    p.add_argument("--seeds", nargs="+", type=_seed, default=None, metavar="N", help="paired seeds (default 0 1 2 3 4)")
    p.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu, cuda, cuda:N")
    p.add_argument("--out", default=None, help="output folder for records and figures (default results/)")
    p.add_argument("--leaderboard", default=None, help="leaderboard path (default leaderboard.md for results/, "
                   "else OUT/leaderboard.md)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default $FAIRCLUSTERBENCH_DATA, "
                   "else ~/.cache/fairclusterbench)")
    p.add_argument("--param", action="append", default=[], metavar="[METHOD.]NAME=VALUE",
                   help="override a method hyperparameter (for every selected method that has it, or one method)")
    p.add_argument("--dataset-param", action="append", default=[], metavar="[DATASET.]NAME=VALUE",
                   help="override a dataset parameter")
    p.add_argument("--sweep", action="append", default=[], metavar="NAME=V1,V2,...",
                   help="run every value of a hyperparameter (methods that have it), e.g. LambdaFair=0,0.1,0.2; "
                   "'fairness=...' sweeps each method's own fairness weight (beta, LambdaFair, lmbda, ...)")
    p.add_argument("--test-config", action="store_true", help="use each method's tiny test configuration")
    p.add_argument("--executor", choices=["local", "ray"], default="local", help="in-process (default) or Ray")
    p.add_argument("--jobs", type=_jobs, default=None, metavar="N",
                   help="local executor: N worker processes sharing the CPU cores (default 1; quick suite: 2)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    p.add_argument("--force", action="store_true", help="rerun cells that already have a record")
    p.add_argument("--report-only", action="store_true", help="rebuild the leaderboard from the records, train nothing")
    p.add_argument("--dry-run", action="store_true", help="print what the run would do (cells done, to resume from "
                   "a checkpoint, failed, to run) with an estimate of the training time left; train and write nothing")
    p.add_argument("--checkpoint-every", type=_seconds, default=300.0, metavar="SECONDS",
                   help="long trainings save their state at most this often under OUT/checkpoints, and a cell "
                   "killed part-way resumes from it on the next run (default 300; 0: no checkpoints)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="experimental: FCMI, AE and DFC replay their training steps as CUDA graphs (GPU only)")
    p.add_argument("--save-embeddings", action="store_true",
                   help="also store each run's embedding beside its labels (megabytes a run on the image sets)")
    p.add_argument("--no-figures", action="store_true", help="skip drawing the PNG figures (the leaderboard keeps its links to figures already drawn, marked as not redrawn)")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py|MODULE",
                   help="import a file or module that registers methods/datasets (repeatable)")
    p.add_argument("--quick", action="store_true", help="the quick suite (what no arguments runs); "
                   "combine with --out, --device, --executor")
    p.add_argument("--list", action="store_true", help="list methods and datasets and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _parse_assignments(items, what) -> list[tuple[str | None, str, str]]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"bad {what} {item!r}; accepted: NAME=VALUE or TARGET.NAME=VALUE")
        target, dot, name = key.rpartition(".")
        out.append((target if dot else None, name, value))
    return out


def _select(names, reg, kind, default_all):
    if not names:
        return default_all
    if names == ["all"]:
        return default_all
    for n in names:
        reg.get(n)  # raises UnknownName listing what is accepted
    return list(dict.fromkeys(names))


def _specs(kind, names, assignments, sweeps=(), test_config=False) -> list[Spec]:
    reg = registry.methods if kind == "method" else registry.datasets
    for target, name, _ in assignments:
        if target is not None and target not in names:
            raise UsageError(f"{kind} parameter for {target!r}, which is not selected; selected: {', '.join(names)}")
        owners = [target] if target else names
        if not any(name in reg.get(o).parameters for o in owners):
            accepted = sorted({k for o in owners for k in reg.get(o).parameters})
            raise UsageError(f"no selected {kind} has parameter {name!r}; accepted: {', '.join(accepted) or 'none'}")
    for name, _ in sweeps:
        if name == FAIRNESS and not any(getattr(reg.get(o), "fairness_weight", "") for o in names):
            raise UsageError(f"no selected {kind} declares a fairness weight to sweep; selected: {', '.join(names)}")
        if name != FAIRNESS and not any(name in reg.get(o).parameters for o in names):
            raise UsageError(f"no selected {kind} has parameter {name!r} to sweep")
    specs = []
    for n in names:
        cls = reg.get(n)
        base = dict(cls.test_parameters) if test_config and kind == "method" else {}
        for target, key, value in assignments:
            if key in cls.parameters and target in (None, n):
                base[key] = value
        own = [(getattr(cls, "fairness_weight", "") if k == FAIRNESS else k, vs) for k, vs in sweeps]
        own = [(k, vs) for k, vs in own if k in cls.parameters]
        for combo in itertools.product(*[vs for _, vs in own]) if own else [()]:
            params = {**base, **{k: v for (k, _), v in zip(own, combo)}}
            specs.append(Spec.make(kind, n, params))
    return specs


def list_registry() -> str:
    lines = ["Methods:"]
    for name, cls in registry.methods.items():
        flags = [("GPU" if cls.uses_gpu else "CPU"), ("many groups" if cls.many_groups else "two groups"),
                 ("several attributes" if cls.multi_attribute else "one attribute")]
        if not cls.fairness_aware:
            flags.append("fairness-unaware")
        lines.append(f"  {name:<18} {cls.description}  [{', '.join(flags)}]")
    lines.append("Datasets:")
    for name, cls in registry.datasets.items():
        extra = f"  [{cls.summary}]" if cls.summary else ""
        lines.append(f"  {name:<18} {cls.description}{extra}")
    return "\n".join(lines)


SCHEDULE_PARAMS = ("epochs", "iters", "pretrain_epochs")


def _at_full_schedule(cell) -> bool:
    """Whether a cell trains a deep method (one with an epoch or iteration schedule) at its own
    schedule: no schedule parameter set below the method's default."""
    declared = registry.methods.get(cell.method.name).parameters
    keys = [k for k in SCHEDULE_PARAMS if k in declared]
    return bool(keys) and all(not isinstance(declared[k], (int, float))
                              or cell.method.param_dict.get(k, declared[k]) >= declared[k] for k in keys)


def _note_deep_training_on_cpu(cells, store=None) -> None:
    """One line on stderr when deep methods will train at their own schedule on this machine's
    CPU (cells already finished in ``store`` aside): that is hours per cell on the real datasets.
    A shortened schedule (``--param epochs=N``) or the test configuration is not announced."""
    deep = sorted({c.method.name for c in cells
                   if _at_full_schedule(c) and not (store is not None and store.is_done(c))})
    if deep:
        print(f"note: no GPU in use (device cpu): {', '.join(deep)} will train on the CPU at full schedule: that "
              "takes hours per cell on the real datasets (about 3 minutes per epoch of FCMI's autoencoder on "
              "MNIST-USPS on one core); --test-config or --param epochs=N gives a quick look", file=sys.stderr)


def _check_writable(folder: Path, what: str) -> None:
    """Create ``folder`` if needed and write a scratch file in it, before anything is trained:
    a run that cannot store its records would train its first cell and then lose it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
        reason = (f"{str(blocker)!r} is a file" if blocker is not None and not blocker.is_dir()
                  else exc.strerror or type(exc).__name__)
        raise UsageError(f"cannot write {what} {str(folder)!r} ({reason}); "
                         "accepted: a folder this user can create and write into") from None


def _check_output_folders(out: Path, leaderboard: Path, figures: bool, records: bool) -> None:
    """:func:`_check_writable` on every folder the command will write: the records' (``--out``,
    when it trains), the leaderboard's and, unless ``--no-figures``, the figures'."""
    if records:
        _check_writable(out, "the output folder (--out)")
    _check_writable(leaderboard.parent, "the leaderboard's folder")
    if figures:
        _check_writable(out / "figures", "the figures folder")


class Terminated(BaseException):
    """SIGTERM (``kill``, a batch scheduler's time limit), raised where the run is so that it
    stops as Ctrl-C stops it: finished records kept, worker processes ended, exit status 143."""


def _raise_terminated(signum, frame):
    raise Terminated


@contextlib.contextmanager
def _sigterm_as_exception():
    """Turn SIGTERM into :class:`Terminated` for the duration of the block (main thread only:
    elsewhere Python cannot set signal handlers, and the default action stays)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        with _sigterm_as_exception():
            return _main(argv)
    except UsageError as exc:
        print(f"run_benchmark.py: error: {exc}", file=sys.stderr)
        return 2
    except (UnknownName, ParameterError, DeviceError, PluginError) as exc:
        print(f"run_benchmark.py: error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as exc:
        how, status = ("terminated (SIGTERM)", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
        print(f"\n{how}: finished cells are saved, and a cell stopped part-way resumes from its last checkpoint; "
              "rerun the same command to resume", file=sys.stderr)
        return status


def _main(argv) -> int:
    args = make_parser().parse_args(argv)
    quick = not argv or args.quick
    for plugin in args.plugin:
        registry.load_plugin(plugin)
    plugins = tuple(str(Path(p).resolve()) if p.endswith(".py") else p for p in args.plugin)
    if args.list:
        print(list_registry())
        return 0
    if quick:
        args.methods = [n for n, c in registry.methods.items() if c.cpu_capable]
        args.datasets = [QUICK_DATASET]
        args.seeds = QUICK_SEEDS
        args.test_config = True
        args.out = args.out or str(MAIN_OUT / "quick")
        args.jobs = args.jobs or min(2, os.cpu_count() or 1)
    out = Path(args.out) if args.out else MAIN_OUT
    if args.leaderboard:
        leaderboard = Path(args.leaderboard)
    elif out.resolve() == MAIN_OUT.resolve():
        leaderboard = PROJECT_ROOT / "leaderboard.md"
    else:
        leaderboard = out / "leaderboard.md"
    store = RecordStore(out)
    title = "FairClusterBench quick suite" if quick else "FairClusterBench leaderboard"
    note = ("Quick suite: tiny test configurations on the embedded dataset, a smoke test of the whole pipeline. "
            "These are not paper-scale numbers." if quick else "")
    if args.report_only and args.dry_run:
        raise UsageError("--report-only and --dry-run do not combine; accepted: one of them")
    if args.report_only:
        if not store.runs.is_dir():
            raise UsageError(f"no records under {out}/runs; run a grid first or pass --out with the folder of one")
        _check_output_folders(out, leaderboard, figures=not args.no_figures, records=False)
        build_report(store, leaderboard, out / "figures", title=title, note=note, figures=not args.no_figures)
        print(f"leaderboard written to {leaderboard}")
        return 0
    method_names = _select(args.methods, registry.methods, "method", registry.methods.names())
    dataset_names = _select(args.datasets, registry.datasets, "dataset",
                            [n for n, c in registry.datasets.items() if getattr(c, "listed_in_all", True)])
    if not args.methods or not args.datasets:
        raise UsageError("give --methods and --datasets (names or 'all'), or no arguments for the quick suite")
    seeds = args.seeds if args.seeds is not None else [0, 1, 2, 3, 4]
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"seeds repeat: {' '.join(map(str, seeds))}; accepted: distinct non-negative integers")
    sweeps = []
    for target, name, values in _parse_assignments(args.sweep, "--sweep"):
        if target:
            raise UsageError(f"--sweep takes NAME=V1,V2,... without a method prefix, got {target}.{name}")
        sweeps.append((name, [v for v in values.split(",") if v != ""]))
    method_specs = _specs("method", method_names, _parse_assignments(args.param, "--param"), sweeps,
                          args.test_config)
    dataset_specs = _specs("dataset", dataset_names, _parse_assignments(args.dataset_param, "--dataset-param"))
    cells = build_grid(method_specs, dataset_specs, seeds)
    data_dir = str(Path(args.data_dir).expanduser().resolve()) if args.data_dir else None  # workers run elsewhere
    options = RunOptions(device=args.device, data_dir=data_dir, plugins=plugins, jobs=args.jobs or 1,
                         save_embeddings=args.save_embeddings,
                         checkpoint_dir=str((out / "checkpoints").resolve()) if args.checkpoint_every > 0 else None,
                         checkpoint_every_s=args.checkpoint_every, cuda_graphs=args.cuda_graphs)
    if args.dry_run:  # no device needed: a GPU run can be planned from a machine without one
        check_device_form(args.device)
        print(plan_table(plan_grid(cells, store, options, force=args.force)))
        return 0
    device = resolve_device(args.device)
    _check_output_folders(out, leaderboard, figures=not args.no_figures, records=True)
    if device.type == "cpu" and args.executor == "local" and not args.test_config:
        _note_deep_training_on_cpu(cells, store)
    try:
        summary = run_grid(cells, store, options, executor=args.executor, address=args.address, force=args.force,
                           progress=not args.quiet)
    finally:
        if store.runs.is_dir():
            text = build_report(store, leaderboard, out / "figures", title=title, note=note,
                                figures=not args.no_figures)
            if quick:
                print(text)
    print(f"{len(cells)} cells: {len(summary.ran)} ran, {len(summary.skipped)} already done, "
          f"{len(summary.not_applicable)} not applicable, {len(summary.failed)} failed. Leaderboard: {leaderboard}")
    if summary.relocated:
        print(f"{len(summary.relocated)} records of configurations that were the default when they ran moved to "
              f"their own folders, so that nothing was overwritten: {'; '.join(summary.relocated[:3])}"
              + (" ..." if len(summary.relocated) > 3 else ""))
    for cell, record in summary.failed:
        print(f"  failed: {cell}: {record['error']}", file=sys.stderr)
    return 1 if summary.failed else 0
