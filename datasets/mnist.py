"""MNIST-USPS and Color-Reverse MNIST, built as FCMI builds them (``fcmi.md`` §1.3, §5;
DFC's construction in ``dfc.md`` §4.1).

Files (checked against pinned hashes, see ``shared/data/README.md``):

* MNIST train images and labels: the canonical IDX ``.gz`` files (published MD5s), looked
  for in ``<data>/mnist/``, torchvision's ``<data>/MNIST/raw/`` (``.gz`` or decompressed)
  or ``<data>/``; downloaded from the PyTorch S3 mirror, then LeCun's site.
* USPS train: the Kaggle ``usps/usps.h5`` (SHA-256 pinned; needs ``h5py``) or the libsvm
  ``usps.bz2`` that torchvision reads (published MD5; downloaded when nothing is there).
"""
from __future__ import annotations

import bz2
import gzip
from pathlib import Path

import numpy as np

from bench import Attribute, Dataset, LabelledData, register_dataset

from ._download import DatasetNotFound, Resource, fetch, locate, verify
from ._synthetic_attribute import SYNTHETIC_ATTRIBUTE, synthetic_attribute

MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")


def _mnist_resource(name: str, md5_gz: str, sha256: str, size: int) -> Resource:
    return Resource(
        filename=name, urls=tuple(m + name for m in MNIST_MIRRORS), md5=md5_gz, sha256=sha256, size=size,
        subdir="mnist", aliases=(f"MNIST/raw/{name}", name), page="http://yann.lecun.com/exdb/mnist/",
    )


