"""Metrics against cases computed by hand (fcmi.md §4, anchors.md §3.4)."""
import math

import numpy as np
import pytest

from bench import metrics as M

H23 = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))  # entropy of (2/3, 1/3) = 0.6365


def test_two_clusters_two_groups():
    y = [0, 0, 0, 1, 1, 1]
    pred = [0, 0, 0, 1, 1, 1]
    g = [0, 0, 1, 0, 1, 1]  # N = [[2, 1], [1, 2]]
    np.testing.assert_array_equal(M.contingency(pred, g), [[2, 1], [1, 2]])
    assert M.accuracy(y, pred) == 1.0
    assert M.nmi(y, pred) == pytest.approx(1.0)
    assert M.balance(pred, g) == pytest.approx(0.5)
    assert M.balance_bound(g) == 1.0
    assert M.ratio_balance(pred, g) == pytest.approx(2 / 3)  # p=2/3 vs r=1/2 -> 3/4; p=1/3 -> 2/3
    expected_entropy = -(2 / 3 * math.log(2 / 3 + 1e-5) + 1 / 3 * math.log(1 / 3 + 1e-5))
    assert M.entropy(pred, g) == pytest.approx(expected_entropy)
    assert M.mnce(pred, g) == pytest.approx(H23 / math.log(2), abs=1e-5)
    assert M.mutual_information(pred, g) == pytest.approx(math.log(2) - H23)


def test_hungarian_accuracy_with_permuted_and_wrong_labels():
    y = [0, 0, 1, 1, 2, 2]
    assert M.accuracy(y, [1, 1, 2, 2, 0, 0]) == 1.0
    assert M.accuracy(y, [1, 1, 2, 0, 0, 0]) == pytest.approx(5 / 6)
    assert M.accuracy(y, [0, 0, 0, 0, 0, 0]) == pytest.approx(2 / 6)  # one cluster


def test_nmi_is_arithmetic_mean_normalised():
    y = np.array([0, 0, 1, 1, 1, 1])
    pred = np.array([0, 0, 0, 1, 1, 1])
    p = M.contingency(pred, y) / 6.0
    mi = sum(p[i, j] * math.log(p[i, j] / (p[i].sum() * p[:, j].sum())) for i in range(2) for j in range(2) if p[i, j])
    h = lambda q: -sum(x * math.log(x) for x in q if x)  # noqa: E731
    assert M.nmi(y, pred) == pytest.approx(mi / ((h(p.sum(0)) + h(p.sum(1))) / 2))


def test_empty_cluster_does_not_lower_fcmi_balance_or_mnce():
    pred = [0, 0, 1, 1]
    g = [0, 1, 0, 1]
    assert M.balance(pred, g, n_clusters=3) == 1.0
    assert M.mnce(pred, g, n_clusters=3) == pytest.approx(1.0, abs=1e-5)
    assert M.ratio_balance(pred, g, n_clusters=3) == 1.0
    # but the empty cluster still counts as a cluster in the contingency table
    assert M.contingency(pred, g, n_clusters=3).shape == (3, 2)


def test_group_absent_from_a_cluster():
    pred = [0, 0, 1, 1]
    g = [0, 0, 0, 1]  # N = [[2, 0], [1, 1]]
    assert M.balance(pred, g) == pytest.approx(1e-5 / 2)
    assert M.ratio_balance(pred, g) == 0.0
    assert M.mnce(pred, g) < 1e-4
    assert M.balance_bound(g) == pytest.approx(1 / 3)


def test_one_cluster_is_perfectly_fair():
    g = [0, 0, 0, 1]
    pred = [0, 0, 0, 0]
    assert M.balance(pred, g) == pytest.approx(M.balance_bound(g)) == pytest.approx(1 / 3)
    assert M.mnce(pred, g) == pytest.approx(1.0)
    assert M.ratio_balance(pred, g) == pytest.approx(1.0)


def test_many_groups():
    # 3 clusters x 3 groups, N = [[2,1,1],[1,2,1],[1,1,2]]
    pred = [0] * 4 + [1] * 4 + [2] * 4
    g = [0, 0, 1, 2, 0, 1, 1, 2, 0, 1, 2, 2]
    np.testing.assert_array_equal(M.contingency(pred, g), [[2, 1, 1], [1, 2, 1], [1, 1, 2]])
    assert M.balance(pred, g) == pytest.approx(0.5)
    h_k = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert M.mnce(pred, g) == pytest.approx(h_k / math.log(3), abs=1e-5)
    assert M.ratio_balance(pred, g) == pytest.approx(2 / 3)  # p=1/2 vs r=1/3 gives 2/3; p=1/4 gives 3/4
    assert M.entropy(pred, g) == pytest.approx(-(0.5 * math.log(0.5 + 1e-5) + 2 * 0.25 * math.log(0.25 + 1e-5)))


def test_balance_bound_on_unequal_groups():
    g = np.array([0] * 60 + [1] * 7)
    pred = np.arange(67) % 2
    assert M.balance_bound(g) == pytest.approx(7 / 60)
    assert M.balance(pred, g) <= M.balance_bound(g)


def test_f_measure_matches_fcmi_log():
    assert M.f_measure(0.7116, 0.90643) == pytest.approx(0.79728, abs=1e-5)
    assert M.f_measure(0.0, 0.0) == 0.0


def test_joint_metrics_and_signed_sum_of_mutual_information():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2, 4000), rng.integers(0, 2, 4000)
    y = a ^ b
    xor = M.evaluate(y, a ^ b, np.stack([a, b], 1), 2, attribute_names=["a", "b"])
    # XOR: the clustering is independent of each attribute but determined by the pair
    assert xor["mi[a]"] < 1e-3 and xor["mi[b]"] < 1e-3
    assert xor["mi[joint]"] == pytest.approx(math.log(2), abs=1e-3)
    assert xor["mi[joint]"] > xor["mi_sum"]  # the joint is not bounded by the sum
    assert xor["mnce[a]"] > 0.99 and xor["mnce[joint]"] < 0.6
    assert xor["balance_worst"] == xor["balance[joint]"] < 1e-4
    same = M.evaluate(a, a, np.stack([a, a], 1), 2, attribute_names=["a", "b"])
    assert same["mi_sum"] == pytest.approx(2 * same["mi[joint]"])  # and the sum can exceed the joint


def test_evaluate_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="lengths differ"):
        M.evaluate([0, 1], [0, 1, 1], [0, 1], 2)
