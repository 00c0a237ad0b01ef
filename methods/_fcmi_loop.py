"""FCMI's loss terms and training loop (Zeng et al., CVPR 2023), reusable by other methods.

Reconstructed from ``shared/reference/fcmi.md`` §2–§3 (no code copied). Notation for a
mini-batch of B samples: h_i the L2-normalised embedding, μ_k the K normalised k-means
centroids (fixed for the epoch), g_i the sensitive group, q_ik = softmax_k(h_i·μ_k / τ).

Loss (the code's form of the paper's Eq. 12; α = ``LambdaClu``, β = ``LambdaFair``)::

    L = L_rec + α·(H(C|X) − H(C)) + β·I(C;G)        (L_rec only in the warm-up epochs)

The fairness term is pluggable: ``fairness_penalty(q, h, groups, n_groups) -> scalar``.
FCMI's I(C;G) (:func:`fcmi_fairness`) is the default; ``None`` switches it off (AE / DEC-style
baselines, ablations); an ``nn.Module`` penalty (e.g. an infomin estimator with a critic) has
its parameters trained by the same Adam optimiser.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench import ParameterError, checkpoint, execution
from bench.kmeans import kmeans

from ._fcmi_graph import graph_supported, masked_decode
from ._step_graph import CapturedStep

__all__ = [
    "soft_assignment",
    "cluster_group_table",
    "cluster_entropy",
    "conditional_entropy",
    "cluster_group_mi",
    "fcmi_fairness",
    "hard_mi",
    "embed_all",
    "TrainResult",
    "train_fcmi_style",
]

FairnessPenalty = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


# ---------------------------------------------------------------------------------------
# Loss terms (pure functions)
# ---------------------------------------------------------------------------------------
def soft_assignment(h: torch.Tensor, centroids: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """q_ik = softmax_k(h_i·μ_k / τ) with L2-normalised h and μ (cosine logits; fcmi.md §2,
    τ = 0.1 = ``SoftAssignmentTemperatureHot``)."""
    return torch.softmax(h @ centroids.T / temperature, dim=1)


def cluster_group_table(q: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Batch joint distribution p(k, g) of soft cluster and group (fcmi.md §2.2 item 2).

    O[k, g] = Σ_{i: g_i = g} q_ik; entries ≤ 0 (a group absent from the batch) are set to
    min(O > 0) / 10 as in the original; p = O / ΣO. Shape (K, n_groups). No host sync."""
    onehot = (groups[:, None] == torch.arange(n_groups, device=groups.device)).to(q.dtype)
    table = q.T @ onehot  # deterministic (no atomics), no value check (F.one_hot may sync)
    positive = table > 0
    smallest = torch.where(positive, table, torch.full_like(table, math.inf)).min()
    table = torch.where(positive, table, smallest / 10)
    return table / table.sum()


def cluster_entropy(p_kg: torch.Tensor) -> torch.Tensor:
    """H(C) = −Σ_k p(k) log p(k), p(k) = Σ_g p(k, g): entropy of the batch's mean soft
    assignment. FCMI maximises it (``InfoBalanceLoss`` = −H(C), fcmi.md §2.2 item 3)."""
    pk = p_kg.sum(1)
    return -(pk * torch.log(pk)).sum()


