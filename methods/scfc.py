"""ScFC: scalable fair clustering (Backurs, Indyk, Onak, Schieber, Vakilian, Wagner, ICML 2019)."""
from __future__ import annotations

import time

import numpy as np
import torch

from bench import Method, MethodOutput, ParameterError, register_method

from ._fair_classical import group_shares, kmedoids
from ._fairlets import balanced, best_ratio, build_quadtree, fairlet_medoids, tree_fairlets


@register_method
class ScalableFairClustering(Method):
    """Fair k-median through fairlets, in near-linear time (Backurs et al., ICML 2019).

    1. Embed the points in a randomly shifted quadtree and compute a (p, q)-fairlet
       decomposition along it (:mod:`methods._fairlets`): every fairlet, hence
       every cluster, has min(#g0/#g1, #g1/#g0) >= p/q. O(n · depth · d).
    2. Each fairlet's centre is its medoid; run k-median on the fairlet centres, unweighted
       like the reference. The MIT reference code calls MATLAB's ``kmedoids(X, k, 'Distance',
       'euclidean')``, whose algorithms are swap searches (PAM; for more than 3,000 rows its
       randomised-swap "large" algorithm). Here :func:`methods._fair_classical.kmedoids`:
       k-medoids++ seeding, Voronoi iteration, then FasterPAM's swap search (Schubert &
       Rousseeuw, 2021) to a medoid set no single swap improves (``kmedian="swap"``, the
       default since version 2). ``kmedian="voronoi"`` stops after the Voronoi iteration,
       version 1's k-median, which stalls in worse optima (figures below).
    3. Every point takes the cluster of its fairlet's centre (Chierichetti et al., 2017).

    Two groups only (``many_groups = False``): the runner shows HAR as not applicable, as in
    FCMI's Table 1. ``p``/``q`` = 0 (default) picks the largest p/q <= the data's balance
    min(N_0, N_1)/max(N_0, N_1) with q <= ``max_q`` (1/9 on MNIST-USPS, 1/1 on Color-Reverse
    MNIST, 1/4 on Office-31), i.e. the fairest target the data allow; the papers choose p/q
    per dataset and FCMI does not say which it used. Images are flattened: in d = 784 a
    quadtree cell splits in all dimensions at once, so the root already separates nearly
    every point and the fairlets are formed at the root in the order of its children.
    ``child_order="data"`` (default) lists them by first appearance in the data, as the
    reference code does: on MNIST-USPS the fairlets are then unrelated to the digits and this
    reproduces FCMI's row (seeds 0–4, CPU: ACC 14.3 ± 0.2, NMI 1.2, Bal 11.3, MNCE 95.7
    against 14.2, 1.3, 11.2, 95.0; version 1 gave 13.8 ± 0.8, 1.0, 11.3, 95.6).
    ``child_order="key"`` orders children by cell bit pattern, which makes the result
    independent of the row order and groups similar images a little (version 1, seed 0: ACC
    29.6, NMI 17.0, Bal 11.1, MNCE 94.8). The tree and the decomposition run on the CPU
    (numpy); the medoids and the k-median use ``device``.

    Color-Reverse MNIST (``benchmarks/scfc_kmedian.py`` and the records; CPU, one thread).
    The reversed copy of image i is row i + 60,000, and the root's fairlets pair the i-th
    image of one group with the i-th of the other. Whether that pairing survives depends on
    the random shift. When the tree has depth 2 (seeds 0, 2, 3), every fairlet is an image and
    its own reversal and every centre is the original image, so ScFC is k-median on MNIST's
    60,000 training images. At depth 3 (seeds 1, 4) only 35 % / 64 % of the fairlets are
    such pairs (41 % / 67 % hold one digit), and ACC falls with them (35.7 and 36.4). Over
    seeds 0–4: ACC 43.5 ± 7.4, NMI 32.2 ± 11.2 (version 1: 39.4 ± 5.6, 29.7 ± 10.0). On the
    seed-0 centres:

    * version 1's Voronoi iteration stalls at cost 902,590: ACC 43.5, NMI 36.2;
    * the swap search reaches 881,503: ACC 53.2, NMI 43.0 (Table 1: 51.3, 49.1);
    * k-means on the same centres (not a k-median): ACC 53.7, NMI 48.4;
    * the same Voronoi-then-swap search with *squared* Euclidean distances (a k-means-like
      medoid objective; a diagnostic, not a parameter): ACC 47.1, NMI 41.4. A squared
      distance does not close the NMI gap to Table 1; that gap is not explained.

    The k-median objective is flat here. Seeds 2 and 3 have the same centres, and their swap
    optima cost 0.1 % less than seed 0's (880,678 and 880,532) with ACC 46.2 and 45.7, NMI
    38.7 and 38.5: the lower cost, the lower accuracy. The spread over seeds comes from the
    shift and from these near-equal optima, not from the solver alone. The swap search took
    300–730 s per seed on one thread (each pass over the candidates computes 60,000 × 60,000
    distances in d = 784, and the last pass finds no swap) against about 20 s for Voronoi
    iteration; on a GPU a pass is a few matrix products. On digits-reversed, seeds 0–4:
    ACC 46.8 ± 1.6 (version 1: 39.2 ± 3.4); on Adult: 52.6 ± 0.3 (58.3 ± 7.4), MNCE on sex
    98.8 (99.3).
    Deterministic for a seed (the shift and the k-medoids seeding come from it).
    """

    name = "scfc"
    description = "scalable fair clustering: quadtree fairlet decomposition + k-median on fairlet centres (2 groups)"
    paper = "Backurs et al., Scalable Fair Clustering, ICML 2019"
    paper_name = "ScFC"
    parameters = {
        "p": 0, "q": 0, "max_q": 10, "max_levels": 0, "child_order": "data", "kmedian": "swap", "kmedian_iter": 100,
        "max_candidates": 256,
    }
    test_parameters = {"kmedian_iter": 20}
    uses_gpu = False
    many_groups = False
    multi_attribute = False
    fairness_aware = True
    version = "2"

    def validate(self):
        p, q = self.params["p"], self.params["q"]
        if (p == 0) != (q == 0) or p < 0 or (q and p > q):
            raise ParameterError("scfc: give both p and q with 1 <= p <= q (target balance p/q), or both 0 for auto")
        if self.params["max_q"] < 1 or self.params["max_levels"] < 0:
            raise ParameterError("scfc: max_q must be >= 1 and max_levels >= 0 (0: no limit)")
        if self.params["child_order"] not in ("data", "key"):
            raise ParameterError("scfc: child_order must be data (reference order) or key (cell bit pattern)")
        if self.params["kmedian"] not in ("swap", "voronoi"):
            raise ParameterError("scfc: kmedian must be swap (Voronoi iteration, then FasterPAM swaps) or voronoi")
        if self.params["kmedian_iter"] < 1 or self.params["max_candidates"] < 2:
            raise ParameterError("scfc: kmedian_iter must be >= 1 and max_candidates >= 2")

    def fairlets(self, X: np.ndarray, colors: np.ndarray, seed: int):
        """Step 1: the (p, q)-fairlet decomposition along a shifted quadtree drawn from ``seed``.
        Returns (fairlet index of every point, number of fairlets, tree depth, p, q, the seed
        of step 2's k-median, drawn from the same generator after the tree)."""
        P = self.params
        rng = np.random.default_rng(seed)
        counts, _ = group_shares(colors, 2)
        if P["p"]:
            g = np.gcd(P["p"], P["q"])
            p, q = P["p"] // g, P["q"] // g
            if not balanced(p, q, counts[0], counts[1]):
                raise ParameterError(f"scfc: target balance {p}/{q} exceeds the data's {counts.min()}/{counts.max()}")
        else:
            p, q = best_ratio(counts, P["max_q"])
        if p == 0:  # one group is empty: every clustering is as fair as it can be
            return np.arange(len(X)), len(X), 0, p, q, int(rng.integers(2**31))
        tree = build_quadtree(X, rng, max_levels=P["max_levels"], child_order=P["child_order"])
        fairlet_of, n_fairlets = tree_fairlets(tree, colors, p, q)
        return fairlet_of, n_fairlets, tree.depth(), p, q, int(rng.integers(2**31))

    def fit(self, data, seed, device):
        t0 = time.perf_counter()
        P = self.params
        X = data.flat_features().astype(np.float32, copy=False)
        fairlet_of, n_fairlets, depth, p, q, kmedian_seed = self.fairlets(X, data.group, seed)
        t_tree = time.perf_counter() - t0
        Xt = torch.as_tensor(X).to(device)
        centres, decomposition_cost = fairlet_medoids(Xt, fairlet_of, n_fairlets)
        k = min(data.n_clusters, n_fairlets)
        _, centre_labels, kmedian_cost = kmedoids(
            Xt[torch.as_tensor(centres, device=Xt.device)], k, seed=kmedian_seed,
            n_iter=P["kmedian_iter"], max_candidates=P["max_candidates"], swap=P["kmedian"] == "swap",
        )
        labels = centre_labels[fairlet_of].astype(np.int64)
        history = [{
            "p": float(p), "q": float(q), "n_fairlets": float(n_fairlets), "tree_depth": float(depth),
            "fairlet_cost": decomposition_cost, "kmedian_cost_on_centres": kmedian_cost,
            "seconds_fairlets": t_tree, "seconds_total": time.perf_counter() - t0,
        }]
        return MethodOutput(labels=labels, history=history)
