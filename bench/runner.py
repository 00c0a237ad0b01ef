"""The grid runner: methods × datasets × paired seeds, resumable cell by cell.

A cell is (dataset spec, method spec with all hyperparameters, seed). Its key is a hash of
those three (order independent: parameters are sorted) plus the method's and dataset's
declared ``version``. A finished cell is skipped on a rerun; a failed cell is recorded with
its error and retried; ``force`` reruns everything. Within a cell, methods that train for long
save their state now and then (:mod:`bench.checkpoint`, under ``checkpoint_dir``), so a cell
whose process was killed continues from its last save on the next run. Two executors write into the same store:
in-process (default) and Ray (each cell a Ray task, asking for a GPU when its method uses
one and the cluster has one).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import checkpoint, execution, registry
from .api import NotApplicable
from .metrics import evaluate
from .paths import PROJECT_ROOT, default_data_dir
from .provenance import device_name, git_commit, library_versions
from .seeding import resolve_device, seed_everything
from .store import RecordStore, TruthChanged, own_key


def _short_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Spec:
    """A configured method or dataset: registered name + full parameters (defaults filled)."""

    kind: str
    name: str
    params: tuple = ()  # sorted (key, value) pairs, values JSON-able
    version: str = "1"

    @classmethod
    def make(cls, kind: str, name: str, overrides: dict | None = None) -> "Spec":
        reg = registry.methods if kind == "method" else registry.datasets
        obj = reg.get(name)(**(overrides or {}))  # validates names and values
        return cls(kind, name, tuple(sorted((k, _freeze(v)) for k, v in obj.params.items())), type(obj).version)

    @classmethod
    def from_json(cls, kind: str, stored: dict) -> "Spec":
        """The spec a record stored (its ``to_json``), as it was: no defaults filled in."""
        params = tuple(sorted((k, _freeze(v)) for k, v in stored["params"].items()))
        return cls(kind, stored["name"], params, stored.get("version", "1"))

    @property
    def param_dict(self) -> dict:
        return {k: _thaw(v) for k, v in self.params}

    def instantiate(self):
        reg = registry.methods if self.kind == "method" else registry.datasets
        return reg.get(self.name)(**self.param_dict)

    def non_default(self) -> dict:
        reg = registry.methods if self.kind == "method" else registry.datasets
        defaults = reg.get(self.name).parameters
        return {k: v for k, v in self.param_dict.items() if _thaw(_freeze(defaults.get(k))) != v}

    @property
    def label(self) -> str:
        """The name, plus the parameters that differ from the defaults; a method's tiny test
        configuration reads "[test config]", followed by any further changes."""
        extra = self.non_default()
        tags = []
        if self.kind == "method":
            cls = registry.methods.get(self.name)
            test = {k: v for k, v in cls.test_config().params.items() if k in cls.test_parameters}
            if test and all(extra.get(k, self.param_dict[k]) == v for k, v in test.items()):
                tags.append("test config")
                extra = {k: v for k, v in extra.items() if k not in test}
        tags += [f"{k}={v}" for k, v in sorted(extra.items())]
        return self.name + (" [" + ", ".join(tags) + "]" if tags else "")

    @property
    def key(self) -> str:
        """Folder name: readable, and unique per configuration."""
        extra = self.non_default()
        return self.name if not extra else own_key(self.name, self.param_dict, self.version)

    def to_json(self) -> dict:
        return {"name": self.name, "params": self.param_dict, "version": self.version, "key": self.key,
                "label": self.label}


def _freeze(v):
    return tuple(_freeze(x) for x in v) if isinstance(v, list) else v


def _thaw(v):
    return [_thaw(x) for x in v] if isinstance(v, tuple) else v


@dataclass(frozen=True)
class Cell:
    dataset: Spec
    method: Spec
    seed: int

    @property
    def cell_id(self) -> str:
        return _short_hash([self.dataset.name, self.dataset.params, self.dataset.version,
                            self.method.name, self.method.params, self.method.version, self.seed])

    def __str__(self):
        return f"{self.method.label} on {self.dataset.label}, seed {self.seed}"


def build_grid(methods: list[Spec], datasets: list[Spec], seeds: list[int]) -> list[Cell]:
    """Every method sees every dataset with the same seeds (paired). Dataset-major order,
    so that each dataset is loaded once by the in-process executor."""
    return [Cell(d, m, s) for d in datasets for m in methods for s in seeds]


@dataclass
class RunOptions:
    device: str = "auto"
    data_dir: str | None = None
    plugins: tuple = ()
    #: Worker processes of the local executor (1: run in this process).
    jobs: int = 1
    #: Also store each run's embedding (float32, n x d) beside its labels. Off by default:
    #: the metrics need the labels only, and embeddings of the image sets are megabytes a run.
    save_embeddings: bool = False
    #: Folder of the cells' training checkpoints (None: no checkpoints), and the least
    #: seconds between two saves of one cell.
    checkpoint_dir: str | None = None
    checkpoint_every_s: float = 300.0
    #: Experimental: replay training steps as CUDA graphs where a loop supports it
    #: (:mod:`bench.execution`); recorded with each run.
    cuda_graphs: bool = False


def checkpoint_path(options: RunOptions, cell: "Cell"):
    """Where ``cell`` keeps its training checkpoint (None when checkpoints are off)."""
    if not options.checkpoint_dir:
        return None
    return Path(options.checkpoint_dir) / cell.dataset.key / cell.method.key / f"seed{cell.seed}.pt"


class _DatasetCache:
    """Keeps the last loaded dataset (the grid is dataset-major)."""

    def __init__(self):
        self.spec, self.data = None, None

    def load(self, spec: Spec, data_dir):
        if spec != self.spec:
            self.spec, self.data = None, None
            self.data = spec.instantiate().load(data_dir)
            self.spec = spec
        return self.data


_CACHE = _DatasetCache()


def run_cell(cell: Cell, options: RunOptions, cache: _DatasetCache = _CACHE) -> tuple[dict, dict]:
    """Train and evaluate one cell. Never raises (except KeyboardInterrupt): a failure is a
    record with status "failed". Returns (record, arrays) where arrays holds labels,
    the embedding (only with ``options.save_embeddings``) and the dataset truth for the store."""
    for plugin in options.plugins:
        registry.load_plugin(plugin)
    record = {
        "cell_id": cell.cell_id, "dataset": cell.dataset.to_json(), "method": cell.method.to_json(),
        "seed": cell.seed, "versions": library_versions(), "git_commit": git_commit(),
        "host": os.uname().nodename,
        "jobs": options.jobs,  # cells running side by side: train times compare only at equal load
        "cuda_graphs": options.cuda_graphs,
    }
    arrays: dict = {}
    start = time.perf_counter()
    ckpt = None
    try:
        device = resolve_device(options.device)
        record["device"] = device_name(device)
        data = cache.load(cell.dataset, options.data_dir or default_data_dir())
        arrays["truth"] = (data.y, data.groups)
        record.update(n_samples=data.n_samples, n_clusters=data.n_clusters,
                      attributes=[a.name for a in data.attributes],
                      attribute_values=[a.n_values for a in data.attributes])
        method = cell.method.instantiate()
        inp = method.prepare_input(data.clustering_input())
        method.check_applicable(inp)
        record["attributes_used"] = [a.name for a in inp.attributes]
        seed_everything(cell.seed)
        ckpt = checkpoint.Checkpoint(checkpoint_path(options, cell), cell.cell_id, options.checkpoint_every_s)
        t0 = time.perf_counter()
        with checkpoint.active(ckpt), execution.settings(cuda_graphs=options.cuda_graphs):
            out = method.fit(inp, cell.seed, device)
        reused = float(out.reused_seconds or 0.0)
        if not (math.isfinite(reused) and reused >= 0):
            raise ValueError(f"reused_seconds must be a finite number >= 0, got {out.reused_seconds!r}")
        record["train_seconds"] = time.perf_counter() - t0 + ckpt.prior_seconds + reused
        if ckpt.prior_seconds:  # continued from a checkpoint: earlier attempts' seconds included
            record["resumed_after_seconds"] = ckpt.prior_seconds
        if reused:  # cached work of an earlier cell in this worker, charged to this one too
            record["reused_seconds"] = reused
        labels = _check_labels(out.labels, data.n_samples, data.n_clusters)
        history = [{k: _to_float(v) for k, v in row.items()} for row in (out.history or [])]
        bad = [(i, k) for i, row in enumerate(history) for k, v in row.items()
               if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            i, k = bad[0]
            raise FloatingPointError(f"non-finite {k} at epoch {i} (NaN/inf loss)")
        record["history"] = history

        def score(predicted):
            return evaluate(data.y, predicted, data.groups, data.n_clusters,
                            attribute_names=record["attributes"], n_values=record["attribute_values"])

        record["metrics"] = score(labels)
        stages = {}
        for name, stage_labels in (out.stages or {}).items():
            if not str(name).isidentifier():
                raise ValueError(f"stage name {name!r} must be an identifier (letters, digits, _)")
            try:
                stages[name] = _check_labels(stage_labels, data.n_samples, data.n_clusters)
            except ValueError as exc:
                raise ValueError(f"stage {name!r}: {exc}") from None
        if stages:
            record["stages"] = {name: score(stage_labels) for name, stage_labels in stages.items()}
            arrays["stages"] = stages
        record["status"] = "ok"
        arrays["labels"] = labels
        if out.embedding is not None and options.save_embeddings:
            arrays["embedding"] = np.asarray(out.embedding, dtype=np.float32)
    except NotApplicable as exc:
        record.update(status="not_applicable", error=str(exc))
    except Exception as exc:  # noqa: BLE001 - a failed cell is data, not a crash
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc(limit=20))
        if ckpt is not None:  # the training itself failed: its retry starts afresh
            ckpt.clear()
    record["wall_seconds"] = time.perf_counter() - start
    return record, arrays


def _to_float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def _check_labels(labels, n, k) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"method returned labels of shape {labels.shape}, expected ({n},)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"method returned labels of dtype {labels.dtype}, expected integers")
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"method returned labels outside 0..{k - 1}")
    return labels.astype(np.int64)


def save(store: RecordStore, cell: Cell, record: dict, arrays: dict, options: RunOptions) -> dict:
    """Write the cell's record and return it as written (failed if the store's truth for the
    dataset disagrees); then a finished cell's checkpoint is no longer needed (a cell whose
    worker died keeps it, so the next run resumes it)."""
    if "truth" in arrays:
        try:
            store.put_truth(cell.dataset, *arrays["truth"])
        except TruthChanged as exc:  # the run cannot be scored against what the store keeps
            record, arrays = {**record, "status": "failed", "error": f"TruthChanged: {exc}"}, {}
            record.pop("metrics", None), record.pop("stages", None)
    store.put(cell, record, labels=arrays.get("labels"), embedding=arrays.get("embedding"),
              stages=arrays.get("stages"))
    path = checkpoint_path(options, cell)
    if path is not None and record.get("status") in ("ok", "not_applicable"):
        checkpoint.discard(path)
    return record


@dataclass
class GridSummary:
    ran: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    not_applicable: list = field(default_factory=list)
    relocated: list = field(default_factory=list)  # records of older defaults moved aside

    def add(self, cell, record):
        {"ok": self.ran, "failed": self.failed, "not_applicable": self.not_applicable}[record["status"]].append(
            (cell, record))


def _progress(total, desc, disable):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="cell", disable=disable, dynamic_ncols=True)


def run_grid(cells: list[Cell], store: RecordStore, options: RunOptions, executor: str = "local",
             address: str | None = None, force: bool = False, progress: bool = True) -> GridSummary:
    """Run every cell that is not finished yet (all with ``force``), saving each record as
    soon as its cell ends. Interrupting loses at most the cells that are running."""
    summary = GridSummary()
    todo = []
    for cell in cells:
        if not force and store.is_done(cell):
            summary.skipped.append(cell)
        else:
            todo.append(cell)
    summary.relocated = store.make_room(todo)
    if executor == "local":
        _run_local(todo, store, options, summary, progress)
    elif executor == "ray":
        _run_ray(todo, store, options, summary, progress, address)
    else:
        raise ValueError(f"unknown executor {executor!r}; accepted: local, ray")
    return summary


def _run_local(todo, store, options, summary, progress):
    for plugin in options.plugins:
        registry.load_plugin(plugin)
    if options.jobs > 1 and len(todo) > 1:
        return _run_pool(todo, store, options, summary, progress)
    with _progress(len(todo), "cells", not progress) as bar:
        for cell in todo:
            bar.set_postfix_str(f"{cell.method.name}/{cell.dataset.name}/s{cell.seed}", refresh=False)
            record, arrays = run_cell(cell, options)
            record = save(store, cell, record, arrays, options)
            summary.add(cell, record)
            bar.update(1)


def _finish(store, summary, bar, cell, result, where: str, options: RunOptions) -> None:
    """Save the record of a cell that ran elsewhere; if its worker died, record the failure."""
    try:
        record, arrays = result()
    except Exception as exc:  # noqa: BLE001 - run_cell never raises, so the worker itself died
        record, arrays = {"cell_id": cell.cell_id, "dataset": cell.dataset.to_json(), "method": cell.method.to_json(),
                          "seed": cell.seed, "status": "failed",
                          "error": f"{where} failed: {type(exc).__name__}: {exc}"}, {}
    record = save(store, cell, record, arrays, options)
    summary.add(cell, record)
    bar.update(1)


def _pool_init(threads: int) -> None:
    """Set up a worker of :func:`_run_pool`: its share of the CPU threads; Ctrl-C left to the
    parent, which stops its workers itself; and an end with the parent (:func:`_exit_with_parent`)."""
    import signal
    import threading

    import torch

    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, name="exit-with-parent", daemon=True).start()


def _exit_with_parent() -> None:
    """End this worker as soon as the runner that spawned it is gone, even when that was killed
    outright (``kill -9``, an out-of-memory kill, a scheduler's time limit): an orphaned worker
    would otherwise train its cell on for hours, its record lost, beside the rerun that trains
    the same cell into the same checkpoint. The cell's last checkpoint stays for that rerun."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    if parent is None:
        return
    parent.join()  # waits on the parent's sentinel: returns when the parent process has ended
    os._exit(1)


def _stop_workers(pool, others) -> None:
    """Cancel the queued cells and end the running ones now (their checkpoints stay), rather
    than wait hours for them as leaving the ``with`` block of an executor would. The pool's
    workers are this process's live children that are not in ``others`` (those alive before
    the pool started): the executor has no public list of its processes."""
    import multiprocessing
    import time
    from multiprocessing.connection import wait

    processes = [p for p in multiprocessing.active_children() if p not in others]
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    # Wait for their sentinels, not ``join``: the executor's own thread joins these processes
    # too, and of two threads reaping one child the loser's ``waitpid`` fails (ECHILD), so its
    # ``join`` returns early and ``is_alive`` calls a dead worker alive (6 times in 60 here).
    running = [process.sentinel for process in processes]
    deadline = time.monotonic() + 10
    while running and time.monotonic() < deadline:
        ended = wait(running, timeout=max(0.0, deadline - time.monotonic()))
        running = [sentinel for sentinel in running if sentinel not in ended]


def _run_pool(todo, store, options, summary, progress):
    """``options.jobs`` worker processes (spawned, so CUDA is safe), each with an equal share of
    the CPU threads; every record is written by this process as soon as its cell ends. Each
    worker keeps its own copy of the current dataset. Interrupted (Ctrl-C, SIGTERM through
    :func:`bench.cli.main`) or failing, this process ends its workers before it returns, and a
    worker whose parent was killed outright ends itself."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = max(1, (os.cpu_count() or 1) // options.jobs)
    ctx = multiprocessing.get_context("spawn")
    others = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(options.jobs, mp_context=ctx, initializer=_pool_init, initargs=(threads,))
    try:
        with _signals_deferred() as deliver_signals, \
                _progress(len(todo), f"cells ({options.jobs} jobs)", not progress) as bar:
            pending = {pool.submit(run_cell, cell, options): cell for cell in todo}
            while pending:
                # a timeout, so that this thread wakes at least once a second to act on a
                # signal even if the kernel handed it to one of the pool's threads
                done, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in done:
                    cell = pending.pop(future)
                    _finish(store, summary, bar, cell, future.result, "worker process", options)
                deliver_signals()
    except BaseException:
        _stop_workers(pool, others)
        raise
    pool.shutdown()


@contextlib.contextmanager
def _signals_deferred(signums=("SIGINT", "SIGTERM")):
    """Hold back SIGINT and SIGTERM while the block runs, and yield a function that acts on
    those caught so far: it calls the handler they had before (Ctrl-C's KeyboardInterrupt,
    :mod:`bench.cli`'s ``Terminated``), so the exception is raised there, between two waits.
    Raised wherever the signal happened to land, inside ``concurrent.futures.wait`` or a lock
    of the executor, the exception can leave that machinery half-updated and come out as
    another error (``RuntimeError: release unlocked lock``). Signals whose handler is not a
    Python function (default action, ignored) are left as they are, as is every signal outside
    the main thread, where Python cannot set handlers."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    caught: list[int] = []
    previous = {}
    for name in signums:
        signum = getattr(signal, name)
        handler = signal.getsignal(signum)
        if callable(handler):
            previous[signum] = handler
            signal.signal(signum, lambda signum, frame: caught.append(signum))

    def deliver():
        if caught:
            signum = caught.pop(0)
            previous[signum](signum, None)

    try:
        yield deliver
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _ray_remote_run(cell, options):
    """Body of the Ray task (module level so that Ray can import it by reference)."""
    return run_cell(cell, options)


def ray_runtime_env(address: str | None) -> dict:
    """Workers must import our ``bench``, ``methods`` and ``datasets`` (not Hugging Face's):
    the project root goes first on their PYTHONPATH. A cluster we join (``auto`` or an address)
    may span other machines, so the tree (about 1 MB without results) is shipped to it; only
    the local cluster this process starts uses the tree in place."""
    if address and address != "local":  # the shipped copy has no .git: its commit travels along
        return {"working_dir": str(PROJECT_ROOT), "excludes": ["results/", ".git/", "*.npz", "__pycache__/"],
                "env_vars": {"PYTHONPATH": ".", "FAIRCLUSTERBENCH_GIT_COMMIT": git_commit()}}
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT),
                                                                     os.environ.get("PYTHONPATH")]))}}


def _run_ray(todo, store, options, summary, progress, address):
    try:
        import ray
    except ImportError:
        raise RuntimeError("--executor ray needs Ray: pip install 'ray[default]'") from None
    if not ray.is_initialized():
        ray.init(address=address, runtime_env=ray_runtime_env(address), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    remote = ray.remote(_ray_remote_run)
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    pending = {}
    for cell in todo:
        cls = registry.methods.get(cell.method.name)
        wants_gpu = has_gpu and cls.uses_gpu and options.device != "cpu"
        ref = remote.options(num_gpus=1 if wants_gpu else 0, num_cpus=1).remote(cell, options)
        pending[ref] = cell
    try:
        with _progress(len(todo), "cells (ray)", not progress) as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    cell = pending.pop(ref)
                    _finish(store, summary, bar, cell, lambda: ray.get(ref), "ray task", options)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
