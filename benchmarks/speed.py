"""Training-speed benchmark of deep methods: a script, not a test.

    python benchmarks/speed.py --methods fcmi dfc --datasets digits-reversed synthetic \\
        --epochs 2 --device auto

For every (method, dataset) it loads the data through the registry (``--data-dir``), fits the
method with a short schedule and prints seconds per epoch, total training time (the whole
``fit``, CUDA synchronised), samples per second and peak GPU memory (CUDA only). ``--json``
writes the rows, to compare before and after a change. Methods or datasets that are not
registered (yet), or that cannot be timed, are reported and skipped.

``--cuda-graphs`` times the graph-replay execution mode; ``--processes N`` runs N copies at
once (the load of ``run_benchmark.py --jobs N``) and sums their samples/s; ``--profile ROWS``
prints what a fit's time goes to.

* Epoch-based methods (an ``epochs`` parameter, e.g. fcmi, infomin-*): ``epochs`` is set to
  ``--epochs`` and ``warmup_epochs`` (if declared and not given with ``--param``) to 0, so
  that every timed epoch is a full one (FCMI: k-means + training pass); the epochs are
  counted from the history rows that carry an ``epoch`` key; s/epoch is the median of their
  ``time_s`` when the method logs it (FCMI does), else total / epochs; samples/s =
  samples × epochs / total.
* Iteration-based methods (an ``iters`` parameter and a ``batch_size``, e.g. dfc): one
  epoch-equivalent is ⌈n / batch_size⌉ iterations, so ``iters`` = epochs × that; pretraining
  phases (parameters named ``*_epochs``) are set to ``--pretrain-epochs``. The method is fitted
  with those iterations and, before and after, with one (the first one-iteration fit is also
  the warm-up), and s/epoch = (difference to the faster one-iteration fit) / (iterations − 1) ×
  iterations per epoch-equivalent: the main phase alone, pretraining excluded. The epochs
  are counted from the largest ``iter`` in the history. (DFC draws a batch per group at each
  iteration, so its epoch-equivalent covers the data once per group.)
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from bench import NotApplicable, execution, registry  # noqa: E402
from bench.paths import default_data_dir  # noqa: E402
from bench.seeding import resolve_device, seed_everything  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["fcmi"], help="registered method names")
    ap.add_argument("--datasets", nargs="+", default=["digits-reversed"], help="registered dataset names")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per fit (overrides the method's default)")
    ap.add_argument("--pretrain-epochs", type=int, default=None,
                    help="pretraining epochs of iteration-based methods (default: --epochs)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None, help="data folder (default: $FAIRCLUSTERBENCH_DATA or the cache)")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="extra method parameter, applied where the method declares it (repeatable)")
    ap.add_argument("--cuda-graphs", action="store_true", help="replay training steps as CUDA graphs where supported")
    ap.add_argument("--profile", type=int, default=0, metavar="ROWS",
                    help="after timing, profile one more fit of each method and print its ROWS most costly ops "
                    "(by time on the GPU, else on the CPU): what a step is spent on")
    ap.add_argument("--processes", type=int, default=1, metavar="N",
                    help="run N copies of this measurement at once (seeds seed..seed+N-1) and print each one's row "
                    "and their combined samples/s: the throughput of N cells sharing the device (--jobs N)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    return ap.parse_args(argv)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_fit(method_cls, params, data, args, device):
    method = method_cls(**params)
    inp = method.prepare_input(data.clustering_input())
    method.check_applicable(inp)
    seed_everything(args.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    with execution.settings(cuda_graphs=args.cuda_graphs):
        out = method.fit(inp, args.seed, device)
    _sync(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return out, time.perf_counter() - t0, peak


def measure(method_cls, data, args, device) -> dict:
    """Time one method on one dataset; raise ValueError when it has no epoch/iteration knob."""
    declared = method_cls.parameters
    extra = dict(kv.split("=", 1) for kv in args.param)
    params = {k: v for k, v in extra.items() if k in declared}
    n = data.n_samples
    if "epochs" in declared:
        params["epochs"] = args.epochs
        if "warmup_epochs" in declared and "warmup_epochs" not in extra:
            params["warmup_epochs"] = 0  # time full epochs (FCMI: k-means + training pass)
        out, total, peak = _timed_fit(method_cls, params, data, args, device)
        rows = [r for r in out.history if "epoch" in r]
        epochs = len(rows)
        times = [r["time_s"] for r in rows if "time_s" in r]
        per_epoch = statistics.median(times) if times else (total / epochs if epochs else float("nan"))
    elif "iters" in declared and "batch_size" in declared:
        batch = int(params.get("batch_size", declared["batch_size"]))
        per_epoch_iters = -(-n // batch)
        pre = args.pretrain_epochs if args.pretrain_epochs is not None else args.epochs
        params.update({k: pre for k in declared if k.endswith("_epochs") and k not in extra})
        iters = max(2, args.epochs * per_epoch_iters)
        # one-iteration fits before and after: the first also warms up (CUDA context, kernel
        # loading, cuDNN handles), which would otherwise inflate the difference
        _, base_before, _ = _timed_fit(method_cls, {**params, "iters": 1}, data, args, device)
        out, total, peak = _timed_fit(method_cls, {**params, "iters": iters}, data, args, device)
        _, base_after, _ = _timed_fit(method_cls, {**params, "iters": 1}, data, args, device)
        base = min(base_before, base_after)
        done = max((r["iter"] for r in out.history if "iter" in r), default=iters)
        epochs = done / per_epoch_iters
        per_epoch = max(total - base, 0.0) / (iters - 1) * per_epoch_iters
    else:
        raise ValueError(f"method {method_cls.name!r} has neither an 'epochs' nor an 'iters' parameter")
    return {
        "method": method_cls.name,
        "dataset": data.name,
        "n": n,
        "epochs": epochs,
        "s_per_epoch": per_epoch,
        "total_s": total,
        "samples_per_s": n * epochs / total if epochs else float("nan"),
        "peak_gpu_MiB": peak,
        "device": str(device),
        "cuda_graphs": bool(args.cuda_graphs),
    }


def profile_fit(method_cls, data, args, device) -> None:
    """torch.profiler over one more timed fit: the costliest ops, and the step's CPU and GPU
    totals (a step far longer on the CPU than on the GPU is bound by launches, not arithmetic)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        measure(method_cls, data, args, device)
    averages = prof.key_averages()
    on_gpu = device.type == "cuda"
    key = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    print(f"profile: {method_cls.name} on {data.name} ({'GPU' if on_gpu else 'CPU'} time)")
    print(averages.table(sort_by=key, row_limit=args.profile))
    cpu_s = sum(e.self_cpu_time_total for e in averages) / 1e6
    gpu_s = sum(getattr(e, "self_device_time_total", 0) for e in averages) / 1e6 if on_gpu else float("nan")
    print(f"profile totals: self CPU {cpu_s:.2f} s, self GPU {gpu_s:.2f} s")


