"""DEC: deep embedded clustering (Xie, Girshick, Farhadi, ICML 2016), the second
fairness-unaware deep reference of FCMI's Table 1 (Zeng et al., CVPR 2023).

DEC's parts follow the DEC paper (as summarised in ``shared/reference/dfc.md`` §1.3 and §2,
where DFC reuses them):

* Soft assignment, Student's t kernel (DEC Eq. 1), α = 1::

      q_ik = (1 + ‖z_i − μ_k‖²/α)^(−(α+1)/2) / Σ_k' (1 + ‖z_i − μ_k'‖²/α)^(−(α+1)/2)

* Target distribution (DEC Eq. 3): p_ik = (q_ik² / f_k) / Σ_k' (q_ik'² / f_k'), with the soft
  cluster frequencies f_k = Σ_i q_ik over **the whole data set**, recomputed (no gradient)
  every ``update_interval`` iterations. (DFC instead rebuilds it per mini-batch, dfc.md §2.3;
  this is DEC's periodic full-data update.)
* Loss (DEC Eq. 2): KL(P ‖ Q) = Σ_k p_ik log(p_ik / q_ik), averaged over the batch, minimised
  over the encoder and the centroids μ; the decoder is discarded after pretraining (DEC §3.1).
* Initialisation (DEC §3.2): the pretrained autoencoder's embedding, k-means with 20 restarts
  gives μ.
* Stopping (DEC §3.1): when fewer than ``tol`` = 0.1 % of the samples change their argmax
  assignment between two consecutive target updates, or after the epoch budget.
* Optimiser of the clustering phase: SGD, lr 0.01, momentum 0.9 (DEC §4.3).

What is **reconstructed** (FCMI does not describe its DEC run; fcmi.md §6.2 has numbers only):

* The autoencoder is FCMI's network with one shared decoder, a linear reconstruction layer
  (see below) and the raw (not unit-norm) latent code of dimension K, pretrained with FCMI's
  loop for FCMI's 20 warm-up epochs (MSE, Adam 1e-3, batch 512), instead of DEC's greedy
  layer-wise denoising stacked autoencoder; see :mod:`methods.ae` for the network. The clustering phase then runs for at most the
  remaining 280 epochs of FCMI's 300, so DEC gets FCMI's schedule with DEC's clustering loss
  in place of FCMI's (and no reconstruction or fairness term).
* ``update_interval`` = 140 iterations: the DEC paper leaves the period T to the
  implementation; 140 is about one epoch of MNIST at batch 512 and is the value commonly used
  by DEC reimplementations.
* The sensitive groups are never used.

The reconstruction layer is **linear** (``output="linear"``), as in DEC's own autoencoder
(§3.2: ReLU everywhere except the reconstruction of the input and the embedding), not FCMI's
Tanh. Version 1 kept FCMI's Tanh, and with a raw code that fails (measured, CPU, MNIST-USPS):
FCMI's conv encoder starts with a nearly constant code (norm 0.1), and in every seed Adam's
first steps grow its norm to 14-30 by step 12. In seeds 0, 2, 3, 7 and 9 it then turns back;
in seeds 1, 4, 5, 6 and 8 it keeps growing (230-525 at step 39), the Tanh of the
reconstruction saturates, and no gradient reaches the encoder any more: the reconstruction
loss sticks at 0.481, the loss of a constant image. Seed 5 recovers within its first epoch;
seeds 1 and 4 ran to the end of pretraining dead (code norm 569, spread 1.6 at seed 1, against
26 and 7.3 at the healthy seed 2) and DEC put every sample in one cluster (ACC 11.5, NMI 0);
seeds 6 and 8 look the same after their first epoch (loss 0.51 and 0.53, code norm 271 and
536). ``benchmarks/ae_pretraining_probe.py`` shows it step by step; at seed 1 the share of
saturated pre-Tanh values (|x| > 3) is 0.12 at step 12 and 0.99 at step 16, the gradient at
the code falls from 1e-3 (step 8) to 4e-7 (step 16) and is exactly 0 from step 32, while
Adam's momentum carries the code on to norm 562. At seed 4's epoch-8 checkpoint, too, every
pre-Tanh value is saturated and the encoder's gradient is exactly 0. With the linear layer, seeds 1, 4, 6 and 8 all reconstruct
(loss 0.36-0.42 after one epoch, 0.21-0.24 after two; code norm 9.5-11.6), and seed 1 run to
the end on MNIST-USPS reaches ACC 68.0 and NMI 68.3 (version 1: 11.5 and 0). FCMI itself
feeds its decoder the L2-normalised code, which cannot grow, and none of our FCMI runs failed
this way. Version 1's records stay in the store and the leaderboard as ``dec [version=1]``
(seeds 1 and 4 on MNIST-USPS listed under "Runs that leave clusters empty"). The change has a price where the Tanh never died: on
``har-train`` (the MLP network) version 2 reaches ACC 54.8 ± 2.4 and NMI 62.8 ± 1.3 over seeds
0-4, version 1 70.4 ± 6.1 and 72.2 ± 3.9 (CPU; Table 1's DEC on the full HAR: 57.1 / 65.5).
The gap is already there after pretraining (seeds 0 and 1): the Tanh autoencoder
reconstructs HAR's bounded features better (loss 0.017 against 0.022) and k-means on its code,
DEC's initialisation, reaches ACC 61.7 and 61.8 against 54.9 and 56.4 with the linear layer;
the code's scale is alike (norm 3.1-3.3 against 2.4-2.9). ``output="tanh"`` gives version 1's
network for anyone who wants it on such data. AE and DEC log ``code_norm`` and ``code_spread``
(:func:`methods.ae.code_scale`) in the last pretraining row of the history, so a record shows
whether its code collapsed.

Data go to the device once; batches are drawn by index; the only host synchronisations are
the label-change check at each target update and one per epoch for the history.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from bench import Method, MethodOutput, ParameterError, checkpoint, register_method
from bench.kmeans import kmeans

from ._fcmi_loop import embed_all
from .ae import AE_PARAMETERS, build_single_decoder_ae, code_scale, pretrain_autoencoder, validate_ae_parameters


def student_t_assignment(z: torch.Tensor, centroids: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """DEC Eq. 1: q_ik ∝ (1 + ‖z_i − μ_k‖²/α)^(−(α+1)/2), normalised over k."""
    d2 = (z[:, None, :] - centroids[None, :, :]).pow(2).sum(-1)
    kernel = (1.0 + d2 / alpha).pow(-(alpha + 1.0) / 2.0)
    return kernel / kernel.sum(1, keepdim=True)


def target_distribution(q: torch.Tensor) -> torch.Tensor:
    """DEC Eq. 3: p_ik = (q_ik² / f_k) / Σ_k' (q_ik'² / f_k'), f_k = Σ_i q_ik."""
    weight = q.pow(2) / q.sum(0, keepdim=True)
    return weight / weight.sum(1, keepdim=True)


