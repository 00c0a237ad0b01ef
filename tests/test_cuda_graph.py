"""FCMI's CUDA-graph step (methods/_fcmi_graph.py): whole-batch decoding is the sliced decoding
(CPU), where graphs are used, and on a GPU the graphed run follows the eager one."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench import execution, registry
from methods._fcmi_graph import graph_supported, masked_decode
from methods._fcmi_loop import fcmi_fairness, train_fcmi_style
from methods._nets import build_autoencoder

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
CUDA = torch.device("cuda")


def _sliced_and_masked(model, x, groups):
    """Loss and gradients of the MSE with each decoding, the batch sorted by group as the loop does."""
    order = torch.argsort(groups, stable=True)
    x, groups = x[order], groups[order]
    counts = torch.bincount(groups, minlength=model.n_decoders).tolist()
    results = []
    for decode in (lambda h: model.decode_sorted(h, counts), lambda h: masked_decode(model, h, groups)):
        model.zero_grad(set_to_none=True)
        loss = F.mse_loss(decode(model.encode(x)), x)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    return results


@pytest.mark.parametrize("arch, shape, n_decoders", [("conv28", (1, 28, 28), 3), ("mlp", (12,), 1)])
def test_masked_decoding_gives_the_sliced_loss_and_gradients(arch, shape, n_decoders):
    torch.manual_seed(0)
    model = build_autoencoder(shape, 5, n_decoders, arch=arch, width=0.25)
    x = torch.rand(64, *shape) * 2 - 1
    groups = torch.randint(0, n_decoders, (64,))
    (loss_a, grads_a), (loss_b, grads_b) = _sliced_and_masked(model, x, groups)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=1e-7)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-6)
    if n_decoders > 1:  # a decoder learns only from its own group's rows
        assert all(g.abs().sum() > 0 for g in grads_b)


def test_graphs_only_where_whole_batch_decoding_is_exact():
    conv = build_autoencoder((1, 28, 28), 10, 2)
    mlp_groups = build_autoencoder((20,), 4, 2, width=0.25)  # BatchNorm in the group decoders
    mlp_single = build_autoencoder((20,), 4, 1, width=0.25)
    assert graph_supported(conv, CUDA, True) and graph_supported(mlp_single, CUDA, True)
    assert not graph_supported(mlp_groups, CUDA, True)
    assert not graph_supported(conv, torch.device("cpu"), True)
    assert not graph_supported(conv, CUDA, False)  # another fairness term (infomin, IFC): eager


def test_execution_setting_is_scoped():
    assert not execution.cuda_graphs()
    with execution.settings(cuda_graphs=True):
        assert execution.cuda_graphs()
    assert not execution.cuda_graphs()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the GPU machine)")
def test_graphed_training_follows_the_eager_run_on_gpu():
    digits = registry.datasets.get("digits-reversed")().load()
    X = F.interpolate(torch.as_tensor(digits.X).reshape(-1, 1, 8, 8), size=(28, 28), mode="bilinear").numpy()
    runs = {}
    for graph in (False, True):
        torch.manual_seed(0)
        model = build_autoencoder((1, 28, 28), 10, 2)
        runs[graph] = train_fcmi_style(
            model, X, digits.groups[:, 0], 10, seed=0, device=CUDA, epochs=6, warmup_epochs=2, batch_size=256,
            kmeans_iter=20, kmeans_restarts=2, fairness_penalty=fcmi_fairness, cuda_graph=graph)
    eager, graphed = runs[False], runs[True]
    # cuDNN autotuning (graphs) and the sliced decoders (eager) may pick other kernels, so
    # the runs agree up to float noise grown over a few epochs, not bit for bit
    for a, b in zip(eager.history, graphed.history):
        for key in ("loss", "rec", "h_c_given_x", "h_c", "mi_cg"):
            assert b[key] == pytest.approx(a[key], rel=2e-2, abs=1e-4), (a["epoch"], key)
    assert np.mean(eager.labels == graphed.labels) > 0.95


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the GPU machine)")
def test_graphed_dfc_trains_like_the_eager_run_on_gpu():
    """DFC's three loops replayed as graphs: the random stream differs from the eager run's, so
    the check is statistical: the same losses to within a few percent, every schedule applied."""
    digits = registry.datasets.get("digits-reversed")().load()
    dfc = registry.methods.get("dfc")
    params = {**dfc.test_parameters, "iters": 60, "log_every": 20, "pretrain_epochs": 4, "teacher_epochs": 4}
    runs = {}
    for graph in (False, True):
        method = dfc(**params)
        with execution.settings(cuda_graphs=graph):
            runs[graph] = method.fit(method.prepare_input(digits.clustering_input()), 0, CUDA)
    eager, graphed = runs[False], runs[True]
    assert graphed.labels.min() >= 0 and graphed.labels.max() < digits.n_clusters
    for key in ("vae_loss", "dec_kl", "loss", "structural"):
        a = np.array([r[key] for r in eager.history if key in r])
        b = np.array([r[key] for r in graphed.history if key in r])
        assert a.shape == b.shape and np.isfinite(b).all(), key
        np.testing.assert_allclose(b[-1], a[-1], rtol=0.1, err_msg=key)