def conditional_entropy(q: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """H(C|X) = −(1/B) Σ_i Σ_k q_ik log(q_ik + 1e−8): mean entropy of the soft assignments.
    FCMI minimises it (``OneHot``, fcmi.md §2.2 item 5)."""
    return -(q * torch.log(q + eps)).sum(1).mean()


def cluster_group_mi(p_kg: torch.Tensor) -> torch.Tensor:
    """I(C;G) = Σ_{k,g} p(k,g) log(p(k,g) / (p(k) p(g))) of a joint table. FCMI minimises it
    (``InfoFairLoss``, fcmi.md §2.2 item 4)."""
    pk = p_kg.sum(1, keepdim=True)
    pg = p_kg.sum(0, keepdim=True)
    return (p_kg * (torch.log(p_kg) - torch.log(pk) - torch.log(pg))).sum()


def fcmi_fairness(q: torch.Tensor, h: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """FCMI's fairness penalty: I(C;G) of the batch's soft cluster × group table."""
    return cluster_group_mi(cluster_group_table(q, groups, n_groups))


def hard_mi(labels: torch.Tensor, groups: torch.Tensor, n_clusters: int, n_groups: int) -> torch.Tensor:
    """I(C;G) (nats) of hard labels over all samples, as a device scalar (a label-free
    diagnostic: it uses the sensitive groups, never the true labels)."""
    counts = torch.bincount(labels * n_groups + groups, minlength=n_clusters * n_groups).double()
    p = (counts / counts.sum()).reshape(n_clusters, n_groups)
    outer = p.sum(1, keepdim=True) * p.sum(0, keepdim=True)
    ratio = torch.where(p > 0, p / torch.where(outer > 0, outer, 1.0), 1.0)
    return (p * torch.log(ratio)).sum()


# ---------------------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------------------
@torch.no_grad()
def embed_all(model, X: torch.Tensor, batch_size: int, amp: bool = False) -> torch.Tensor:
    """Embeddings of all rows of X in eval mode, in large no-grad batches (fp32 output)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, X.shape[0], batch_size):
        with _autocast(X.device, amp):
            out.append(model.encode(X[start : start + batch_size]).float())
    model.train(was_training)
    return torch.cat(out)


def _autocast(device: torch.device, amp: bool):
    enabled = bool(amp) and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def _centroids(h: torch.Tensor, n_clusters: int, seed: int, n_iter: int, n_init: int, max_ppc: int, backend: str):
    """k-means on the embedding (fcmi.md §2.1), centroids L2-normalised."""
    centroids, _ = kmeans(
        h, n_clusters, n_iter=n_iter, n_init=n_init, seed=seed, max_points_per_centroid=max_ppc, backend=backend
    )
    return F.normalize(centroids.to(h.device, torch.float32), dim=1)


def _epoch_batches(groups: torch.Tensor, n_groups: int, batch_size: int, gen: torch.Generator):
    """One epoch of shuffled batches (drop_last, as the original's loader), each sorted by
    group so that the group decoders take contiguous slices. Returns the (n_batches, B) index
    tensor and the per-batch group counts on the host (the epoch's one synchronisation).
    When n < batch_size the whole data set is one batch."""
    n = groups.shape[0]
    b = min(batch_size, n)
    n_batches = n // b
    perm = torch.randperm(n, generator=gen, device=groups.device)[: n_batches * b].view(n_batches, b)
    keys = groups[perm]
    keys, order = torch.sort(keys, dim=1, stable=True)
    perm = perm.gather(1, order)
    counts = torch.zeros(n_batches, n_groups, dtype=torch.long, device=groups.device)
    counts.scatter_add_(1, keys, torch.ones_like(keys))
    return perm, counts.cpu().tolist()


KMEANS_SEEDS = ("epoch", "fixed", "a non-negative integer")


def kmeans_seed_schedule(kmeans_seed: str, seed: int):
    """epoch -> the seed of that epoch's k-means (see ``kmeans_seed`` in train_fcmi_style)."""
    value = str(kmeans_seed)
    if value == "epoch":
        return lambda epoch: int(seed) * 100_003 + epoch
    if value == "fixed":
        return lambda epoch: int(seed) * 100_003
    if value.isdigit():
        return lambda epoch: int(value)
    raise ValueError(f"kmeans_seed must be one of {', '.join(KMEANS_SEEDS)}; got {kmeans_seed!r}")


def check_kmeans_seed(method: str, value) -> None:
    """One-line ParameterError for a bad ``kmeans_seed`` (the adapters' validation)."""
    try:
        kmeans_seed_schedule(value, 0)
    except ValueError as exc:
        raise ParameterError(f"{method}: {exc}") from None


@dataclass
class TrainResult:
    labels: np.ndarray
    embedding: np.ndarray
    history: list = field(default_factory=list)
    centroids: Optional[torch.Tensor] = None
    stages: dict = field(default_factory=dict)


HISTORY_KEYS = ("loss", "rec", "h_c_given_x", "h_c", "mi_cg", "fair")


def train_fcmi_style(
    model: nn.Module,
    X,
    groups,
    n_clusters: int,
    *,
    seed: int,
    device,
    n_groups: Optional[int] = None,
    epochs: int = 300,
    batch_size: int = 512,
    lr: float = 1e-3,
    warmup_epochs: int = 20,
    alpha: float = 0.04,
    beta: float = 0.2,
    temperature: float = 0.1,
    reconstruction_weight: float = 1.0,
    fairness_penalty: Optional[FairnessPenalty] = fcmi_fairness,
    kmeans_iter: int = 300,
    kmeans_restarts: int = 10,
    kmeans_max_points_per_centroid: int = 1000,
    kmeans_backend: str = "auto",
    kmeans_seed: str = "epoch",
    final_centroids: str = "refit",
    eval_batch_size: int = 0,
    amp: bool = False,
    checkpoint_stage: str = "fcmi_loop",
    cuda_graph: Optional[bool] = None,
) -> TrainResult:
    """Train ``model`` (a :class:`methods._nets.GroupAutoencoder`) the FCMI way; return the
    final-epoch labels, embedding and per-epoch history.

    Each epoch ``e`` (fcmi.md §2.1, §3, checklist §8):

    1. if ``e >= warmup_epochs``: embed all samples (eval mode), run k-means (K clusters,
       ``kmeans_iter`` iterations, ``kmeans_restarts`` restarts, at most
       ``kmeans_max_points_per_centroid``·K sampled points; :func:`bench.kmeans.kmeans`, faiss
       on the CPU, torch or faiss-gpu on a GPU) and fix the L2-normalised centroids μ for the
       epoch. The original also runs it during warm-up, where the centroids only feed its
       logging; we skip those runs (training is unchanged). ``kmeans_seed``: ``"epoch"``
       (default) seeds k-means by (``seed``, epoch), so every epoch draws a fresh sample and
       fresh initial centroids; ``"fixed"`` uses one seed per run for every epoch (the same
       sample and initial points each epoch, as the original's faiss, whose seed 1234 is
       fixed, §2.1); a number uses that seed for every epoch and run ("1234": the original's).
    2. one pass over shuffled batches (drop_last) with Adam(lr): loss
       ``reconstruction_weight``·MSE(x, x̂) [+ α·(H(C|X) − H(C)) + β·penalty after warm-up],
       x̂ by the decoder of each sample's group.

    ``stages["warmup"]``: the labels of the first clustering epoch's k-means (the embedding the
    warm-up's reconstruction alone learned), for diagnosis (:class:`bench.MethodOutput`).

    After the last epoch every sample is embedded once more and labelled by
    argmax_k h·μ_k (the model's own assignment rule). ``final_centroids="refit"`` (default)
    takes μ from a fresh k-means on that final embedding (fcmi.md §8.3: the defensible, simpler
    form); ``"last"`` reuses the centroids of the last training epoch, which is what the
    original's evaluation of its final checkpoint does (centroids lag the network by one
    epoch, §7.7). With no clustering epoch (epochs <= warmup_epochs) "last" falls back to
    "refit".

    ``fairness_penalty(q, h, groups, n_groups)`` returns a scalar to minimise (weight β);
    ``None`` disables it. H(C|X), H(C) and the batch I(C;G) are always logged. History rows:
    epoch, loss, rec, h_c_given_x, h_c, mi_cg (batch soft I(C;G)), fair (the penalty),
    kmeans_mi (I(C;G) of the epoch's hard k-means assignment over all samples, when k-means
    ran), time_s. Host synchronisation happens once per epoch, never inside a step.
    ``amp`` (opt-in, CUDA only) runs the networks under bfloat16 autocast; losses stay fp32.

    ``cuda_graph`` (opt-in, CUDA only; None: the runner's ``--cuda-graphs``,
    :mod:`bench.execution`): capture the step once per kind of epoch and replay it for every
    batch (:mod:`methods._fcmi_graph`, :mod:`methods._step_graph`); used only with FCMI's
    fairness term (or none), without ``amp``, and with one decoder or group decoders without
    BatchNorm, else the loop is eager.

    Resumable (:mod:`bench.checkpoint`): when the runner's checkpoint for the cell is due, the
    state at the end of an epoch is saved under ``checkpoint_stage`` (weights, Adam, the batch
    generator, torch's global generators, the penalty's ``state_dict`` if it has one, history,
    centroids), and a later attempt at the same cell continues from the epoch after it. The
    resumed run gives the same labels as an uninterrupted one on the CPU.
    """
    device = torch.device(device)
    Xd = torch.as_tensor(np.asarray(X) if not torch.is_tensor(X) else X, dtype=torch.float32).to(device)
    Gd = torch.as_tensor(np.asarray(groups) if not torch.is_tensor(groups) else groups).long().to(device)
    if Gd.ndim != 1 or Gd.shape[0] != Xd.shape[0]:
        raise ValueError("groups must be one group index per sample")
    n_groups = int(n_groups if n_groups is not None else int(Gd.max()) + 1)
    if final_centroids not in ("refit", "last"):
        raise ValueError(f"final_centroids must be 'refit' or 'last', got {final_centroids!r}")
    eval_bs = eval_batch_size or (16384 if device.type == "cuda" else 2048)
    model = model.to(device)
    params = list(model.parameters())
    if isinstance(fairness_penalty, nn.Module):
        fairness_penalty.to(device)
        params += list(fairness_penalty.parameters())
    if cuda_graph is None:
        cuda_graph = execution.cuda_graphs()
    use_graph = bool(cuda_graph) and not amp and graph_supported(
        model, device, fairness_penalty is None or fairness_penalty is fcmi_fairness)
    # fused: one kernel per step on CUDA; capturable: its step count lives on the GPU (graphs)
    optimiser = torch.optim.Adam(params, lr=lr, fused=device.type == "cuda", capturable=use_graph)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    kseed = kmeans_seed_schedule(kmeans_seed, seed)
    km = dict(n_iter=kmeans_iter, n_init=kmeans_restarts, max_ppc=kmeans_max_points_per_centroid, backend=kmeans_backend)
    single_decoder = getattr(model, "n_decoders", n_groups) == 1

    def loss_terms(x, g, cents, clustering, decode):
        """The step's logged terms (loss first): L_rec [+ α·(H(C|X) − H(C)) + β·penalty]."""
        with _autocast(device, amp):
            h = model.encode(x)
            x_hat = decode(h, g)
        h, x_hat = h.float(), x_hat.float()
        rec = F.mse_loss(x_hat, x)
        loss = reconstruction_weight * rec
        zero = rec.new_zeros(())
        hcx = hc = mi = fair = zero
        if cents is not None:
            q = soft_assignment(h, cents, temperature)
            p_kg = cluster_group_table(q, g, n_groups)
            hcx, hc, mi = conditional_entropy(q), cluster_entropy(p_kg), cluster_group_mi(p_kg)
        if clustering:
            loss = loss + alpha * (hcx - hc)
            if fairness_penalty is not None:
                fair = mi if fairness_penalty is fcmi_fairness else fairness_penalty(q, h, g, n_groups)
                loss = loss + beta * fair
        return torch.stack([loss, rec, hcx, hc, mi, fair])

    # One step per kind of epoch (warm-up, clustering), reading its batch from fixed buffers:
    # run eagerly, or captured once and replayed as a CUDA graph (methods._step_graph).
    index = torch.zeros(min(batch_size, Xd.shape[0]), dtype=torch.long, device=device)
    sums = torch.zeros(len(HISTORY_KEYS), device=device)
    batch_sizes: list = []  # eager decoding: the batch's group sizes (host ints)
    steps, step_centroids = {}, None

    def decode(h, g):
        return masked_decode(model, h, g) if use_graph else model.decode_sorted(h, batch_sizes)

    def make_step(cents, clustering):
        def body():
            terms = loss_terms(Xd[index], Gd[index], cents, clustering, decode)
            terms[0].backward()
            optimiser.step()
            sums.add_(terms.detach())
        return CapturedStep(body, [model], optimiser, [sums], capture=use_graph)

    history, centroids, start, stages = [], None, 0, {}
    ckpt = checkpoint.current()
    saved = ckpt.load(checkpoint_stage)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        if saved.get("penalty") is not None:
            fairness_penalty.load_state_dict(saved["penalty"])
        gen.set_state(saved["generator"])
        checkpoint.set_rng_state(saved["rng"], device)
        history, start = list(saved["history"]), int(saved["epoch"])
        stages = dict(saved.get("stages", {}))
        centroids = None if saved["centroids"] is None else saved["centroids"].to(device)
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        clustering = epoch >= warmup_epochs
        extra = {}
        if clustering:
            h_all = embed_all(model, Xd, eval_bs, amp)
            centroids = _centroids(h_all, n_clusters, kseed(epoch), **km)
            assigned = (h_all @ centroids.T).argmax(1)
            extra["kmeans_mi"] = hard_mi(assigned, Gd, n_clusters, n_groups)
            if "warmup" not in stages:  # the clustering of the warm-up's autoencoder embedding
                stages["warmup"] = assigned.cpu().numpy().astype(np.int64)
        model.train()
        batches, counts = _epoch_batches(Gd, n_groups, batch_size, gen)
        sums.zero_()
        if clustering:
            step_centroids = centroids.clone() if step_centroids is None else step_centroids.copy_(centroids)
        if clustering not in steps:
            steps[clustering] = make_step(step_centroids if clustering else None, clustering)
        for b in range(batches.shape[0]):
            index.copy_(batches[b])
            batch_sizes[:] = [index.shape[0]] if single_decoder else counts[b]
            steps[clustering].run()
        means = (sums / batches.shape[0]).tolist()  # the epoch's synchronisation
        row = {"epoch": float(epoch), **dict(zip(HISTORY_KEYS, means))}
        row.update({k: float(v) for k, v in extra.items()})
        row["time_s"] = time.perf_counter() - t0
        history.append(row)
        if epoch + 1 < epochs and ckpt.due():
            ckpt.save(checkpoint_stage, {
                "epoch": epoch + 1, "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                "penalty": fairness_penalty.state_dict() if hasattr(fairness_penalty, "state_dict") else None,
                "generator": gen.get_state(), "rng": checkpoint.rng_state(device), "history": history,
                "centroids": centroids, "stages": stages,
            })

    h_final = embed_all(model, Xd, eval_bs, amp)
    if final_centroids == "refit" or centroids is None:
        centroids = _centroids(h_final, n_clusters, kseed(epochs), **km)
    labels = (h_final @ centroids.T).argmax(1)
    return TrainResult(
        labels=labels.cpu().numpy().astype(np.int64),
        embedding=h_final.cpu().numpy(),
        history=history,
        centroids=centroids,
        stages=stages,
    )