def kl_loss(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """DEC Eq. 2 per sample, averaged over the batch: Σ_k p_ik log(p_ik / q_ik)."""
    return (p * (torch.log(p.clamp_min(eps)) - torch.log(q.clamp_min(eps)))).sum(1).mean()


def train_dec(
    model,
    X: torch.Tensor,
    centroids: torch.Tensor,
    *,
    seed: int,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    update_interval: int,
    tol: float,
    alpha: float = 1.0,
    eval_batch_size: int = 0,
    resume: dict | None = None,
    hook=None,
):
    """DEC's clustering phase on the encoder of ``model``; returns (q of all samples in eval
    mode, centroids, history). ``X`` lies on the training device. ``resume``: a state that
    ``hook`` was offered after an epoch (:mod:`bench.checkpoint`); the run continues from it
    exactly (weights, centroids, SGD momentum, batch generator, target, last labels)."""
    device = X.device
    eval_bs = eval_batch_size or (16384 if device.type == "cuda" else 2048)
    mu = nn.Parameter(centroids.detach().clone().float().to(device))
    optimiser = torch.optim.SGD(list(model.encoder.parameters()) + [mu], lr=lr, momentum=momentum)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    n = X.shape[0]
    b = min(batch_size, n)
    n_batches = n // b
    history, iteration, previous, stop, start = [], 0, None, False, 0
    target = None
    if resume is not None:
        model.load_state_dict(resume["model"])
        with torch.no_grad():
            mu.copy_(resume["mu"])
        optimiser.load_state_dict(resume["optimiser"])
        gen.set_state(resume["generator"])
        history, iteration, start = list(resume["history"]), int(resume["iteration"]), int(resume["epoch"])
        previous = None if resume["previous"] is None else resume["previous"].to(device)
        target = None if resume["target"] is None else resume["target"].to(device)
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen, device=device)[: n_batches * b].view(n_batches, b)
        loss_sum = torch.zeros((), device=device)
        delta = None
        steps = 0
        for bi in range(n_batches):
            if iteration % update_interval == 0:  # periodic full-data target (DEC Eq. 3)
                with torch.no_grad():
                    q_all = student_t_assignment(embed_all(model, X, eval_bs), mu, alpha)
                    target = target_distribution(q_all)
                    labels = q_all.argmax(1)
                if previous is not None:
                    delta = float((labels != previous).float().mean())  # sync at the update only
                    if delta < tol:
                        stop = True
                        break
                previous = labels
            model.train()
            idx = perm[bi]
            q = student_t_assignment(model.encode(X[idx]), mu, alpha)
            loss = kl_loss(target[idx], q)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            loss_sum += loss.detach()
            iteration += 1
            steps += 1
        row = {"epoch": float(epoch), "kl": float(loss_sum) / max(steps, 1), "iterations": float(iteration)}
        if delta is not None:  # fraction of labels changed at this epoch's last target update
            row["label_change"] = delta
        row["time_s"] = time.perf_counter() - t0
        history.append(row)
        if stop:
            break
        if hook is not None and epoch + 1 < epochs:
            hook(lambda: {"epoch": epoch + 1, "model": model.state_dict(), "mu": mu.detach(),
                          "optimiser": optimiser.state_dict(), "generator": gen.get_state(), "history": history,
                          "iteration": iteration, "previous": previous, "target": target})
    with torch.no_grad():
        q_all = student_t_assignment(embed_all(model, X, eval_bs), mu, alpha)
    return q_all, mu.detach(), history


