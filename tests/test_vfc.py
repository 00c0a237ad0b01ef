"""VFC (Ziko et al., AAAI 2021): the fairness term and its gradient against hand and autograd
computations, monotone descent of the objective over the bound-optimisation iterations,
fairness error falling as λ rises, recovery of a fair structure, many groups, determinism."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from bench import ParameterError, registry
from bench.kmeans import kmeans
from bench.metrics import accuracy, balance, balance_bound
from methods.vfc import VFC, fairness_error, fairness_gradient, soft_fairness, variational_fair_kmeans

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def fair_structure(n_per_cell=100, n_groups=2, seed=0):
    """Two true clusters (y: bottom / top, 4 apart) crossed with groups that sit 6 apart
    horizontally: unaware k-means with K = 2 splits by group; the fair answer splits by y."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), 2 * n_per_cell)
    y = np.tile(np.repeat([0, 1], n_per_cell), n_groups)
    x_pos = 6.0 * (g - (n_groups - 1) / 2)
    X = np.stack([x_pos, np.where(y == 0, -2.0, 2.0)], 1) + rng.normal(scale=0.5, size=(g.size, 2))
    return torch.tensor(X), torch.tensor(g), y


def test_fairness_error_by_hand():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    groups = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    # U = (1/2, 1/2); P_0 = (3/4, 1/4), P_1 = (1/4, 3/4): each KL is ½ log(2/3) + ½ log 2.
    expected = 2 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25))
    assert fairness_error(labels, groups, 2, 2) == pytest.approx(expected, rel=1e-12)
    # An empty third cluster has no group mix and adds nothing.
    assert fairness_error(labels, groups, 3, 2) == pytest.approx(expected, rel=1e-12)
    # A perfectly mixed clustering has zero error.
    assert fairness_error(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), 2, 2) == pytest.approx(0.0, abs=1e-15)


def test_fairness_gradient_is_the_gradient_of_the_kl_term():
    gen = torch.Generator().manual_seed(0)
    S = torch.softmax(torch.randn(30, 4, generator=gen, dtype=torch.float64), 1).requires_grad_(True)
    g = torch.randint(0, 3, (30,), generator=gen)
    V = torch.nn.functional.one_hot(g, 3).double()
    u = V.mean(0)
    soft_fairness(S, V, u).backward()
    np.testing.assert_allclose(fairness_gradient(S.detach(), V, g, u).numpy(), S.grad.numpy(), rtol=1e-10)
    # And the soft term equals Σ_k KL(U‖P_k) written out.
    Sd = S.detach().numpy()
    P = (V.numpy().T @ Sd) / Sd.sum(0)
    expected = sum(float((u.numpy() * np.log(u.numpy() / P[:, k])).sum()) for k in range(4))
    assert float(soft_fairness(S.detach(), V, u)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("lmbda", [0.0, 100.0, 10000.0])
def test_objective_decreases_monotonically(lmbda):
    X, g, _ = fair_structure()
    res = variational_fair_kmeans(X, g, 2, 2, lmbda=lmbda, seed=0, kmeans_n_init=2)
    trace = np.array(res.objective_trace)
    assert len(trace) > 3
    assert np.all(np.diff(trace) <= 1e-12 * np.abs(trace).max())
    assert trace[-1] < trace[0]
    assert res.history[-1]["objective"] == pytest.approx(trace[-1], rel=1e-12)


def test_fairness_error_falls_as_lambda_rises_and_fair_structure_is_recovered():
    X, g, y = fair_structure()
    errors, accs = [], []
    for lmbda in (0.0, 30.0, 300.0, 10000.0):
        labels = variational_fair_kmeans(X, g, 2, 2, lmbda=lmbda, seed=0, kmeans_n_init=2).labels.numpy()
        errors.append(fairness_error(labels, g.numpy(), 2, 2))
        accs.append(accuracy(y, labels))
    assert all(b <= a + 1e-9 for a, b in zip(errors, errors[1:])), errors
    assert errors[0] > 10 and errors[-1] < 0.05, errors
    # Unaware k-means splits by group (chance accuracy); a strong fairness weight finds y.
    assert accs[0] < 0.6 and accs[-1] >= 0.95, accs


def test_lambda_zero_keeps_the_kmeans_partition():
    X, g, _ = fair_structure()
    centres, km_labels = kmeans(X.float(), 2, seed=3, n_init=2)
    res = variational_fair_kmeans(X, g, 2, 2, lmbda=0.0, init_centres=centres)
    np.testing.assert_array_equal(res.labels.numpy(), km_labels.numpy())


def test_many_unequal_groups():
    X, g, y = fair_structure(n_per_cell=60, n_groups=3)
    keep = np.ones(len(g), bool)
    keep[np.flatnonzero(g.numpy() == 2)[::2]] = False  # group 2 half as large: shares 0.4/0.4/0.2
    X, g, y = X[keep], g[keep], y[keep]
    unaware = variational_fair_kmeans(X, g, 3, 2, lmbda=0.0, seed=0, kmeans_n_init=2).labels.numpy()
    fair = variational_fair_kmeans(X, g, 3, 2, lmbda=20000.0, seed=0, kmeans_n_init=2).labels.numpy()
    assert fairness_error(fair, g.numpy(), 2, 3) < 0.05 < fairness_error(unaware, g.numpy(), 2, 3)
    assert balance(fair, g.numpy(), 2, 3) >= 0.9 * balance_bound(g.numpy(), 3)
    assert accuracy(y, fair) >= 0.95


@pytest.fixture(scope="module")
def digits_subset():
    d = registry.datasets.get("digits-reversed")().load()
    idx = np.sort(np.random.default_rng(0).choice(d.n_samples, 600, replace=False))
    return dataclasses.replace(d, X=d.X[idx], y=d.y[idx], groups=d.groups[idx])


def test_adapter_on_digits_is_fairer_with_lambda_and_deterministic(digits_subset):
    inp = digits_subset.clustering_input().primary_only()
    g = digits_subset.groups[:, 0]
    small = {"max_iter": 20, "kmeans_n_init": 2}
    unaware = VFC(lmbda=0.0, **small).fit(inp, 0, CPU)
    fair = VFC(lmbda=2000.0, **small).fit(inp, 0, CPU)
    again = VFC(lmbda=2000.0, **small).fit(inp, 0, CPU)
    # Pixels separate original from reversed digits completely; VFC mixes them.
    assert balance(unaware.labels, g, 10, 2) == pytest.approx(0.0, abs=1e-4)
    assert fairness_error(fair.labels, g, 10, 2) < 0.1 * fairness_error(unaware.labels, g, 10, 2)
    assert balance(fair.labels, g, 10, 2) > 0.5
    np.testing.assert_array_equal(fair.labels, again.labels)
    assert fair.history == again.history
    assert fair.history[-1]["fairness_error"] == pytest.approx(fairness_error(fair.labels, g, 10, 2))


def test_parameter_validation():
    with pytest.raises(ParameterError, match="lmbda"):
        VFC(lmbda=-1.0)
    with pytest.raises(ParameterError, match="normalize"):
        VFC(normalize="zscore")
    with pytest.raises(ParameterError, match="max_iter"):
        VFC(max_iter=0)
