"""k-means on CPU or GPU: faiss when installed, otherwise a torch implementation.

Both follow faiss' recipe (what FCMI uses per epoch): one sample of at most
``max_points_per_centroid * k`` points, shared by ``n_init`` restarts of Lloyd's algorithm
from centroids drawn uniformly among the sampled points, keeping the restart with the lowest
inertia on that sample; then every point is assigned to its nearest centroid.
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


#: Largest restarts × sample × k distance tensor computed at once (floats); more restarts
#: than fit run in consecutive chunks.
_BATCH_BUDGET = 2**26


def _torch_kmeans(X, k, n_iter, n_init, seed, max_ppc, spherical):
    """Lloyd's algorithm for all restarts at once (a batch of independent problems), so that
    an iteration is a handful of kernels whatever ``n_init``: no per-restart Python loop and
    one host synchronisation per 10 iterations (the convergence check).

    As in faiss (``Clustering::train``), ONE sample of at most ``max_ppc``·k points is drawn
    and shared by every restart, so that the restarts' inertias are measured on the same
    points and the lowest one picks the best restart; each restart draws its own initial
    centroids among the sample. The random draws come from a CPU generator seeded with
    ``seed`` (the same labels on every run)."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    n, device = X.shape[0], X.device
    R = max(1, n_init)
    m = min(n, k * max_ppc)
    rows = torch.randperm(n, generator=gen)[:m].to(device) if m < n else None
    sample = X if rows is None else X[rows]                           # (m, d), shared
    per_chunk = max(1, _BATCH_BUDGET // max(1, m * k))
    best_C, best_inertia = [], []
    for first in range(0, R, per_chunk):
        r = min(per_chunk, R - first)
        init = torch.stack([torch.randperm(m, generator=gen)[:k] for _ in range(r)]).to(device)
        S = sample.expand(r, m, sample.shape[1])                      # (r, m, d), a view
        C = sample[init]                                              # (r, k, d)
        C, inertia = _lloyd_batched(S, C, n_iter, spherical, gen)
        best_C.append(C)
        best_inertia.append(inertia)
    C, inertia = torch.cat(best_C), torch.cat(best_inertia)
    best = C[inertia.argmin()]                                        # no host sync
    labels, _ = _assign(X, best)
    return best, labels


def _sq_dist(S, C):
    """(r, m, k) squared distances between each restart's sample and its centroids."""
    return torch.baddbmm((C * C).sum(2)[:, None, :], S, C.transpose(1, 2), alpha=-2.0) + (S * S).sum(2, keepdim=True)


def _lloyd_batched(S, C, n_iter, spherical, gen):
    r, m, d = S.shape
    k = C.shape[1]
    offset = (torch.arange(r, device=S.device) * k)[:, None]
    flat_S = S.reshape(r * m, d)
    # replacement points for empty clusters, drawn once (no host-to-device copy per iteration)
    picks = torch.randint(0, m, (max(n_iter, 1), r, k), generator=gen).to(S.device)
    for it in range(n_iter):
        labels = _sq_dist(S, C).argmin(2)                             # (r, m)
        flat = (labels + offset).reshape(-1)
        sums = torch.zeros(r * k, d, device=S.device, dtype=S.dtype).index_add_(0, flat, flat_S)
        counts = torch.bincount(flat, minlength=r * k).to(S.dtype)
        new_C = (sums / counts.clamp_min(1)[:, None]).reshape(r, k, d)
        # re-seed empty clusters on random sample points, without a host sync
        spare = torch.gather(S, 1, picks[it][:, :, None].expand(r, k, d))
        new_C = torch.where((counts == 0).reshape(r, k, 1), spare, new_C)
        if spherical:
            new_C = torch.nn.functional.normalize(new_C, dim=2)
        converged = it % 10 == 9 and bool((new_C == C).all())        # one host sync per 10 iterations
        C = new_C
        if converged:
            break
    inertia = _sq_dist(S, C).min(2).values.clamp_min(0).sum(1)
    return C, inertia
