"""FCMI's autoencoders (Zeng et al., CVPR 2023), reusable by every deep method of the suite.

Reconstructed from the architecture description in ``shared/reference/fcmi.md`` §1 (the
original repository has no licence; no code is copied):

* :class:`ConvAE` -- FCMI's ``Net`` for C×28×28 images (MNIST-USPS, Color-Reverse MNIST;
  C = 1 there, other channel counts are our generalisation): a shared conv encoder, a shared
  ``decoder_linear`` and one transposed-conv decoder per sensitive group, Tanh output. No
  BatchNorm (§1.1).
* :class:`MLPAE` -- FCMI's ``NetFCN`` for feature vectors (Office-31, MTFL, HAR): MLP encoder
  1024-1024-512 with BatchNorm, head 256-d, shared decoder_linear d-256-512, one decoder per
  group 512-1024-1024-D with BatchNorm and Tanh output (§1.2, ``BatchNormType=1001``).

Both end the decoder in Tanh (FCMI's inputs lie in [-1, 1]); ``output="linear"`` drops it, as
DEC's autoencoder has no activation on its reconstruction layer (used by AE and DEC, whose
raw code can otherwise saturate the Tanh: :mod:`methods.dec`).

Both end the encoder in an L2-normalised embedding of dimension ``embed_dim`` (FCMI: d = K,
5 for MTFL; ``RepresentationType=Normalize``); ``normalize=False`` gives the raw latent code
(for AE / DEC baselines). :func:`build_autoencoder` picks the network from the input shape:
the conv net for C×28×28 images, otherwise the MLP on the flattened input (so 8×8 digits,
32×32 images and flat features all work).

Interface (stable, imported by other adapters)::

    model = build_autoencoder(input_shape, embed_dim, n_decoders)   # input_shape per sample
    h = model.encode(x)             # (n, embed_dim), L2-normalised when normalize=True
    x_hat = model.decode(h, group)  # (n, *input_shape), each row by the decoder of its group
    h, x_hat = model(x, group)

``decode`` handles any order of groups (one host sync to size the groups). Training loops
that already hold the batch sorted by group and the per-group counts on the host use
:meth:`GroupAutoencoder.decode_sorted`, which needs no synchronisation. A group with exactly
one sample in a batch is duplicated before its decoder in training mode so that BatchNorm can
run, as the original does (§1.2).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["build_autoencoder", "GroupAutoencoder", "ConvAE", "MLPAE", "CONV_SIDE"]

#: Image side the conv net of FCMI is designed for (two stride-2 convs: 28 -> 14 -> 7).
CONV_SIDE = 28


class GroupAutoencoder(nn.Module):
    """Shared encoder + shared ``decoder_linear`` + one decoder per group (FCMI Fig. 2).

    Subclasses set ``encoder`` (input -> latent of size ``embed_dim``), ``decoder_shared``
    (latent -> hidden) and ``group_decoders`` (a ModuleList: hidden -> input, one per group).
    """

    arch: str = ""

    def __init__(self, input_shape: Sequence[int], embed_dim: int, n_decoders: int, normalize: bool = True):
        super().__init__()
        if embed_dim < 1 or n_decoders < 1:
            raise ValueError(f"embed_dim ({embed_dim}) and n_decoders ({n_decoders}) must be >= 1")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.embed_dim = int(embed_dim)
        self.n_decoders = int(n_decoders)
        self.normalize = bool(normalize)

    # -- encoder -------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding h of each sample: the encoder output, L2-normalised when ``normalize``
        (FCMI ``RepresentationType=Normalize``: h = z / ||z||)."""
        z = self.encoder(self._prepare(x))
        return F.normalize(z, dim=1) if self.normalize else z

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.input_shape)

    # -- decoder -------------------------------------------------------------------------
    def decode(self, z: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        """Reconstruction of each row of ``z`` by the decoder of its group (any order).

        Sorts by group and sizes the groups on the host (one synchronisation); use
        :meth:`decode_sorted` inside a training step to avoid it."""
        group = group.to(z.device).long()
        if self.n_decoders == 1:
            return self.decode_sorted(z, [z.shape[0]])
        order = torch.argsort(group, stable=True)
        counts = torch.bincount(group, minlength=self.n_decoders).tolist()
        out = self.decode_sorted(z[order], counts)
        return torch.empty_like(out).index_copy_(0, order, out)

    def decode_sorted(self, z: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
        """Reconstruction when the rows of ``z`` are ordered by group: the first
        ``counts[0]`` rows belong to group 0, the next ``counts[1]`` to group 1, ...
        ``counts`` is a host-side sequence of ints (no device synchronisation)."""
        if len(counts) > self.n_decoders:
            raise ValueError(f"{len(counts)} groups but only {self.n_decoders} decoders")
        hidden = self.decoder_shared(z)
        parts = []
        for g, chunk in enumerate(torch.split(hidden, list(counts))):
            n = chunk.shape[0]
            if n == 0:
                continue
            if n == 1 and self.training:  # BatchNorm needs two rows: duplicate, keep one (§1.2)
                parts.append(self.group_decoders[g](chunk.expand(2, *chunk.shape[1:]))[:1])
            else:
                parts.append(self.group_decoders[g](chunk))
        out = torch.cat(parts) if len(parts) > 1 else parts[0]
        return out.reshape(z.shape[0], *self.input_shape)

    def forward(self, x: torch.Tensor, group: torch.Tensor):
        """(h, x_hat): embedding and reconstruction by each sample's group decoder."""
        h = self.encode(x)
        return h, self.decode(h, group)


class ConvAE(GroupAutoencoder):
    """FCMI ``Net`` (fcmi.md §1.1) for C×28×28 inputs in [-1, 1]; PyTorch default init.

    Encoder: Conv(C→16,3,1,1) ReLU, Conv(16→32,3,2,1) ReLU, Conv(32→32,3,1,1) ReLU,
    Conv(32→16,3,2,1) ReLU, flatten 784, Linear(784→256) ReLU, Linear(256→d).
    decoder_linear: Linear(d→256) ReLU, Linear(256→784) ReLU, reshape 16×7×7.
    Per-group decoder: ConvT(16→32,3,2,1,op=1) ReLU, ConvT(32→32,3,1,1) ReLU,
    ConvT(32→16,3,2,1,op=1) ReLU, ConvT(16→C,3,1,1) Tanh."""

    arch = "conv28"

    def __init__(self, input_shape, embed_dim, n_decoders, normalize=True, output: str = "tanh"):
        super().__init__(input_shape, embed_dim, n_decoders, normalize)
        c, h, w = self.input_shape
        if (h, w) != (CONV_SIDE, CONV_SIDE):
            raise ValueError(f"ConvAE expects C×28×28 inputs, got {self.input_shape}")
        self.encoder = nn.Sequential(
            nn.Conv2d(c, 16, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(32, 16, 3, 2, 1), nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16 * 7 * 7, 256), nn.ReLU(),
            nn.Linear(256, embed_dim),
        )
        self.decoder_shared = nn.Sequential(
            nn.Linear(embed_dim, 256), nn.ReLU(),
            nn.Linear(256, 16 * 7 * 7), nn.ReLU(),
            nn.Unflatten(1, (16, 7, 7)),
        )
        self.group_decoders = nn.ModuleList(
            nn.Sequential(
                nn.ConvTranspose2d(16, 32, 3, 2, 1, output_padding=1), nn.ReLU(),
                nn.ConvTranspose2d(32, 32, 3, 1, 1), nn.ReLU(),
                nn.ConvTranspose2d(32, 16, 3, 2, 1, output_padding=1), nn.ReLU(),
                nn.ConvTranspose2d(16, c, 3, 1, 1), output_layer(output),
            )
            for _ in range(n_decoders)
        )


class MLPAE(GroupAutoencoder):
    """FCMI ``NetFCN`` (fcmi.md §1.2) on flattened inputs of size D; PyTorch default init.

    Encoder trunk: Linear(D→1024) BN ReLU, Linear(1024→1024) BN ReLU, Linear(1024→512) BN ReLU;
    head: Linear(512→256) ReLU, Linear(256→d) (no BN in the head).
    decoder_linear: Linear(d→256) ReLU, Linear(256→512) ReLU (no BN).
    Per-group decoder: Linear(512→1024) BN ReLU, Linear(1024→1024) BN ReLU, Linear(1024→D) Tanh.
    ``width`` scales the hidden sizes (1.0 = FCMI; smaller only for quick CPU tests)."""

    arch = "mlp"

    def __init__(self, input_shape, embed_dim, n_decoders, normalize=True, width: float = 1.0, output: str = "tanh"):
        super().__init__(input_shape, embed_dim, n_decoders, normalize)
        D = math.prod(self.input_shape)
        w1, w2, w3, w4 = (max(8, int(round(s * width))) for s in (1024, 1024, 512, 256))

        def block(i, o):
            return [nn.Linear(i, o), nn.BatchNorm1d(o), nn.ReLU()]

        self.encoder = nn.Sequential(
            *block(D, w1), *block(w1, w2), *block(w2, w3),
            nn.Linear(w3, w4), nn.ReLU(), nn.Linear(w4, embed_dim),
        )
        self.decoder_shared = nn.Sequential(nn.Linear(embed_dim, w4), nn.ReLU(), nn.Linear(w4, w3), nn.ReLU())
        self.group_decoders = nn.ModuleList(
            nn.Sequential(*block(w3, w1), *block(w1, w2), nn.Linear(w2, D), output_layer(output))
            for _ in range(n_decoders)
        )

    def _prepare(self, x):
        return x.reshape(x.shape[0], -1)


#: Accepted values of ``output``: the activation of the reconstruction layer.
OUTPUTS = ("tanh", "linear")


def output_layer(output: str) -> nn.Module:
    """The reconstruction layer's activation: FCMI's Tanh (inputs lie in [-1, 1]), or none
    ("linear"), as in DEC's autoencoder (Xie et al., ICML 2016, §3.2: every layer is ReLU
    except the reconstruction of the input and the embedding). Neither has parameters, so the
    state dict is the same for both."""
    if output == "tanh":
        return nn.Tanh()
    if output == "linear":
        return nn.Identity()
    raise ValueError(f"unknown autoencoder output {output!r}; accepted: {', '.join(OUTPUTS)}")


def build_autoencoder(
    input_shape: Sequence[int],
    embed_dim: int,
    n_decoders: int = 1,
    *,
    arch: str = "auto",
    normalize: bool = True,
    width: float = 1.0,
    output: str = "tanh",
) -> GroupAutoencoder:
    """FCMI's autoencoder for samples of shape ``input_shape`` (without the batch dimension).

    ``arch``: "auto" (the conv net for C×28×28 images, the MLP on the flattened input for
    anything else), "conv28" or "mlp". ``n_decoders``: one per sensitive group (FCMI
    ``GroupWiseDecoder``); 1 gives a plain autoencoder. ``width`` scales the MLP's hidden
    sizes (ignored by the conv net). ``output``: the reconstruction layer's activation, "tanh"
    (FCMI) or "linear" (DEC's stacked autoencoder, Xie et al. 2016 §3.2). Parameters are
    initialised from torch's global RNG: seed it (or wrap in ``torch.random.fork_rng``) before
    calling."""
    shape = tuple(int(s) for s in input_shape)
    if arch == "auto":
        arch = "conv28" if len(shape) == 3 and shape[1:] == (CONV_SIDE, CONV_SIDE) else "mlp"
    if arch == "conv28":
        return ConvAE(shape, embed_dim, n_decoders, normalize, output=output)
    if arch == "mlp":
        return MLPAE(shape, embed_dim, n_decoders, normalize, width=width, output=output)
    raise ValueError(f"unknown autoencoder arch {arch!r}; accepted: auto, conv28, mlp")
