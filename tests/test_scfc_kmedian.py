"""``benchmarks/scfc_kmedian.py`` must rebuild exactly the fairlets and k-median of ``scfc``
for a seed, or the figures it prints (quoted in ``methods/scfc.py``) say nothing about ScFC."""
import numpy as np
import pytest
import torch

from bench import registry
from tests.helpers import benchmark_script

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def script():
    return benchmark_script("scfc_kmedian")


@pytest.fixture(scope="module")
def data():
    return registry.datasets.get("digits-reversed")().load(None)


@pytest.mark.parametrize("solver", ["voronoi", "swap"])
def test_script_reproduces_the_labels_of_scfc(script, data, solver):
    method = registry.methods.get("scfc")(kmedian=solver)
    expected = method.fit(method.prepare_input(data.clustering_input()), 1, torch.device("cpu")).labels
    X, _, fairlet_of, n_fairlets, _, _, kseed = script.fairlet_table(method, data, 1)
    from methods._fairlets import fairlet_medoids

    centres, _ = fairlet_medoids(torch.as_tensor(X), fairlet_of, n_fairlets)
    labels, cost = script.solve(solver, torch.as_tensor(X)[torch.as_tensor(centres)], data.n_clusters, kseed, method.params)
    np.testing.assert_array_equal(labels[fairlet_of], expected)
    assert cost > 0


def test_label_purity_counts_fairlets_with_one_label(script):
    y = np.array([0, 0, 1, 2, 2, 3])
    fairlet_of = np.array([0, 0, 1, 1, 2, 2])  # {0,0} pure, {1,2} mixed, {2,3} mixed
    assert script.label_purity(y, fairlet_of, 3) == pytest.approx(1 / 3)
    assert script.label_purity(np.array([5, 5, 7, 7]), np.array([1, 0, 1, 0]), 2) == 0.0
    assert script.label_purity(np.array([5, 7, 5, 7]), np.array([1, 0, 1, 0]), 2) == 1.0


def test_swap_lowers_the_cost_and_prints_one_row_per_seed_and_solver(script, capsys):
    assert script.main(["--seeds", "0", "3", "--solvers", "voronoi", "swap"]) == 0
    costs = {}
    for line in capsys.readouterr().out.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("|") and cells[0].isdigit():
            costs[(int(cells[0]), cells[6])] = float(cells[7].replace(",", ""))
    assert set(costs) == {(0, "voronoi"), (0, "swap"), (3, "voronoi"), (3, "swap")}
    assert costs[(0, "swap")] < costs[(0, "voronoi")] and costs[(3, "swap")] < costs[(3, "voronoi")]


@pytest.mark.parametrize("argv, message", [
    (["--solvers", "pam"], "unknown solver 'pam'"),
    (["--param", "kmedian=pam"], "kmedian must be"),
    (["--param", "kmedian"], "is not NAME=VALUE"),
    (["--dataset", "no-such-set"], "no-such-set"),
])
def test_bad_input_is_one_line_and_exit_2(script, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        script.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
