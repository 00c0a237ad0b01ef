"""Networks of DFC (Li, Zhao & Liu, "Deep Fair Clustering for Visual Learning", CVPR 2020).

* :class:`ConvEncoder` -- the VAE-style encoder of the official code, written from the
  description in ``shared/reference/dfc.md`` §1.2 (input C×32×32 in [0, 1]; four 3×3 convs
  without bias, each followed by BatchNorm and ReLU; fc 1024→512 with BatchNorm; two heads
  512→64 for μ and log σ²). Its size matches the released checkpoints: 611,477 numbers
  with BatchNorm running statistics.
* :class:`ConvDecoder` -- OUR decoder for the reconstruction pretraining (the authors
  released no decoder and no pretraining code); it mirrors the encoder.
* :class:`MLPEncoder` / :class:`MLPDecoder` -- OUR extension for flat features and images of
  other sizes: the same VAE heads on an MLP d→512→512 (the width of the conv encoder's fc1).
"""
from __future__ import annotations

import torch
from torch import nn

LATENT_DIM = 64
HIDDEN = 512


def _conv(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _linear(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Linear(cin, cout), nn.BatchNorm1d(cout), nn.ReLU(inplace=True)]


def init_dfc_weights(module: nn.Module) -> None:
    """The official initialisation (dfc.md §1.2): Kaiming-uniform conv weights, Xavier-normal
    Linear weights with bias 0.1, BatchNorm2d weights ~ N(1, 0.02) with bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_uniform_(m.weight)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            nn.init.constant_(m.bias, 0.1)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class VAEEncoder(nn.Module):
    """Common part: a trunk to ``HIDDEN`` features and the two VAE heads (μ, log σ²)."""

    trunk: nn.Module

    def __init__(self, latent_dim: int):
        super().__init__()
        self.fc_mu = nn.Linear(HIDDEN, latent_dim)
        self.fc_logvar = nn.Linear(HIDDEN, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.fc_mu(h), self.fc_logvar(h)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """μ only: what the eval-mode encoder returns (teachers, evaluation, k-means)."""
        return self.fc_mu(self.trunk(x))


class ConvEncoder(VAEEncoder):
    """DFC's encoder F (dfc.md §1.2), C×32×32 → (μ, log σ²) in R^64 each."""

    def __init__(self, in_channels: int = 1, latent_dim: int = LATENT_DIM):
        super().__init__(latent_dim)
        self.trunk = nn.Sequential(
            *_conv(in_channels, 16, 1),  # 32×32
            *_conv(16, 32, 2),  # 16×16
            *_conv(32, 32, 1),
            *_conv(32, 16, 2),  # 16×8×8 = 1024
            nn.Flatten(),
            *_linear(16 * 8 * 8, HIDDEN),
        )
        init_dfc_weights(self)


class ConvDecoder(nn.Module):
    """OUR decoder for pretraining (mirror of :class:`ConvEncoder`); returns pixel logits."""

    def __init__(self, out_channels: int = 1, latent_dim: int = LATENT_DIM):
        super().__init__()
        self.net = nn.Sequential(
            *_linear(latent_dim, HIDDEN),
            *_linear(HIDDEN, 16 * 8 * 8),
            nn.Unflatten(1, (16, 8, 8)),
            nn.ConvTranspose2d(16, 32, 3, stride=2, padding=1, output_padding=1, bias=False),  # 16×16
            nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            *_conv(32, 32, 1),
            nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1, bias=False),  # 32×32
            nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.Conv2d(16, out_channels, 3, padding=1),
        )
        init_dfc_weights(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class MLPEncoder(VAEEncoder):
    """OUR extension for flat features / other image sizes: flatten, d→512→512, VAE heads."""

    def __init__(self, in_dim: int, latent_dim: int = LATENT_DIM):
        super().__init__(latent_dim)
        self.trunk = nn.Sequential(nn.Flatten(), *_linear(in_dim, HIDDEN), *_linear(HIDDEN, HIDDEN))
        init_dfc_weights(self)


class MLPDecoder(nn.Module):
    """OUR decoder for :class:`MLPEncoder`: latent→512→512→d (logits or values), reshaped to
    ``out_shape``."""

    def __init__(self, out_shape: tuple[int, ...], latent_dim: int = LATENT_DIM):
        super().__init__()
        out_dim = 1
        for s in out_shape:
            out_dim *= int(s)
        self.out_shape = tuple(out_shape)
        self.net = nn.Sequential(*_linear(latent_dim, HIDDEN), *_linear(HIDDEN, HIDDEN), nn.Linear(HIDDEN, out_dim))
        init_dfc_weights(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.out_shape)