def run_concurrently(args, argv) -> int:
    """N copies of this script at once, one per seed; each writes its rows to a JSON file.
    Prints every row and, per (method, dataset), the copies' summed samples/s."""
    import subprocess
    import tempfile

    argv = list(argv if argv is not None else sys.argv[1:])
    base = [a for i, a in enumerate(argv) if a != "--processes" and (i == 0 or argv[i - 1] != "--processes")]
    base = [a for i, a in enumerate(base) if a != "--seed" and (i == 0 or base[i - 1] != "--seed")]
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for k in range(args.processes):
            out = Path(tmp) / f"p{k}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), *base, "--seed", str(args.seed + k), "--json", str(out)]
            procs.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), out))
        rows = []
        for proc, out in procs:
            _, err = proc.communicate()
            if proc.returncode != 0 or not out.exists():
                print(f"a copy failed (exit {proc.returncode}): {err.strip().splitlines()[-1:] }", file=sys.stderr)
                continue
            rows += json.loads(out.read_text())
    if not rows:
        return 1
    combined = {}
    for r in rows:
        combined.setdefault((r["method"], r["dataset"]), []).append(r)
    table = [[m, d, len(rs), f"{statistics.median(r['s_per_epoch'] for r in rs):.3f}",
              f"{sum(r['samples_per_s'] for r in rs):.0f}",
              "-" if rs[0]["peak_gpu_MiB"] is None else f"{max(r['peak_gpu_MiB'] for r in rs):.0f}"]
             for (m, d), rs in combined.items()]
    print(f"{args.processes} processes at once; cuda_graphs={bool(args.cuda_graphs)}")
    print(tabulate(table, headers=["method", "dataset", "copies", "median s/epoch", "summed samples/s",
                                   "peak GPU MiB (one copy)"]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.processes > 1:
        return run_concurrently(args, argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    known_methods, known_datasets = set(registry.methods.names()), set(registry.datasets.names())
    rows, notes = [], []
    for ds_name in args.datasets:
        if ds_name not in known_datasets:
            notes.append(f"skipped dataset {ds_name!r}: not registered (known: {', '.join(sorted(known_datasets))})")
            continue
        try:
            data = registry.datasets.get(ds_name)().load(data_dir)
        except Exception as exc:  # missing files etc.: report, go on
            notes.append(f"skipped dataset {ds_name!r}: could not load ({type(exc).__name__}: {exc})")
            continue
        for m_name in args.methods:
            if m_name not in known_methods:
                notes.append(f"skipped method {m_name!r}: not registered (known: {', '.join(sorted(known_methods))})")
                continue
            try:
                rows.append(measure(registry.methods.get(m_name), data, args, device))
                if args.profile:
                    profile_fit(registry.methods.get(m_name), data, args, device)
            except (NotApplicable, ValueError) as exc:
                notes.append(f"skipped {m_name} on {ds_name}: {exc}")
            print(f"done: {m_name} on {ds_name}", file=sys.stderr, flush=True)
    table = [
        [r["method"], r["dataset"], r["n"], f"{r['epochs']:g}", f"{r['s_per_epoch']:.3f}", f"{r['total_s']:.2f}",
         f"{r['samples_per_s']:.0f}", "-" if r["peak_gpu_MiB"] is None else f"{r['peak_gpu_MiB']:.0f}"]
        for r in rows
    ]
    headers = ["method", "dataset", "samples", "epochs", "s/epoch", "total s", "samples/s", "peak GPU MiB"]
    print(f"device: {device}; torch {torch.__version__}; CPU threads {torch.get_num_threads()}")
    print(tabulate(table, headers=headers))
    for note in notes:
        print("note:", note)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if rows or not (args.methods and args.datasets) else 1


if __name__ == "__main__":
    sys.exit(main())
