"""Behaviour of the classical fair baselines ScFC, SpFC and FAlg on small data with a known answer."""
import numpy as np
import pytest
import scipy.linalg as sla
import scipy.sparse as sp
import torch
from scipy.optimize import linprog

from bench import Attribute, LabelledData, registry
from bench.metrics import accuracy, balance, contingency
from methods import falg as falg_mod
from methods._fair_classical import kmedoids
from methods._fairlets import balanced, best_ratio, build_quadtree, fairlet_medoids, tree_fairlets
from methods.spfc import fair_spectral_embedding, fairness_matrix

CPU = torch.device("cpu")


def _fit(name, data, seed=0, **params):
    method = registry.methods.get(name)(**params)
    return method.fit(method.prepare_input(data.clustering_input()), seed, CPU)


def _fair_blobs(n_per=90, minority=30, k=3, d=2, seed=0):
    """k well-separated blobs, each with exactly the same group mix (minority of n_per in group 1):
    the true clustering is also the fairest one."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=20.0, size=(k, d))
    X = np.concatenate([c + rng.normal(size=(n_per, d)) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(k), n_per)
    g = np.tile((np.arange(n_per) < minority).astype(np.int64), k)
    perm = rng.permutation(len(y))
    return LabelledData(X=X[perm], y=y[perm], groups=g[perm], attributes=(Attribute("g", 2),), n_clusters=k, name="blobs")


# --------------------------------------------------------------------- recovery of a fair structure
@pytest.mark.parametrize("name", ["scfc", "spfc-unnorm", "spfc-norm", "falg"])
def test_separable_fair_structure_is_recovered(name):
    data = _fair_blobs()
    out = _fit(name, data, **({"kmeans_n_init": 2} if name.startswith("spfc") or name == "falg" else {}))
    # ScFC's tree may cut a blob and pair a few points across blobs (O(log n) distortion)
    assert accuracy(data.y, out.labels) >= (0.95 if name == "scfc" else 0.99)
    # group 1 is 1/3 of every blob: Balance 1/2 is the best possible, and it is reached
    assert balance(out.labels, data.groups[:, 0]) == pytest.approx(0.5, abs=0.03)


def test_fair_spectral_recovers_planted_clusters_of_a_fair_sbm():
    """Kleindessner et al.'s variant of the SBM: edges are likelier within a group than within a
    cluster, so unconstrained spectral clustering finds the groups, fair SC the clusters."""
    rng = np.random.default_rng(0)
    n = 400
    cluster = np.repeat([0, 1], n // 2)
    group = np.tile([0, 1], n // 2)
    same_c, same_g = cluster[:, None] == cluster[None], group[:, None] == group[None]
    prob = np.select([same_c & same_g, same_g, same_c], [0.3, 0.2, 0.1], 0.02)
    A = np.triu(rng.random((n, n)) < prob, 1)
    W = sp.csr_matrix((A | A.T).astype(float))
    for normalized in (False, True):
        H, _, _ = fair_spectral_embedding(W, group, 2, 2, normalized, seed=0)
        fair = (H[:, 1] > np.median(H[:, 1])).astype(int)
        assert accuracy(cluster, fair) >= 0.95
        plain, _, _ = fair_spectral_embedding(W, np.zeros(n, int), 1, 2, normalized, seed=0)
        unfair = (plain[:, 1] > np.median(plain[:, 1])).astype(int)
        assert accuracy(group, unfair) >= 0.95  # without the constraint the groups win


# --------------------------------------------------------------------- ScFC: fairlets
@pytest.mark.parametrize("p,q,share,d", [(1, 3, 0.3, 2), (2, 5, 0.4, 2), (1, 1, 0.5, 50), (1, 9, 0.11, 8)])
def test_fairlets_are_balanced_to_the_requested_ratio(p, q, share, d):
    rng = np.random.default_rng(p * 10 + q)
    n = 1500
    X = rng.normal(size=(n, d))
    X[: n // 5] = X[0]  # a fifth of the points coincide: exercises the leaf-size limit
    colors = rng.permutation((np.arange(n) < round(share * n)).astype(int))
    assert balanced(p, q, (colors == 0).sum(), (colors == 1).sum())
    tree = build_quadtree(X, np.random.default_rng(0))
    fairlet_of, count = tree_fairlets(tree, colors, p, q)
    assert fairlet_of.min() == 0 and fairlet_of.max() == count - 1  # a partition of all points
    size = np.bincount(fairlet_of, minlength=count)
    blue = np.bincount(fairlet_of, weights=colors, minlength=count).astype(int)
    assert balanced(p, q, size - blue, blue).all()
    assert size.max() <= p + q or (p == q and size.max() <= 2)


@pytest.mark.parametrize("order", ["data", "key"])
def test_tree_fairlets_are_local_and_deterministic(order):
    rng = np.random.default_rng(1)
    X = rng.uniform(size=(2000, 2))
    colors = np.arange(2000) % 2
    a = tree_fairlets(build_quadtree(X, np.random.default_rng(5), child_order=order), colors, 1, 1)
    b = tree_fairlets(build_quadtree(X, np.random.default_rng(5), child_order=order), colors, 1, 1)
    np.testing.assert_array_equal(a[0], b[0])
    Xt = torch.as_tensor(X, dtype=torch.float32)
    _, tree_cost = fairlet_medoids(Xt, *a)
    random_pairs = np.empty(2000, dtype=np.int64)
    random_pairs[rng.permutation(1000) * 2] = np.arange(1000)
    random_pairs[rng.permutation(1000) * 2 + 1] = np.arange(1000)
    _, random_cost = fairlet_medoids(Xt, random_pairs, 1000)
    assert tree_cost < random_cost / 3


def test_scfc_clusters_meet_the_target_balance_and_skip_many_groups():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(600, 3)).astype(np.float32)
    g = (rng.random(600) < 0.35).astype(np.int64)
    data = LabelledData(X=X, y=np.zeros(600, np.int64), groups=g, attributes=(Attribute("g", 2),), n_clusters=4)
    out = _fit("scfc", data, p=1, q=2)
    table = contingency(out.labels, g, 4, 2)
    assert (np.minimum(table[:, 0], table[:, 1]) * 2 >= np.maximum(table[:, 0], table[:, 1])).all()
    assert best_ratio([60000, 7291], 10) == (1, 9) and best_ratio([2817, 795], 10) == (1, 4)
    from bench import NotApplicable

    many = LabelledData(X=X, y=np.zeros(600, np.int64), groups=np.arange(600) % 3,
                        attributes=(Attribute("g", 3),), n_clusters=4)
    with pytest.raises(NotApplicable):
        registry.methods.get("scfc")().check_applicable(many.clustering_input())


def _kmedian_cost(D, medoids):
    return float(D[:, list(medoids)].min(1).values.sum())


@pytest.mark.parametrize("chunk, squared", [(7, False), (2048, False), (7, True)])
def test_swap_search_reaches_the_exhaustive_k_median_optimum_where_voronoi_stalls(chunk, squared, monkeypatch):
    """Four overlapping blobs, k = 3: Voronoi iteration stalls above the optimum on some draws;
    the swap search (FasterPAM) ends at a medoid set no single swap improves, here the optimum
    found by trying all C(40, 3) sets, in chunks of any size, on Euclidean distances or (the
    diagnostic ``squared`` objective) on their squares."""
    import itertools

    from methods import _fair_classical as fc

    real = fc.swap_medoids
    monkeypatch.setattr(fc, "swap_medoids", lambda X, m, seed, **kw: real(X, m, seed, chunk=chunk, **kw))
    gen = torch.Generator().manual_seed(0)
    stalled = 0
    for trial in range(6):
        X = torch.randn(40, 3, generator=gen) + torch.repeat_interleave(torch.randn(4, 3, generator=gen) * 3, 10, 0)
        D = torch.cdist(X.double(), X.double()) ** (2 if squared else 1)
        optimum = min(_kmedian_cost(D, c) for c in itertools.combinations(range(40), 3))
        _, _, voronoi_cost = kmedoids(X, 3, seed=trial, squared=squared)
        medoids, labels, swap_cost = kmedoids(X, 3, seed=trial, swap=True, squared=squared)
        stalled += voronoi_cost > optimum + 1e-3
        assert swap_cost <= voronoi_cost + 1e-4
        if not squared:  # on these draws the swap-local optimum is the global one (not in general)
            assert swap_cost == pytest.approx(optimum, rel=1e-5)
        assert np.array_equal(labels, D[:, list(medoids)].argmin(1).numpy())
        for m, o in itertools.product(range(3), range(40)):  # swap-local optimum
            trial_set = [o if i == m else medoids[i] for i in range(3)]
            assert _kmedian_cost(D, trial_set) >= _kmedian_cost(D, medoids) - 1e-4
    assert stalled >= 1  # the draws include a case the swap search is needed for


# --------------------------------------------------------------------- SpFC: the constraint
@pytest.mark.parametrize("normalized", [False, True])
def test_spectral_solution_satisfies_fairness_constraint_and_matches_dense_reference(normalized):
    from methods._fair_classical import knn_graph

    rng = np.random.default_rng(3)
    X = rng.normal(size=(240, 5))
    groups = rng.integers(0, 3, 240)
    W, _ = knn_graph(X, 8)
    H, eig, _ = fair_spectral_embedding(W, groups, 3, 4, normalized, seed=0)
    F = fairness_matrix(groups, 3)
    assert np.abs(F.T @ H).max() <= 1e-10 * np.abs(F).max() * np.abs(H).max() * len(H)
    # Kleindessner et al., Algorithms 2 and 3, with the explicit null-space basis Z
    Wd = W.toarray()
    D = np.diag(Wd.sum(1))
    Z = sla.null_space(F.T)
    if normalized:
        Qi = np.linalg.inv(sla.sqrtm(Z.T @ D @ Z).real)
        M = Qi @ Z.T @ (D - Wd) @ Z @ Qi
        ref_eig, Y = np.linalg.eigh((M + M.T) / 2)
        ref = Z @ Qi @ Y[:, :4]
        np.testing.assert_allclose(H.T @ D @ H, np.eye(4), atol=1e-8)
    else:
        ref_eig, Y = np.linalg.eigh(Z.T @ (D - Wd) @ Z)
        ref = Z @ Y[:, :4]
    np.testing.assert_allclose(eig, ref_eig[:4], atol=1e-7)
    cosines = np.linalg.svd(np.linalg.qr(H)[0].T @ np.linalg.qr(ref)[0], compute_uv=False)
    assert cosines.min() > 1 - 1e-8  # same subspace


def test_spfc_subsample_is_recorded_and_labels_everything():
    data = _fair_blobs(n_per=120, minority=40)
    out = _fit("spfc-norm", data, max_samples=150, kmeans_n_init=2)
    assert out.history[0]["n_used"] == pytest.approx(150, abs=2)
    assert out.labels.shape == (360,) and accuracy(data.y, out.labels) >= 0.99


# --------------------------------------------------------------------- FAlg: the LP and its rounding
def _shifted(n=900, n_attr=1, n_groups=2, seed=0):
    """Groups displaced from each other so that vanilla k-means is unfair."""
    return registry.datasets.get("synthetic")(
        n_samples=n, n_features=4, n_clusters=3, n_groups=n_groups, n_attributes=n_attr,
        group_shift=12.0, imbalance=1.5, seed=seed).load()


@pytest.mark.parametrize("n_attr,n_groups", [(1, 2), (1, 5), (2, 3), (4, 8)])
def test_fair_lp_respects_bounds_and_rounding_violation_is_bounded(n_attr, n_groups):
    data = _shifted(n_attr=n_attr, n_groups=n_groups)
    k, delta = 3, 0.2
    X = torch.as_tensor(data.X)
    from bench.kmeans import kmeans

    C, unfair = kmeans(X, k, n_init=2, seed=0)
    cost = torch.cdist(X.double(), C.double()).pow(2).numpy()
    n_values = [a.n_values for a in data.attributes]
    s = falg_mod._Structure(data.groups, n_values, k)
    lo, hi = falg_mod.proportion_bounds(data.groups, n_values, delta)
    assert falg_mod.additive_violation(unfair.numpy(), s, lo, hi) > 5  # vanilla k-means is unfair here
    x, _, obj = falg_mod.solve_fair_lp(cost, s, lo, hi)
    # before rounding: every proportion within [β, α] (to solver precision)
    assert falg_mod.additive_violation(x, s, lo, hi) < 1e-6
    np.testing.assert_allclose(x.sum(1), 1.0, atol=1e-9)
    # the sparse formulation has the optimum of the direct one (fairness rows over all x)
    n = len(cost)
    rows = []
    for a, V in enumerate(n_values):
        member = np.eye(V)[data.groups[:, a]]
        for i in range(k):
            for v in range(V):
                row = np.zeros((n, k))
                row[:, i] = lo[a][v] - member[:, v]
                rows.append(row.ravel())
                row = np.zeros((n, k))
                row[:, i] = member[:, v] - hi[a][v]
                rows.append(row.ravel())
    direct = linprog(cost.ravel(), A_ub=sp.csr_matrix(np.array(rows)), b_ub=np.zeros(len(rows)),
                     A_eq=sp.kron(sp.eye(n), np.ones((1, k))), b_eq=np.ones(n), bounds=(0, 1), method="highs")
    assert obj == pytest.approx(direct.fun, rel=1e-7)
    # after rounding: integral, no costlier than the LP, additive violation within the paper's bound
    labels, info = falg_mod.iterative_rounding(x, cost, s)
    assert labels.min() >= 0 and labels.max() < k
    assert cost[np.arange(n), labels].sum() <= obj * (1 + 1e-9)
    violation = falg_mod.additive_violation(labels, s, lo, hi)
    if n_attr == 1:  # laminar bounds: counts within ±1 of the LP's, so violation < 1 + α
        assert violation < 1 + max(h.max() for h in hi) and info["dropped_constraints"] == 0
    assert violation <= 4 * n_attr + 3


def test_falg_method_fairer_than_kmeans_and_deterministic():
    data = _shifted(n_attr=2, n_groups=2, seed=1)
    out = _fit("falg", data, kmeans_n_init=2)
    again = _fit("falg", data, kmeans_n_init=2)
    np.testing.assert_array_equal(out.labels, again.labels)
    km = _fit("kmeans", data, n_init=2)
    for a in range(2):  # Bera's lower bound r(1 - δ) on the minority share, minus rounding slack
        r = np.bincount(data.groups[:, a]).min() / len(data.groups)
        floor = r * 0.8 / (1 - r * 0.8)
        assert balance(out.labels, data.groups[:, a]) >= 0.9 * floor
    assert balance(km.labels, data.groups[:, 0]) < 0.1  # unaware k-means splits the groups
    h = out.history[0]
    assert h["lp_violation"] < 1e-6 and h["rounded_violation"] <= 11


def test_gpu_knn_path_matches_scikit_learn():
    """The tensor k-NN used on a GPU (run here on CPU tensors) gives scikit-learn's neighbours."""
    from sklearn.neighbors import NearestNeighbors

    from methods._fair_classical import _torch_knn

    X = np.random.default_rng(4).normal(size=(300, 7)).astype(np.float32)
    ours = np.sort(_torch_knn(torch.as_tensor(X), 6, chunk=128), axis=1)
    ref = np.sort(NearestNeighbors(n_neighbors=6).fit(X).kneighbors(return_distance=False), axis=1)
    np.testing.assert_array_equal(ours, ref)


def test_knn_graph_is_reused_across_seeds_without_sharing_the_matrix():
    """The graph depends only on the data: a second call with the same X is served from the
    per-process cache (equal graph, with the seconds its build took), mutating a returned
    graph does not touch the cache, and other data get their own graph."""
    from methods import _fair_classical as fc

    rng = np.random.default_rng(4)
    X = rng.normal(size=(300, 6)).astype(np.float32)
    first, first_reused = fc.knn_graph(X, 7)
    cached = fc._LAST_GRAPH["W"]
    first.data[:] = 5.0
    second, second_reused = fc.knn_graph(X.copy(), 7)
    assert fc._LAST_GRAPH["W"] is cached
    assert first_reused == 0.0 and second_reused == fc._LAST_GRAPH["seconds"] > 0  # the reuser is told the build time
    assert (second != fc._build_knn_graph(X, 7)).nnz == 0 and second.data.max() == 1.0
    other, _ = fc.knn_graph(X + 1e-3 * rng.normal(size=X.shape).astype(np.float32), 7)
    assert fc._LAST_GRAPH["W"] is not cached and other.shape == (300, 300)
