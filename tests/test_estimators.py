"""Dependence estimators of methods/_estimators.py (ifc_infomin.md §C.6 sanity checks).

Every estimator is fitted on one sample and read on a fresh sample from the same law (the
unbiased reading for fitted estimators): ~0 under independence, large under dependence,
blind to XOR dependence through one attribute but not through the joint cell, finite with an
empty one-hot column, and differentiable in the clustering side only.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.metrics import mutual_information
from methods._estimators import ESTIMATORS, SlicedMI, encode_groups, make_estimator
from methods._fcmi_loop import cluster_group_mi, cluster_group_table

NAMES = sorted(ESTIMATORS)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

K = 3
N = 512
# (largest value read as "independent", smallest value read as "dependent"); scales differ:
# correlations in [0, 1], TC in [≈0, log 2], CLUB and plug-in in nats.
THRESHOLDS = {
    "pearson": (0.1, 0.3), "dcor": (0.1, 0.5), "slice": (0.1, 0.5), "hgr": (0.1, 0.3),
    "tc": (0.05, 0.1), "club": (0.05, 0.3), "plugin": (0.02, 0.2),
}


def sample(kind, n, gen):
    """Soft assignments Q over K clusters and two independent fair binary attributes.
    indep: Q independent of both; dep: Q driven by g0; xor: Q driven by g0 XOR g1."""
    g = torch.randint(0, 2, (n, 2), generator=gen)
    noise = torch.randn(n, K, generator=gen)
    driver = {"indep": None, "dep": g[:, 0], "xor": g[:, 0] ^ g[:, 1]}[kind]
    logits = noise if driver is None else noise + 3 * F.one_hot(driver, K).float()
    return torch.softmax(logits, 1), g


def build(name, t_width, blocks):
    options = {}
    if ESTIMATORS[name].trainable:
        options = dict(inner_steps=50, inner_lr=1e-2)  # converge within one fit for the test
    if name == "slice":
        options["n_slices"] = 20
    if name == "plugin":
        options["blocks"] = blocks
    return make_estimator(name, K, t_width, seed=0, **options)


def held_out_value(name, kind, mode, attribute=0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a_fit, g_fit = sample(kind, N, gen)
    a_new, g_new = sample(kind, N, gen)
    t_fit, blocks = encode_groups(g_fit, [2, 2], mode, attribute)
    t_new, _ = encode_groups(g_new, [2, 2], mode, attribute)
    est = build(name, t_fit.shape[1], blocks)
    est.fit(a_fit, t_fit)
    return float(est.penalty(a_new, t_new))


@pytest.mark.parametrize("name", NAMES)
def test_near_zero_when_independent_large_when_dependent(name):
    small, large = THRESHOLDS[name]
    independent = held_out_value(name, "indep", "joint")
    dependent = held_out_value(name, "dep", "joint")
    assert abs(independent) < small, (name, independent)
    assert dependent > large, (name, dependent)


@pytest.mark.parametrize("name", NAMES)
def test_xor_blind_through_one_attribute_seen_through_joint_cell(name):
    small, large = THRESHOLDS[name]
    for attribute in (0, 1):
        single = held_out_value(name, "xor", "single", attribute)
        assert abs(single) < small, (name, attribute, single)
    joint = held_out_value(name, "xor", "joint")
    assert joint > large, (name, joint)


@pytest.mark.parametrize("name", NAMES)
def test_finite_with_empty_one_hot_column_and_gradient_to_clustering_side_only(name):
    gen = torch.Generator().manual_seed(1)
    q, g = sample("dep", 128, gen)
    g[:, 1] = 0  # cells (0,1) and (1,1) of the joint one-hot are empty in this batch
    t, blocks = encode_groups(g, [2, 2], "joint")
    assert (t.sum(0) == 0).sum() == 2
    est = build(name, t.shape[1], blocks)
    t = t.clone().requires_grad_(True)
    a = q.clone().requires_grad_(True)
    est.fit(a, t)
    assert a.grad is None and t.grad is None  # the max-step never reaches the data
    fitted_before = [p.detach().clone() for p in est.parameters()]
    value = est.penalty(a, t)
    assert value.dim() == 0 and torch.isfinite(value), (name, value)
    value.backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0, name
    assert t.grad is None, "gradient leaked into the sensitive attributes"
    for p, before in zip(est.parameters(), fitted_before):
        assert p.grad is None, "the min-step must not train the estimator"
        assert torch.equal(p.detach(), before)


@pytest.mark.parametrize("name", NAMES)
def test_constant_batch_column_is_finite(name):
    """A collapsed cluster (constant column of Q) and a batch with a single group."""
    gen = torch.Generator().manual_seed(2)
    q, g = sample("indep", 64, gen)
    q = torch.cat([q, torch.zeros(64, 1)], 1)[:, 1:]  # last cluster empty everywhere
    q = q / q.sum(1, keepdim=True)
    g[:] = 1
    t, blocks = encode_groups(g, [2, 2], "concat")
    est = make_estimator(name, K, t.shape[1], seed=0, **({"blocks": blocks} if name == "plugin" else {}))
    a = q.requires_grad_(True)
    est.fit(a, t)
    value = est.penalty(a, t)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(a.grad).all(), name


def test_encode_groups_modes():
    g = torch.tensor([[0, 0], [0, 2], [1, 1], [1, 2]])
    t, blocks = encode_groups(g, [2, 3], "joint")
    assert blocks == [6] and t.shape == (4, 6)
    assert t.argmax(1).tolist() == [0, 2, 4, 5]  # mixed radix, attribute 0 most significant
    t, blocks = encode_groups(g, [2, 3], "concat")
    assert blocks == [2, 3] and t.sum(1).tolist() == [2.0] * 4
    t, blocks = encode_groups(g, [2, 3], "single", attribute=1)
    assert blocks == [3] and t.argmax(1).tolist() == [0, 2, 1, 2]
    with pytest.raises(ValueError):
        encode_groups(g, [2, 3], "pairs")


def test_plugin_equals_fcmi_infofair_and_the_hard_plugin_mi():
    gen = torch.Generator().manual_seed(3)
    q, g = sample("dep", 300, gen)
    t, blocks = encode_groups(g, [2, 2], "joint")
    est = make_estimator("plugin", K, t.shape[1], blocks=blocks)
    code = g[:, 0] * 2 + g[:, 1]
    fcmi_value = cluster_group_mi(cluster_group_table(q, code, 4))
    torch.testing.assert_close(est.penalty(q, t), fcmi_value, rtol=1e-5, atol=1e-6)
    q, g = sample("dep", 3000, gen)  # hard labels with every (cluster, cell) pair occupied
    t, _ = encode_groups(g, [2, 2], "joint")
    code = g[:, 0] * 2 + g[:, 1]
    hard = F.one_hot(q.argmax(1), K).float()
    assert (hard.T @ t > 0).all()
    expected = mutual_information(q.argmax(1).numpy(), code.numpy())
    assert math.isclose(float(est.penalty(hard, t)), expected, rel_tol=1e-3, abs_tol=1e-4)


def test_pearson_matches_numpy_and_dcor_of_a_variable_with_itself_is_one():
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(200, 3, generator=gen, dtype=torch.float64)
    t = a @ torch.randn(3, 2, generator=gen, dtype=torch.float64) + torch.randn(200, 2, generator=gen)
    full = np.corrcoef(np.concatenate([a.numpy(), t.numpy()], 1).T)[:3, 3:]
    value = make_estimator("pearson", 3, 2).penalty(a, t)
    assert math.isclose(float(value), np.abs(full).mean(), rel_tol=1e-4)
    assert math.isclose(float(make_estimator("dcor", 3, 3).penalty(a, a)), 1.0, rel_tol=1e-4)


def test_slices_are_redrawn_every_fit_and_reproducible_by_seed():
    gen = torch.Generator().manual_seed(5)
    q, g = sample("dep", 256, gen)
    t, _ = encode_groups(g, [2, 2], "joint")
    est, twin = SlicedMI(K, 4, n_slices=10, seed=7), SlicedMI(K, 4, n_slices=10, seed=7)
    est.fit(q, t)
    first = est.theta_a.clone()
    est.fit(q, t)
    assert not torch.equal(first, est.theta_a)
    twin.fit(q, t)
    assert torch.equal(first, twin.theta_a)
    assert est.theta_a.shape == (10, K) and torch.allclose(est.theta_a.norm(dim=1), torch.ones(10))
