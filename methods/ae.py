"""AE: an autoencoder, then k-means on its embedding -- the fairness-unaware deep reference
of FCMI's Table 1 (Zeng et al., CVPR 2023).

Neither FCMI's paper text nor its code says how its AE row was produced (fcmi.md §6.2 gives
the numbers only), so the configuration is **reconstructed**: the AE is FCMI itself with the
clustering and fairness terms removed and a single shared decoder, trained on FCMI's schedule.

* Network: FCMI's autoencoder (:func:`methods._nets.build_autoencoder`): the conv net for
  C×28×28 images, the BatchNorm MLP 1024-1024-512-256 on the flattened input otherwise (feature
  vectors, and images of other sizes such as the 8×8 digits, flattened: our fallback). One
  decoder for everybody (``n_decoders=1``): FCMI's per-group decoders would feed the sensitive
  attribute into the model, and this baseline must not see it. Embedding dimension d = K as
  in FCMI; the embedding is the raw latent code (``normalize=False``, as in the AE + k-means
  and DEC literature); ``normalize=True`` gives FCMI's unit-norm embedding. The reconstruction
  layer is **linear** (``output="linear"``), as in DEC's autoencoder (Xie et al., ICML 2016,
  §3.2), not FCMI's Tanh: with a raw code, FCMI's Tanh let Adam's first epoch kill the
  autoencoder on 4 of the 10 MNIST-USPS seeds tried (two confirmed by full DEC runs; measured,
  :mod:`methods.dec` tells how). Version 2;
  version 1 had the Tanh (``output="tanh"`` still gives it). On ``har-train`` (the MLP, where
  the Tanh never died) version 2 reaches ACC 68.9 ± 2.7 and NMI 65.9 ± 2.0 over seeds 0-4,
  version 1 63.4 ± 3.4 and 60.6 ± 2.2, with a lower MNCE (52.1 against 78.7; CPU).
* Training: reconstruction only, MSE, Adam lr 1e-3, batch 512 (shuffled, drop_last),
  300 epochs, i.e. FCMI's optimiser and epoch count with α = β = 0, via
  :func:`methods._fcmi_loop.train_fcmi_style` (data on the device once, batches by index, one
  host sync per epoch). The sensitive groups are not passed: the loop sees a single group.
* Clustering: k-means (:func:`bench.kmeans.kmeans`, faiss / torch; 300 iterations,
  10 restarts, at most 1,000 points per centroid as FCMI's k-means) on the final embedding of
  all samples in eval mode; labels are the k-means assignments.
"""
from __future__ import annotations

import numpy as np
import torch

from bench import Method, MethodOutput, ParameterError, register_method
from bench.kmeans import kmeans

from ._fcmi_loop import train_fcmi_style
from ._nets import OUTPUTS, build_autoencoder

#: Parameters shared by AE and DEC (the autoencoder part), with FCMI's values.
AE_PARAMETERS = {
    "batch_size": 512,
    "lr": 1e-3,
    "embed_dim": "n_clusters",
    "normalize": False,
    "output": "linear",
    "arch": "auto",
    "width": 1.0,
    "kmeans_iter": 300,
    "kmeans_max_points_per_centroid": 1000,
}


def validate_ae_parameters(name: str, p: dict) -> None:
    for key in ("batch_size", "kmeans_iter", "kmeans_max_points_per_centroid"):
        if p[key] < 1:
            raise ParameterError(f"{name}: {key} must be a positive integer")
    for key in ("lr", "width"):
        if not p[key] > 0:
            raise ParameterError(f"{name}: {key} must be > 0")
    if p["embed_dim"] != "n_clusters" and not (str(p["embed_dim"]).isdigit() and int(p["embed_dim"]) > 0):
        raise ParameterError(f"{name}: embed_dim must be 'n_clusters' or a positive integer")
    if p["arch"] not in ("auto", "conv28", "mlp"):
        raise ParameterError(f"{name}: arch must be one of auto, conv28, mlp")
    if p["output"] not in OUTPUTS:
        raise ParameterError(f"{name}: output must be one of {', '.join(OUTPUTS)}, got {p['output']!r}")


