"""Frozen image backbones and cached image features (FCMI's ``featurelize``, ``fcmi.md`` §1.3).

FCMI turns Office-31 and MTFL images into 2048-d vectors with an ImageNet ResNet-50
(torchvision ``resnet50(pretrained=True)`` = ``IMAGENET1K_V1``, file ``resnet50-0676ba61.pth``)
in eval mode: ``Resize(256) → CenterCrop(224) → ToTensor → Normalize(dataset mean, std)``,
then conv1 … layer4 and global average pooling. The dataset modules apply FCMI's post-transform
``tanh((x − μ)/σ)`` on top of the cached raw pooled features.

torchvision is not a dependency: :class:`ResNet50` is the standard bottleneck ResNet-50
([3, 4, 6, 3], stride on the 3×3 convolution, "v1.5") written here with torchvision's module
names, so torchvision's weights file loads into it unchanged. The weights file is looked up
(``weights`` parameter, ``$FAIRCLUSTERBENCH_RESNET50_WEIGHTS``, ``<cache>/weights/``, torch
hub's checkpoint folder) and otherwise downloaded from torchvision's URL with its SHA-256
pinned; offline, a clear error says where to put it.

Backbones are pluggable (:func:`register_backbone`); ``tiny-cnn`` is a small seeded random
network for tests only. Features are cached under ``<cache>/features/`` keyed by the backbone,
the SHA-256 of its weights, the preprocessing and the SHA-256 of every image.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from bench.paths import write_atomically

from ._download import ChecksumError, DatasetNotFound, DownloadError, Resource, cache_root, digest, download, offline

RESNET50_V1 = Resource(
    "resnet50-0676ba61.pth", urls=("https://download.pytorch.org/models/resnet50-0676ba61.pth",),
    sha256="0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a", size=102530333,
    subdir="weights", page="torchvision ResNet50_Weights.IMAGENET1K_V1",
)
FEATURE_VERSION = "1"  # bump when the extraction pipeline changes


# --------------------------------------------------------------------------- networks


def _conv1x1(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class Bottleneck(nn.Module):
    """ResNet bottleneck block (He et al., CVPR 2016), torchvision layout: 1×1 → 3×3 (stride)
    → 1×1 (×4 channels), BatchNorm after each, identity or 1×1-conv+BN shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """ResNet-50 with torchvision's parameter names (``conv1``, ``bn1``, ``layer1.0.conv1``,
    ``layer1.0.downsample.0``, …, ``fc``). :meth:`features` returns the 2048-d global
    average-pooled output of layer4 (what FCMI uses); ``fc`` is kept only so that the weights
    file loads strictly."""

    out_dim = 2048

    def __init__(self, layers=(3, 4, 6, 3), num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0], 1)
        self.layer2 = self._make_layer(128, layers[1], 2)
        self.layer3 = self._make_layer(256, layers[2], 2)
        self.layer4 = self._make_layer(512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes * Bottleneck.expansion, stride),
                                       nn.BatchNorm2d(planes * Bottleneck.expansion))
        modules = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        modules += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*modules)

    def features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x):
        return self.fc(self.features(x))


class TinyCNN(nn.Module):
    """A small convolutional feature extractor (random, seeded weights) for tests only."""

    out_dim = 16

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, kernel_size=7, stride=4, padding=3), nn.ReLU(),
            nn.Conv2d(8, 16, kernel_size=3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )

    def features(self, x):
        return self.net(x)