@register_method
class DEC(Method):
    """Deep embedded clustering (Xie et al., 2016) on FCMI's autoencoder with one decoder;
    see the module docstring for DEC's parts and what is reconstructed."""

    name = "dec"
    description = "DEC (Xie et al., ICML 2016): AE pretraining, Student-t assignment, periodic target; fairness-unaware"
    paper = "Xie, Girshick, Farhadi. Unsupervised Deep Embedding for Clustering Analysis. ICML 2016"
    paper_name = "DEC"
    parameters = {
        "pretrain_epochs": 20,
        "epochs": 280,
        **AE_PARAMETERS,
        "kmeans_restarts": 20,
        "alpha": 1.0,
        "dec_lr": 0.01,
        "dec_momentum": 0.9,
        "update_interval": 140,
        "tol": 0.001,
    }
    test_parameters = {
        "pretrain_epochs": 2, "epochs": 2, "batch_size": 128, "width": 0.125, "kmeans_iter": 20,
        "kmeans_restarts": 2, "update_interval": 2,
    }
    uses_gpu = True
    many_groups = True
    multi_attribute = False
    fairness_aware = False
    version = "2"  # 2: linear reconstruction layer (output="linear"); 1 ended in FCMI's Tanh

    def validate(self):
        p = self.params
        validate_ae_parameters(self.name, p)
        for key in ("pretrain_epochs", "kmeans_restarts", "update_interval"):
            if p[key] < 1:
                raise ParameterError(f"dec: {key} must be a positive integer")
        if p["epochs"] < 0:
            raise ParameterError("dec: epochs (of the clustering phase) must be >= 0")
        for key in ("alpha", "dec_lr"):
            if not p[key] > 0:
                raise ParameterError(f"dec: {key} must be > 0")
        if not 0 <= p["dec_momentum"] < 1:
            raise ParameterError("dec: dec_momentum must be in [0, 1)")
        if not 0 <= p["tol"] <= 1:
            raise ParameterError("dec: tol (fraction of changed labels) must be in [0, 1]")

    def fit(self, data, seed, device):
        p = self.params
        device = torch.device(device)
        model = build_single_decoder_ae(p, data, seed)
        X = torch.as_tensor(data.X, dtype=torch.float32).to(device)
        ckpt = checkpoint.current()  # resumable: the clustering phase saves "dec" (and the pretraining its own)
        saved = ckpt.load("dec")
        if saved is None:
            pre = pretrain_autoencoder(model, p, data, seed, device, p["pretrain_epochs"])
            h = torch.as_tensor(pre.embedding).to(device)
            centroids, _ = kmeans(
                h, data.n_clusters, n_iter=p["kmeans_iter"], n_init=p["kmeans_restarts"], seed=seed,
                max_points_per_centroid=p["kmeans_max_points_per_centroid"],
            )
            pre_history = [{"phase": 0.0, **{k: v for k, v in r.items() if k in ("epoch", "rec", "time_s")}}
                           for r in pre.history]
            pre_history[-1].update(code_scale(pre.embedding))
        else:
            centroids, pre_history = saved["centroids"], saved["pre_history"]

        def hook(make_state):
            if ckpt.due():
                ckpt.save("dec", {**make_state(), "centroids": centroids, "pre_history": pre_history})

        q, _, dec_history = train_dec(
            model, X, centroids.to(device), seed=seed, epochs=p["epochs"], batch_size=p["batch_size"],
            lr=p["dec_lr"], momentum=p["dec_momentum"], update_interval=p["update_interval"], tol=p["tol"],
            alpha=p["alpha"], resume=saved, hook=hook if ckpt.enabled else None,
        )
        embedding = embed_all(model, X, 16384 if device.type == "cuda" else 2048)
        history = pre_history + [{"phase": 1.0, **r} for r in dec_history]
        return MethodOutput(
            labels=q.argmax(1).cpu().numpy().astype(np.int64),
            embedding=embedding.cpu().numpy().astype(np.float32),
            history=history,
        )