def build_single_decoder_ae(p: dict, data, seed: int):
    """FCMI's autoencoder with one shared decoder, initialised from the run seed without
    touching the global RNG."""
    embed_dim = data.n_clusters if p["embed_dim"] == "n_clusters" else int(p["embed_dim"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build_autoencoder(
            data.X.shape[1:], embed_dim, n_decoders=1, arch=p["arch"], normalize=p["normalize"], width=p["width"],
            output=p["output"],
        )


def pretrain_autoencoder(model, p: dict, data, seed: int, device, epochs: int):
    """Reconstruction-only training (FCMI's loop with no clustering epoch and no fairness
    term; every sample in the same single group). Returns the loop's result: the final
    embedding of all samples (eval mode) and the per-epoch history."""
    n = data.n_samples
    return train_fcmi_style(
        model, data.X, np.zeros(n, dtype=np.int64), data.n_clusters, seed=seed, device=device, n_groups=1,
        epochs=epochs, batch_size=p["batch_size"], lr=p["lr"], warmup_epochs=epochs, fairness_penalty=None,
        kmeans_iter=p["kmeans_iter"], kmeans_restarts=1,
        kmeans_max_points_per_centroid=p["kmeans_max_points_per_centroid"],
    )


def code_scale(embedding) -> dict:
    """How large and how spread the latent code is after training: mean L2 norm, and mean
    over dimensions of the std over samples. A spread tiny against the norm is a dead
    autoencoder: nearly one code for every sample (see :mod:`methods.dec`). Logged in the
    last history row of AE and of DEC's pretraining, so the record shows it."""
    h = np.asarray(embedding, dtype=np.float64)
    return {"code_norm": float(np.linalg.norm(h, axis=1).mean()), "code_spread": float(h.std(axis=0).mean())}


@register_method
class AE(Method):
    """Autoencoder (FCMI's network, one decoder) + k-means on its embedding; see the module
    docstring for the reconstructed configuration."""

    name = "ae"
    description = "Autoencoder (FCMI's network, one decoder) + k-means on the embedding; fairness-unaware"
    paper = "Autoencoder + k-means baseline, as in FCMI's Table 1 (Zeng et al., CVPR 2023)"
    paper_name = "AE"
    parameters = {"epochs": 300, **AE_PARAMETERS, "kmeans_restarts": 10}
    test_parameters = {"epochs": 2, "batch_size": 128, "width": 0.125, "kmeans_iter": 20, "kmeans_restarts": 2}
    uses_gpu = True
    many_groups = True
    multi_attribute = False
    fairness_aware = False
    version = "2"  # 2: linear reconstruction layer (output="linear"); 1 ended in FCMI's Tanh

    def validate(self):
        validate_ae_parameters(self.name, self.params)
        if self.params["epochs"] < 1 or self.params["kmeans_restarts"] < 1:
            raise ParameterError("ae: epochs and kmeans_restarts must be positive integers")

    def fit(self, data, seed, device):
        p = self.params
        device = torch.device(device)
        model = build_single_decoder_ae(p, data, seed)
        result = pretrain_autoencoder(model, p, data, seed, device, p["epochs"])
        h = torch.as_tensor(result.embedding).to(device)
        _, labels = kmeans(
            h, data.n_clusters, n_iter=p["kmeans_iter"], n_init=p["kmeans_restarts"], seed=seed,
            max_points_per_centroid=p["kmeans_max_points_per_centroid"],
        )
        history = [{k: v for k, v in row.items() if k in ("epoch", "loss", "rec", "time_s")} for row in result.history]
        history[-1].update(code_scale(result.embedding))
        return MethodOutput(
            labels=labels.cpu().numpy().astype(np.int64), embedding=result.embedding.astype(np.float32), history=history
        )