MNIST_TRAIN_IMAGES = _mnist_resource(
    "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422)
MNIST_TRAIN_LABELS = _mnist_resource(
    "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432",
    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881)
# torchvision keeps decompressed copies in MNIST/raw/; accepted with their published MD5s.
MNIST_TRAIN_IMAGES_RAW = Resource("train-images-idx3-ubyte", md5="6bbc9ace898e44ae57da46a324031adb",
                                  subdir="MNIST/raw", aliases=("mnist/train-images-idx3-ubyte",))
MNIST_TRAIN_LABELS_RAW = Resource("train-labels-idx1-ubyte", md5="a25bea736e30d166cdddb491f175f624",
                                  subdir="MNIST/raw", aliases=("mnist/train-labels-idx1-ubyte",))

USPS_H5 = Resource(
    "usps.h5", sha256="734f88c541104a956d88be2c95d03b4a463ffd74ccc2ba9c80841fb98e3fcb36", size=2913522,
    subdir="usps", page="https://www.kaggle.com/datasets/bistaumanga/usps-dataset")
USPS_BZ2 = Resource(
    "usps.bz2", urls=("https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass/usps.bz2",),
    md5="ec16c51db3855ca6c91edd34d0e9b197", subdir="usps", aliases=("USPS/usps.bz2", "usps.bz2"))

N_MNIST_TRAIN, N_USPS_TRAIN = 60000, 7291


# --------------------------------------------------------------------------- readers


def _read_idx(raw: bytes, ndim: int) -> np.ndarray:
    """Parse an IDX file (big-endian header, uint8 payload)."""
    magic = int.from_bytes(raw[:4], "big")
    if magic != 0x0800 + ndim:
        raise ValueError(f"not an IDX file of {ndim} dimensions (magic {magic:#x})")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _read_mnist_file(gz: Resource, raw: Resource, data_dir, ndim: int, info: dict) -> np.ndarray:
    if locate(gz, data_dir) is None and locate(raw, data_dir) is not None:
        path = locate(raw, data_dir)
        info.setdefault("files", []).append(verify(path, raw))
        return _read_idx(Path(path).read_bytes(), ndim)
    path, record = fetch(gz, data_dir)
    info.setdefault("files", []).append(record)
    with gzip.open(path, "rb") as f:
        return _read_idx(f.read(), ndim)


def load_mnist_train(data_dir, info: dict) -> tuple[np.ndarray, np.ndarray]:
    """MNIST train split: uint8 images (60000, 28, 28) and labels (60000,)."""
    x = _read_mnist_file(MNIST_TRAIN_IMAGES, MNIST_TRAIN_IMAGES_RAW, data_dir, 3, info)
    y = _read_mnist_file(MNIST_TRAIN_LABELS, MNIST_TRAIN_LABELS_RAW, data_dir, 1, info)
    if x.shape != (N_MNIST_TRAIN, 28, 28) or y.shape != (N_MNIST_TRAIN,):
        raise ValueError(f"MNIST train has shapes {x.shape}, {y.shape}; expected (60000, 28, 28), (60000,)")
    return x, y.astype(np.int64)


def _usps_levels_to_uint8(values: np.ndarray) -> np.ndarray:
    """torchvision's USPS pixels: ``((v + 1) / 2 * 255).astype(uint8)`` in float32, with v the
    libsvm value in [-1, 1] parsed as float32."""
    v = values.astype(np.float32)
    return ((v + np.float32(1)) / np.float32(2) * np.float32(255)).astype(np.uint8)


def read_usps_h5(path) -> tuple[np.ndarray, np.ndarray]:
    """USPS train split from the Kaggle ``usps.h5``: values are exactly (v + 1) / 2 with v the
    libsvm value on a 0.001 grid, so v is recovered exactly and converted as torchvision does."""
    try:
        import h5py
    except ImportError:
        raise DatasetNotFound(
            f"{path} is an HDF5 file and needs the h5py package: pip install h5py "
            f"(or put the libsvm file usps.bz2 beside it: {USPS_BZ2.urls[0]})") from None
    with h5py.File(path, "r") as f:
        x = f["train/data"][:]
        y = f["train/target"][:]
    levels = np.rint(x.astype(np.float64) * 2000).astype(np.int64)  # 0..2000
    lut = np.array([f"{(k - 1000) / 1000:.3f}" for k in range(2001)]).astype(np.float32)
    return _usps_levels_to_uint8(lut[levels]).reshape(-1, 16, 16), y.astype(np.int64)


def read_usps_libsvm(path) -> tuple[np.ndarray, np.ndarray]:
    """USPS from the libsvm ``usps.bz2`` (labels 1..10 → 0..9, 256 values in [-1, 1])."""
    with bz2.open(path, "rt") as f:
        rows = [line.split() for line in f if line.strip()]
    y = np.array([int(float(r[0])) - 1 for r in rows], dtype=np.int64)
    values = np.full((len(rows), 256), "-1", dtype=object)
    for i, r in enumerate(rows):
        for token in r[1:]:
            index, value = token.split(":")
            values[i, int(index) - 1] = value
    v = values.astype(str).astype(np.float32)
    return _usps_levels_to_uint8(v).reshape(-1, 16, 16), y


def load_usps_train(data_dir, info: dict) -> tuple[np.ndarray, np.ndarray]:
    """USPS train split: uint8 images (7291, 16, 16) as torchvision builds them, labels."""
    if locate(USPS_H5, data_dir) is not None:
        path, record = fetch(USPS_H5, data_dir)
        x, y = read_usps_h5(path)
    else:
        path, record = fetch(USPS_BZ2, data_dir)
        x, y = read_usps_libsvm(path)
    info.setdefault("files", []).append(record)
    if x.shape != (N_USPS_TRAIN, 16, 16):
        raise ValueError(f"USPS train has shape {x.shape}; expected (7291, 16, 16)")
    return x, y


def resize_like_torchvision(images: np.ndarray, size: int) -> np.ndarray:
    """``torchvision.transforms.Resize(size)`` on uint8 PIL images, as FCMI's pipeline applies
    it before ``ToTensor``: PIL bilinear resampling, result rounded to uint8.

    (For upsampling, PIL's bilinear filter equals ``F.interpolate(mode="bilinear",
    align_corners=False)``; PIL additionally rounds to uint8, which is what FCMI's inputs
    were.)"""
    from PIL import Image

    n, h, w = images.shape
    out = np.empty((n, size, size), dtype=np.uint8)
    for i in range(n):
        small = Image.frombytes("L", (w, h), np.ascontiguousarray(images[i]).tobytes())
        out[i] = np.frombuffer(small.resize((size, size), Image.BILINEAR).tobytes(), np.uint8).reshape(size, size)
    return out


def to_unit_range(u8: np.ndarray, reverse: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """ToTensor then Normalize(0.5, 0.5) (with ``reverse``: ToTensor, 1 − x, Normalize) as
    float32 (n, 1, H, W) in [-1, 1]: torchvision's float32 operations in the same order,
    done in place (bit-identical, no temporaries). ``out`` receives the result if given."""
    x = np.empty((len(u8), 1) + u8.shape[1:], dtype=np.float32) if out is None else out
    x[:, 0] = u8
    x /= np.float32(255)
    if reverse:
        np.subtract(np.float32(1), x, out=x)
    x -= np.float32(0.5)
    x /= np.float32(0.5)
    return x


# --------------------------------------------------------------------------- datasets


@register_dataset
class MnistUsps(Dataset):
    """MNIST-USPS (DFC, Li et al. CVPR 2020; FCMI, Zeng et al. CVPR 2023, ``fcmi.md`` §5).

    MNIST train (60,000, group 0) followed by USPS train (7,291, group 1) = 67,291 grey
    28×28 digits; sensitive attribute = source; 10 clusters (digits).

    Preprocessing, as FCMI's ``Resize(28) → ToTensor → Normalize(0.5, 0.5)``:

    * USPS pixels are rebuilt as torchvision's ``USPS`` does (``((v+1)/2·255)`` → uint8) and
      upsampled 16→28 with PIL bilinear resampling (torchvision's ``Resize`` on PIL images),
      rounded to uint8; MNIST is already 28×28 (``Resize(28)`` is then a no-op).
    * x/255, then (x − 0.5)/0.5: float32 (n, 1, 28, 28) in [-1, 1].

    ``ifc_attribute=True`` adds IFC's second attribute, a random binary 60/40 split drawn per
    source (:mod:`datasets._synthetic_attribute`; reconstructed), after the source: the
    primary attribute stays the source, so single-attribute methods see the same data (IFC
    lists the synthetic one first; its joint term does not depend on the order).
    """

    name = "mnist-usps"
    description = "MNIST train + USPS train (resized 16→28), 28x28 in [-1,1]; group = source domain"
    summary = "67,291 images 1x28x28 in [-1,1]; 10 clusters; source (2: mnist 60,000 / usps 7,291)"
    paper = "DFC (Li et al., CVPR 2020) as built by FCMI (Zeng et al., CVPR 2023)"
    paper_name = "mnist-usps"
    parameters = {"ifc_attribute": False}

    def load(self, data_dir) -> LabelledData:
        info: dict = {"preprocessing": "USPS torchvision uint8, PIL bilinear Resize(28); ToTensor; Normalize(0.5,0.5)"}
        xm, ym = load_mnist_train(data_dir, info)
        xu, yu = load_usps_train(data_dir, info)
        X = np.empty((len(xm) + len(xu), 1, 28, 28), dtype=np.float32)
        to_unit_range(xm, out=X[: len(xm)])
        to_unit_range(resize_like_torchvision(xu, 28), out=X[len(xm):])
        y = np.concatenate([ym, yu])
        g = np.concatenate([np.zeros(len(ym), np.int64), np.ones(len(yu), np.int64)])
        attributes = (Attribute("source", 2, ("mnist", "usps")),)
        if self.params["ifc_attribute"]:
            g = np.stack([g, synthetic_attribute([len(ym), len(yu)])], 1)
            attributes += (SYNTHETIC_ATTRIBUTE,)
        return LabelledData(X=X, y=y, groups=g, attributes=attributes, n_clusters=10, name=self.name, info=info)


@register_dataset
class ReverseMnist(Dataset):
    """Color-Reverse MNIST (DFC; FCMI ``ReverseMNIST``, ``fcmi.md`` §1.3, §5).

    MNIST train (60,000, group 0) followed by the same images colour-reversed (60,000,
    group 1) = 120,000; 10 clusters. Originals: ToTensor, Normalize(0.5, 0.5). Reversed:
    ToTensor, x → 1 − x, Normalize(0.5, 0.5). Float32 (n, 1, 28, 28) in [-1, 1].

    ``ifc_attribute=True`` adds IFC's second attribute, a random binary 60/40 split drawn per
    copy, so that an image and its reversed twin share it (:mod:`datasets._synthetic_attribute`;
    reconstructed), after the source: the primary attribute stays reversed, so
    single-attribute methods see the same data (IFC lists the synthetic one first; its joint
    term does not depend on the order).
    """

    name = "reverse-mnist"
    description = "MNIST train + its colour-reversed copy (1 - x), 28x28 in [-1,1]; group = reversed"
    summary = "120,000 images 1x28x28 in [-1,1]; 10 clusters; reversed (2: 60,000 / 60,000)"
    paper = "DFC (Li et al., CVPR 2020) as built by FCMI (Zeng et al., CVPR 2023)"
    paper_name = "reverse-mnist"
    parameters = {"ifc_attribute": False}

    def load(self, data_dir) -> LabelledData:
        info: dict = {"preprocessing": "ToTensor; reversed copy 1-x; Normalize(0.5,0.5)"}
        xm, ym = load_mnist_train(data_dir, info)
        X = np.empty((2 * len(xm), 1, 28, 28), dtype=np.float32)
        to_unit_range(xm, out=X[: len(xm)])
        to_unit_range(xm, reverse=True, out=X[len(xm):])
        y = np.concatenate([ym, ym])
        g = np.concatenate([np.zeros(len(ym), np.int64), np.ones(len(ym), np.int64)])
        attributes = (Attribute("reversed", 2, ("original", "reversed")),)
        if self.params["ifc_attribute"]:
            g = np.stack([g, synthetic_attribute([len(ym), len(ym)])], 1)
            attributes += (SYNTHETIC_ATTRIBUTE,)
        return LabelledData(X=X, y=y, groups=g, attributes=attributes, n_clusters=10, name=self.name, info=info)
