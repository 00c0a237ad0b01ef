"""The gradient-reliability diagnostic of ``benchmarks/estimator_gradients.py`` on the embedded
digits-reversed groups: its measurement must separate signal from noise, or the figures it
prints (quoted in ``methods/infomin.py``) mean nothing."""
import numpy as np
import pytest
import torch

from bench import registry
from methods._estimators import encode_groups, make_estimator
from tests.helpers import benchmark_script

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def diag():
    return benchmark_script("estimator_gradients")


@pytest.fixture(scope="module")
def setting():
    data = registry.datasets.get("digits-reversed")().load(None)
    groups = torch.as_tensor(data.groups)
    t, blocks = encode_groups(groups, [a.n_values for a in data.attributes], "joint")
    s = groups[:, 0].float() - groups[:, 0].float().mean()
    u = torch.randn(groups.shape[0], data.n_clusters, generator=torch.Generator().manual_seed(0))
    return data.n_clusters, u, s, t.float(), blocks


@pytest.mark.parametrize("name", ["plugin", "pearson", "slice"])
def test_gradient_sign_is_a_coin_flip_under_independence_and_right_under_dependence(diag, setting, name):
    K, u, s, t, blocks = setting
    options = {"blocks": blocks} if name == "plugin" else ({"n_slices": 10} if name == "slice" else {})
    shares = {}
    for b in (0.0, 3.0):
        est = make_estimator(name, K, t.shape[1], seed=0, **options)
        values, grads = diag.penalty_gradients(est, u, s, t, b, batch_size=256, batches=40, seed=1)
        assert values.shape == grads.shape == (40,) and np.isfinite(grads).all()
        shares[b] = float(np.mean(grads > 0))
    assert 0.2 < shares[0.0] < 0.8, shares
    assert shares[3.0] == 1.0, shares


def test_same_seed_same_batches_and_main_prints_a_row_per_estimator_and_strength(diag, capsys):
    assert diag.main(["--dataset", "digits-reversed", "--estimators", "plugin", "slice:n_slices=5",
                      "--strengths", "0", "2", "--batches", "5", "--batch-size", "128"]) == 0
    first = capsys.readouterr().out
    rows = [line for line in first.splitlines() if line.startswith("|") and ("plugin" in line or "slice" in line)]
    assert len(rows) == 4 and "slice:n_slices=5" in first
    diag.main(["--dataset", "digits-reversed", "--estimators", "plugin", "slice:n_slices=5",
               "--strengths", "0", "2", "--batches", "5", "--batch-size", "128"])
    assert capsys.readouterr().out == first


@pytest.mark.parametrize("argv, message", [
    (["--estimators", "nope"], "error: unknown estimator 'nope'; accepted: pearson, dcor, slice"),
    (["--estimators", "slice:n_slices"], "error: estimator option 'n_slices' in 'slice:n_slices' is not key=value"),
    (["--dataset", "nope"], "error: unknown dataset 'nope'; accepted: "),
    (["--attribute", "3"], "error: --attribute 3, but digits-reversed has attributes 0..0"),
    (["--estimators", "slice:slices=3"], "error: estimator 'slice:slices=3': "),
])
def test_bad_input_is_one_line_on_stderr_and_exit_code_2(diag, capsys, argv, message):
    args = ["--dataset", "digits-reversed", *argv] if "--dataset" not in argv else argv
    with pytest.raises(SystemExit) as exc:
        diag.main(args)
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert out == "", out  # rejected before any output
