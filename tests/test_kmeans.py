"""bench.kmeans: the torch implementation (used on GPUs without faiss-gpu) and faiss agree."""
import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from bench.kmeans import faiss, kmeans


def _blobs(n=3000, k=4, d=6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=8, size=(k, d))
    y = rng.integers(0, k, n)
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def test_torch_kmeans_recovers_separated_blobs_and_is_deterministic():
    X, y = _blobs()
    C, labels = kmeans(torch.from_numpy(X), 4, backend="torch", seed=3, n_init=3, max_points_per_centroid=200)
    assert C.shape == (4, 6) and labels.shape == (3000,)
    assert adjusted_rand_score(y, labels.numpy()) == pytest.approx(1.0)
    _, again = kmeans(torch.from_numpy(X), 4, backend="torch", seed=3, n_init=3, max_points_per_centroid=200)
    assert torch.equal(labels, again)


@pytest.mark.skipif(faiss is None, reason="faiss not installed")
def test_faiss_and_torch_backends_agree_on_clear_structure():
    X, y = _blobs(seed=1)
    _, a = kmeans(X, 4, backend="faiss", seed=0)
    _, b = kmeans(X, 4, backend="torch", seed=0)
    assert adjusted_rand_score(a.numpy(), b.numpy()) == pytest.approx(1.0)
    assert adjusted_rand_score(y, a.numpy()) == pytest.approx(1.0)


def test_more_clusters_than_distinct_points_keeps_every_label_valid():
    X = np.repeat(np.eye(3, dtype=np.float32), 20, axis=0)
    _, labels = kmeans(X, 5, backend="torch", seed=0, n_iter=20)
    assert labels.min() >= 0 and labels.max() < 5


def test_bad_cluster_count_is_refused():
    with pytest.raises(ValueError, match="n_clusters=0"):
        kmeans(np.zeros((5, 2), np.float32), 0)
    with pytest.raises(ValueError, match="unknown k-means backend"):
        kmeans(np.zeros((5, 2), np.float32), 2, backend="sklearn")


def test_restarts_share_one_sample_and_the_lowest_inertia_on_it_wins(monkeypatch):
    """faiss' recipe: the restarts are trained on the SAME subsample, so their inertias are
    comparable; the returned centroids are those of the restart with the lowest one."""
    import bench.kmeans as km

    X, _ = _blobs(n=5000, k=4, seed=2)
    seen = []
    real = km._lloyd_batched

    def spy(S, C, *args):
        C_out, inertia = real(S, C, *args)
        seen.append((S.clone(), C_out.clone(), inertia.clone()))
        return C_out, inertia

    monkeypatch.setattr(km, "_lloyd_batched", spy)
    C, _ = km.kmeans(torch.from_numpy(X), 6, backend="torch", seed=5, n_init=8, max_points_per_centroid=100)
    S = torch.cat([s for s, _, _ in seen])
    assert S.shape[0] == 8 and S.shape[1] == 600 < X.shape[0]     # a subsample, one per restart...
    assert all(torch.equal(S[0], S[i]) for i in range(1, 8))       # ...and the same one for all
    inertia = torch.cat([i for _, _, i in seen])
    assert inertia.unique().numel() > 1                             # the restarts did differ
    torch.testing.assert_close(C, torch.cat([c for _, c, _ in seen])[inertia.argmin()])
