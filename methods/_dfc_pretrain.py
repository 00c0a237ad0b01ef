"""Pretraining for DFC, RECONSTRUCTED: the authors released only its results for MNIST-USPS
(a shared encoder "pre-trained with self-reconstruction", k-means centres, per-group encoders
"trained by DEC"; dfc.md §3.1) and no recipe. Our recipe, documented in ``methods/dfc.py``:

1. :func:`train_vae` -- a VAE (DFC's encoder + our mirror decoder), Adam 1e-3, reconstruction
   (Bernoulli for images in [0, 1], unit Gaussian for features) + KL, as the MLRC reproduction
   trained its VAE (dfc.md §3.1).
2. k-means on the μ features (``bench.kmeans``) for the initial centres.
3. :func:`train_dec` -- DEC (Xie et al., ICML 2016): KL(P‖Q) with the target P computed on the
   whole group at the start of every epoch; Adam 1e-4, batch 256 (as the second MLRC
   reproduction, dfc.md §3.1).

Batches are drawn by indexing device tensors; losses stay on the device until the end.
Both loops resume (``resume``: a state their ``hook`` was handed at the end of an epoch, see
:mod:`bench.checkpoint`), exactly on the CPU: weights, Adam, losses so far and torch's global
generators (batch order and the VAE's noise come from them).
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from bench import checkpoint

from ._dfc_parts import ClusterLayer, kl_divergence, target_distribution
from ._step_graph import CapturedStep


def epoch_batches(n: int, batch_size: int, device) -> Iterator[torch.Tensor]:
    """One shuffled pass over 0..n-1 in batches of ``batch_size``, last partial batch dropped
    (one batch of all n when n < batch_size)."""
    perm = torch.randperm(n, device=device)
    bs = min(batch_size, n)
    for i in range(n // bs):
        yield perm[i * bs : (i + 1) * bs]


def vae_loss(x: torch.Tensor, out: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, recon: str) -> torch.Tensor:
    """Negative ELBO per sample (mean over the batch): reconstruction summed over inputs + KL."""
    b = x.shape[0]
    if recon == "bce":
        rec = F.binary_cross_entropy_with_logits(out, x, reduction="sum")
    else:
        rec = 0.5 * (out - x).pow(2).sum()
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum()
    return (rec + kl) / b


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


def _resume(resume, modules: dict, opt, device) -> tuple[int, list]:
    """Load a loop's saved state into its modules and optimiser; return (next epoch, losses)."""
    if resume is None:
        return 0, []
    for name, module in modules.items():
        module.load_state_dict(resume[name])
    opt.load_state_dict(resume["opt"])
    checkpoint.set_rng_state(resume["rng"], device)
    return int(resume["epoch"]), [v.to(device) for v in resume["losses"]]


def _offer(hook, epoch: int, epochs: int, modules: dict, opt, losses: list) -> None:
    """Hand the state after ``epoch`` to ``hook`` (which saves it when a save is due)."""
    if hook is not None and epoch + 1 < epochs:
        hook(lambda: {"epoch": epoch + 1, "opt": opt.state_dict(), "losses": list(losses),
                      "rng": checkpoint.rng_state(losses[-1].device),
                      **{name: m.state_dict() for name, m in modules.items()}})


def train_vae(encoder, decoder, X: torch.Tensor, *, epochs: int, batch_size: int, lr: float,
              recon: str, resume: dict | None = None, hook=None, graph: bool = False) -> torch.Tensor:
    """Train encoder+decoder as a VAE on X; returns the mean loss of each epoch (on the device).
    ``graph``: replay the step as a CUDA graph (:mod:`methods._step_graph`)."""
    encoder.train()
    decoder.train()
    params = list(encoder.parameters()) + list(decoder.parameters())
    opt = torch.optim.Adam(params, lr=lr, fused=X.device.type == "cuda", capturable=graph)
    modules = {"encoder": encoder, "decoder": decoder}
    start, losses = _resume(resume, modules, opt, X.device)
    index = torch.zeros(min(batch_size, X.shape[0]), dtype=torch.long, device=X.device)
    total = torch.zeros((), device=X.device)

    def body():
        x = X[index]
        mu, logvar = encoder(x)
        loss = vae_loss(x, decoder(reparameterise(mu, logvar)), mu, logvar, recon)
        loss.backward()
        opt.step()
        total.add_(loss.detach())

    step = CapturedStep(body, modules.values(), opt, [total], capture=graph)
    for epoch in range(start, epochs):
        total.zero_()
        count = 0
        for idx in epoch_batches(X.shape[0], batch_size, X.device):
            index.copy_(idx)
            step.run()
            count += 1
        losses.append(total / count)
        _offer(hook, epoch, epochs, modules, opt, losses)
    return torch.stack(losses) if losses else torch.zeros(0)


@torch.no_grad()
def embed(encoder, X: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """μ of every row of X with the encoder in eval mode (BatchNorm running statistics)."""
    was_training = encoder.training
    encoder.eval()
    out = torch.cat([encoder.embed(X[i : i + chunk]) for i in range(0, X.shape[0], chunk)])
    encoder.train(was_training)
    return out


@torch.no_grad()
def assign(encoder, cluster: ClusterLayer, X: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Soft assignments q of every row of X, encoder in eval mode."""
    return torch.cat([cluster(z).exp() for z in embed(encoder, X, chunk).split(chunk)])


def train_dec(encoder, cluster: ClusterLayer, X: torch.Tensor, *, epochs: int, batch_size: int,
              lr: float, resume: dict | None = None, hook=None, graph: bool = False) -> torch.Tensor:
    """DEC fine-tuning of encoder (μ head) and centres on X; returns the mean KL per epoch.
    ``graph``: replay the step as a CUDA graph (:mod:`methods._step_graph`)."""
    opt = torch.optim.Adam(list(encoder.parameters()) + list(cluster.parameters()), lr=lr,
                           fused=X.device.type == "cuda", capturable=graph)
    modules = {"encoder": encoder, "cluster": cluster}
    start, losses = _resume(resume, modules, opt, X.device)
    index = torch.zeros(min(batch_size, X.shape[0]), dtype=torch.long, device=X.device)
    target = torch.zeros(X.shape[0], cluster.centers.shape[0], device=X.device)
    total = torch.zeros((), device=X.device)

    def body():
        log_q = cluster(encoder.embed(X[index]))
        loss = kl_divergence(target[index], log_q) / index.shape[0]
        loss.backward()
        opt.step()
        total.add_(loss.detach())

    step = CapturedStep(body, modules.values(), opt, [total], capture=graph)
    for epoch in range(start, epochs):
        target.copy_(target_distribution(assign(encoder, cluster, X)))
        encoder.train()
        total.zero_()
        count = 0
        for idx in epoch_batches(X.shape[0], batch_size, X.device):
            index.copy_(idx)
            step.run()
            count += 1
        losses.append(total / count)
        _offer(hook, epoch, epochs, modules, opt, losses)
    encoder.eval()
    return torch.stack(losses) if losses else torch.zeros(0)