def load_torchvision_state(model: nn.Module, path) -> None:
    """Load a torchvision-format state dict; only BatchNorm's ``num_batches_tracked`` counters
    (absent from older files) may be missing."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"{path}: not a ResNet-50 state dict ({str(exc).splitlines()[-1].strip()})") from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path}: not a ResNet-50 state dict (missing {missing[:5]}, unexpected {unexpected[:5]})")


def empty_resnet50() -> ResNet50:
    """A ResNet-50 with uninitialised parameters (no random init: weights are loaded next);
    BatchNorm counters set to 0 in case the file has none."""
    with torch.device("meta"):
        model = ResNet50()
    model = model.to_empty(device="cpu")
    for name, buf in model.named_buffers():
        if name.endswith("num_batches_tracked"):
            buf.zero_()
    return model


def state_sha256(model: nn.Module) -> str:
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- backbones


@dataclass
class Backbone:
    """A frozen feature extractor: ``model.features(x)`` maps (n, 3, 224, 224) to (n, out_dim).

    ``weights_sha256`` identifies the weights (part of every cache key); ``reference`` is True
    only for the exact network the papers used (ImageNet ResNet-50 ``IMAGENET1K_V1``)."""

    name: str
    model: nn.Module
    weights_sha256: str
    weights_file: str = ""
    reference: bool = False

    @property
    def out_dim(self) -> int:
        return self.model.out_dim


_BACKBONES: dict[str, Callable[..., Backbone]] = {}


def register_backbone(name: str):
    """Decorator: ``factory(weights: str, data_dir) -> Backbone`` under ``name``."""

    def wrap(factory):
        _BACKBONES[name] = factory
        return factory

    return wrap


def backbone_names() -> list[str]:
    return sorted(_BACKBONES)


def get_backbone(name: str, weights: str = "", data_dir=None) -> Backbone:
    if name not in _BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; accepted: {', '.join(backbone_names())}")
    return _BACKBONES[name](weights, data_dir)


def resnet50_weights_path(weights: str = "", data_dir=None) -> Path:
    """The ImageNet ResNet-50 weights file, found or downloaded; see the module docstring."""
    explicit = weights or os.environ.get("FAIRCLUSTERBENCH_RESNET50_WEIGHTS", "")
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise DatasetNotFound(f"ResNet-50 weights file {p} does not exist")
        return p
    folder = cache_root(data_dir) / "weights"
    candidates = [folder / RESNET50_V1.filename, Path(torch.hub.get_dir()) / "checkpoints" / RESNET50_V1.filename]
    if data_dir is not None:
        candidates.append(Path(data_dir) / "weights" / RESNET50_V1.filename)
    for p in candidates:
        if p.is_file():
            return p
    reason = "downloading is off (FAIRCLUSTERBENCH_OFFLINE)" if offline() else ""
    if not reason:
        try:
            return download(RESNET50_V1.urls[0], folder / RESNET50_V1.filename, RESNET50_V1)
        except DownloadError as exc:
            reason = str(exc)
    raise DatasetNotFound(
        "The ImageNet-pretrained ResNet-50 weights (torchvision IMAGENET1K_V1, resnet50-0676ba61.pth, "
        f"sha256 {RESNET50_V1.sha256}) are needed for these features and cannot be downloaded here ({reason}). "
        f"On a machine with internet get {RESNET50_V1.urls[0]} and put it at {folder / RESNET50_V1.filename} "
        "(or set FAIRCLUSTERBENCH_RESNET50_WEIGHTS=/path/to/file). Without it, use the offline fallback "
        "datasets (e.g. mtfl-pixels), whose numbers are not comparable to the papers'.")


@register_backbone("resnet50")
def _resnet50(weights: str = "", data_dir=None) -> Backbone:
    path = resnet50_weights_path(weights, data_dir)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    reference = sha == RESNET50_V1.sha256
    if not reference and path.name == RESNET50_V1.filename:
        raise ChecksumError(path, "sha256", RESNET50_V1.sha256, sha, "corrupted or truncated weights file; not used")
    model = empty_resnet50()
    load_torchvision_state(model, path)
    return Backbone("resnet50", model.eval(), sha, str(path), reference)


@register_backbone("tiny-cnn")
def _tiny(weights: str = "", data_dir=None) -> Backbone:
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    model = TinyCNN()
    torch.random.set_rng_state(torch_state)
    return Backbone("tiny-cnn", model.eval(), state_sha256(model))


# --------------------------------------------------------------------------- preprocessing


def fcmi_image_tensor(data: bytes, mean: Sequence[float], std: Sequence[float],
                      resize: int = 256, crop: int = 224) -> np.ndarray:
    """torchvision's ``Resize(256) → CenterCrop(224) → ToTensor → Normalize(mean, std)`` on the
    RGB-converted PIL image (ImageFolder's loader), as FCMI applies it: float32 (3, 224, 224).

    Resize: shorter side → ``resize`` with PIL bilinear, longer side ``int(resize·long/short)``;
    CenterCrop: offsets ``int(round((size − crop)/2))``."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        img = im.convert("RGB")
    w, h = img.size
    if w <= h:
        size = (resize, int(resize * h / w))
    else:
        size = (int(resize * w / h), resize)
    if size != (w, h):
        img = img.resize(size, Image.BILINEAR)
    w, h = img.size
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    img = img.crop((left, top, left + crop, top + crop))
    x = np.asarray(img, dtype=np.uint8).astype(np.float32) / np.float32(255)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def resolve_device(device: str) -> torch.device:
    if device in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def extract(images: Sequence[bytes], backbone: Backbone, mean, std, device="auto", batch_size: int = 64,
            progress: bool = True) -> np.ndarray:
    """Raw pooled features (n, out_dim) float32 of encoded images, in order."""
    from tqdm.auto import tqdm

    dev = resolve_device(device)
    model = backbone.model.to(dev).eval()
    out = np.empty((len(images), backbone.out_dim), dtype=np.float32)
    workers = max(1, min(8, (os.cpu_count() or 1)))
    with ThreadPoolExecutor(workers) as pool:
        for start in tqdm(range(0, len(images), batch_size), desc=f"{backbone.name} features",
                          disable=not progress, leave=False):
            chunk = images[start:start + batch_size]
            batch = np.stack(list(pool.map(lambda b: fcmi_image_tensor(b, mean, std), chunk)))
            feats = model.features(torch.from_numpy(batch).to(dev))
            out[start:start + len(chunk)] = feats.float().cpu().numpy()
    return out


def image_features(dataset: str, names: Sequence[str], images: Sequence[bytes], backbone: Backbone, mean, std,
                   data_dir=None, device="auto", use_cache: bool = True) -> tuple[np.ndarray, dict]:
    """Cached :func:`extract`: returns (raw features, provenance record).

    The cache file ``<cache>/features/<dataset>-<backbone>-<key>.npz`` is keyed by the backbone
    name, its weights' SHA-256, the preprocessing and the SHA-256 of every (name, image)."""
    image_digest = hashlib.sha256()
    for name, data in zip(names, images):
        image_digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    key = digest(FEATURE_VERSION, backbone.name, backbone.weights_sha256, list(mean), list(std), 256, 224,
                 image_digest.hexdigest())
    path = cache_root(data_dir) / "features" / f"{dataset}-{backbone.name}-{key[:16]}.npz"
    record = {"backbone": backbone.name, "weights_sha256": backbone.weights_sha256,
              "weights_file": backbone.weights_file, "images_sha256": image_digest.hexdigest(),
              "cache_file": str(path),
              "preprocessing": f"Resize(256), CenterCrop(224), Normalize({list(mean)}, {list(std)})"}
    if use_cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if json.loads(str(z["meta"]))["key"] == key:
                    record["cached"] = True
                    return z["features"], record
        except (OSError, ValueError, KeyError):
            pass
    feats = extract(images, backbone, mean, std, device)
    record["cached"] = False
    if use_cache:
        meta = json.dumps({"key": key, **record})

        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, features=feats, names=np.array(list(names)), meta=np.array(meta))
        try:
            write_atomically(path, write)
        except OSError:
            pass
    return feats, record


def tanh_standardise(x: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    """FCMI's ``FeatureType=GlT_GaussainlizeAndTanh``: tanh((x − μ)/σ) with scalar μ, σ."""
    return np.tanh((x.astype(np.float32) - np.float32(mu)) / np.float32(sigma)).astype(np.float32)
