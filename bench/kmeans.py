"""k-means on CPU or GPU: faiss when installed, otherwise a torch implementation.

Both follow faiss' recipe (what FCMI uses per epoch): ``n_init`` restarts of Lloyd's
algorithm from centroids drawn uniformly among the points, each trained on at most
``max_points_per_centroid * k`` sampled points, keeping the restart with the lowest
inertia; then every point is assigned to its nearest centroid.
"""
from __future__ import annotations

import numpy as np
import torch

try:  # optional: faiss-cpu by default, faiss-gpu as an extra
    import faiss  # type: ignore
except ImportError:  # pragma: no cover - depends on the environment
    faiss = None


def faiss_has_gpu() -> bool:
    return faiss is not None and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def kmeans(
    X,
    n_clusters: int,
    *,
    n_iter: int = 300,
    n_init: int = 10,
    seed: int = 0,
    max_points_per_centroid: int = 1000,
    backend: str = "auto",
    spherical: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the rows of ``X`` (numpy array or torch tensor, any device).

    Returns ``(centroids, labels)`` as tensors on the device of ``X``.
    ``backend``: "auto" (faiss when installed and X is on the CPU or faiss has a GPU,
    else torch), "faiss" or "torch".
    """
    Xt = torch.as_tensor(X)
    device = Xt.device
    Xt = Xt.reshape(Xt.shape[0], -1).float()
    if n_clusters < 1 or n_clusters > Xt.shape[0]:
        raise ValueError(f"n_clusters={n_clusters} must be between 1 and the number of samples ({Xt.shape[0]})")
    if backend == "auto":
        backend = "faiss" if faiss is not None and (device.type == "cpu" or faiss_has_gpu()) else "torch"
    if backend == "faiss":
        if faiss is None:
            raise RuntimeError("backend='faiss' but faiss is not installed (pip install faiss-cpu)")
        Xn = np.ascontiguousarray(Xt.detach().cpu().numpy(), dtype=np.float32)
        km = faiss.Kmeans(
            Xn.shape[1], n_clusters, niter=n_iter, nredo=n_init, seed=int(seed) % (2**31),
            max_points_per_centroid=max_points_per_centroid, spherical=spherical,
            gpu=device.type == "cuda" and faiss_has_gpu(), verbose=False,
        )
        km.train(Xn)
        _, assign = km.index.search(Xn, 1)
        centroids = torch.from_numpy(km.centroids.copy()).to(device)
        return centroids, torch.from_numpy(assign.reshape(-1).astype(np.int64)).to(device)
    if backend != "torch":
        raise ValueError(f"unknown k-means backend {backend!r}; accepted: auto, faiss, torch")
    return _torch_kmeans(Xt.detach(), n_clusters, n_iter, n_init, seed, max_points_per_centroid, spherical)


def _assign(X, C, chunk: int = 65536):
    """Nearest centroid of each row (squared Euclidean), in chunks to bound memory."""
    c2 = (C * C).sum(1)
    labels, dists = [], []
    for start in range(0, X.shape[0], chunk):
        x = X[start : start + chunk]
        d = (x * x).sum(1, keepdim=True) - 2 * x @ C.T + c2
        m, idx = d.min(1)
        labels.append(idx)
        dists.append(m.clamp_min(0))
    return torch.cat(labels), torch.cat(dists)


def _torch_kmeans(X, k, n_iter, n_init, seed, max_ppc, spherical):
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    n = X.shape[0]
    best, best_inertia = None, float("inf")
    for _ in range(max(1, n_init)):
        if n > k * max_ppc:
            sample = X[torch.randperm(n, generator=gen)[: k * max_ppc].to(X.device)]
        else:
            sample = X
        C = sample[torch.randperm(sample.shape[0], generator=gen)[:k].to(X.device)].clone()
        for it in range(n_iter):
            labels, _ = _assign(sample, C)
            sums = torch.zeros_like(C).index_add_(0, labels, sample)
            counts = torch.bincount(labels, minlength=k).to(C.dtype)
            new_C = sums / counts.clamp_min(1)[:, None]
            # re-seed empty clusters on random points, without a host sync (faiss splits big ones)
            pick = torch.randint(0, sample.shape[0], (k,), generator=gen).to(X.device)
            new_C = torch.where((counts == 0)[:, None], sample[pick], new_C)
            if spherical:
                new_C = torch.nn.functional.normalize(new_C, dim=1)
            converged = it % 10 == 9 and bool((new_C == C).all())  # one host sync per 10 iterations
            C = new_C
            if converged:
                break
        _, d = _assign(sample, C)
        inertia = float(d.sum())
        if inertia < best_inertia:
            best, best_inertia = C, inertia
    labels, _ = _assign(X, best)
    return best, labels
