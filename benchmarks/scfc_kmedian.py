"""Where does ScFC's accuracy come from: the fairlets or the k-median? A script, not a test.

    python benchmarks/scfc_kmedian.py --dataset reverse-mnist --seeds 0 1 --solvers voronoi swap kmeans

ScFC (``methods/scfc.py``) builds fairlets along a randomly shifted quadtree, then clusters the
fairlet centres with a k-median solver. For each seed this script builds the fairlets exactly
as ``scfc`` does for that seed (same parameters, same random draws) and prints:

* the fairlets: the tree's depth, how many there are, the share whose members all carry one
  true label (``label-pure``: a fairlet that mixes digits forces an error whatever the
  k-median does) and the share of the centres that lie in each sensitive group;
* per solver, run on the same fairlet centres: the k-median cost on the centres (sum of
  Euclidean distances to the nearest medoid) and the ACC / NMI of the clustering every point
  then gets, with the solver's seconds.

Solvers: ``voronoi`` (scfc version 1: k-medoids++ seeding and Voronoi iteration), ``swap``
(the default: the same, then FasterPAM's swap search), ``swap-squared`` (the same search on
squared Euclidean distances, a k-means-like medoid objective; its cost column is then a sum of
squared distances) and ``kmeans`` (k-means on the centres, not a k-median: a reference for how
well the centres can be clustered at all; no cost).
The true labels are read for the figures only; no solver sees them.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from bench import ParameterError, metrics, registry  # noqa: E402
from bench.kmeans import kmeans  # noqa: E402
from bench.scripting import add_dataset_arguments, fail, load_dataset  # noqa: E402
from methods._fair_classical import kmedoids  # noqa: E402
from methods._fairlets import fairlet_medoids  # noqa: E402

SOLVERS = ("voronoi", "swap", "swap-squared", "kmeans")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    add_dataset_arguments(ap, "digits-reversed", "a registered dataset with a two-valued primary attribute")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--solvers", nargs="+", default=list(SOLVERS), help="any of: " + ", ".join(SOLVERS))
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="an scfc parameter for the fairlets and solvers (e.g. child_order=key); repeatable")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return ap.parse_args(argv)


def fairlet_table(method, data, seed: int):
    """The fairlets of ``scfc`` at ``seed`` and the seed its k-median would get."""
    inp = method.prepare_input(data.clustering_input())
    X = inp.flat_features().astype(np.float32, copy=False)
    fairlet_of, n_fairlets, depth, p, q, kmedian_seed = method.fairlets(X, inp.group, seed)
    return X, inp.group, fairlet_of, n_fairlets, depth, (p, q), kmedian_seed


def label_purity(y: np.ndarray, fairlet_of: np.ndarray, n_fairlets: int) -> float:
    """Share of fairlets whose members all have one true label."""
    first = np.full(n_fairlets, -1)
    first[fairlet_of[::-1]] = y[::-1]  # some member's label (the first, as later writes win)
    return float(np.mean(np.bincount(fairlet_of[y != first[fairlet_of]], minlength=n_fairlets) == 0))


def solve(name: str, C: torch.Tensor, k: int, seed: int, params: dict) -> tuple[np.ndarray, float | None]:
    if name == "kmeans":
        _, labels = kmeans(C, k, n_init=10, n_iter=300, seed=seed)
        return labels.cpu().numpy(), None
    _, labels, cost = kmedoids(C, k, seed=seed, n_iter=params["kmedian_iter"], max_candidates=params["max_candidates"],
                               swap=name.startswith("swap"), squared=name == "swap-squared")
    return labels, cost


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = [s for s in args.solvers if s not in SOLVERS]
    if unknown:
        fail(f"unknown solver {unknown[0]!r}; accepted: {', '.join(SOLVERS)}")
    params = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--param {item!r} is not NAME=VALUE")
        params[key] = value
    try:
        method = registry.methods.get("scfc")(**params)
    except (ParameterError, KeyError, TypeError, ValueError) as exc:
        fail(str(exc).strip("'\""))
    data = load_dataset(args.dataset, args.data_dir)
    if data.attributes[0].n_values != 2:
        fail(f"scfc needs two groups; {args.dataset}'s attribute {data.attributes[0].name!r} has {data.attributes[0].n_values}")
    print(f"{args.dataset}: n={data.n_samples}, K={data.n_clusters}, attribute {data.attributes[0].name!r}, "
          f"scfc parameters {method.params}")
    rows = []
    for seed in args.seeds:
        X, colors, fairlet_of, n_fairlets, depth, (p, q), kseed = fairlet_table(method, data, seed)
        centres, _ = fairlet_medoids(torch.as_tensor(X), fairlet_of, n_fairlets)
        C = torch.as_tensor(X)[torch.as_tensor(centres)]
        k = min(data.n_clusters, n_fairlets)
        fairlet_info = [seed, depth, f"{p}/{q}", n_fairlets, f"{100 * label_purity(data.y, fairlet_of, n_fairlets):.1f} %",
                        f"{100 * np.mean(colors[centres] == 1):.1f} %"]
        for name in args.solvers:
            t0 = time.perf_counter()
            centre_labels, cost = solve(name, C, k, kseed, method.params)
            seconds = time.perf_counter() - t0
            labels = centre_labels[fairlet_of]
            rows.append([*fairlet_info, name, "" if cost is None else f"{cost:,.1f}",
                         f"{100 * metrics.accuracy(data.y, labels):.1f}", f"{100 * metrics.nmi(data.y, labels):.1f}",
                         f"{seconds:.1f}"])
    print(tabulate(rows, headers=["seed", "depth", "p/q", "fairlets", "label-pure", "centres in group 1", "solver",
                                  "k-median cost", "ACC", "NMI", "s"], tablefmt="github", disable_numparse=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
