"""UCI Human Activity Recognition (smartphones), as FCMI reads it (``fcmi.md`` §1.3, §5).

Two datasets, never mixed:

* ``har``: the full 10,299 windows (train 7,352 + test 2,947), 30 subjects. Needs the
  original files: the UCI archive (downloaded and checked against its SHA-256), the inner
  ``UCI HAR Dataset.zip``, or the extracted ``UCI HAR Dataset/`` folder (also FCMI's ``HAR/``
  layout with ``train/`` and ``test/``).
* ``har-train``: the train split only (7,352 windows, 21 subjects), which is what the offline
  copy (``har/uci_har_train.npz``, a lossless repack of ``X_train.txt``) holds. Its numbers are
  not comparable to the papers' HAR.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from bench import Attribute, Dataset, LabelledData, register_dataset

from ._download import (
    ChecksumError, DatasetNotFound, Resource, cache_root, cached_arrays, digest, fetch, locate,
)

HAR_PAGE = "https://archive.ics.uci.edu/dataset/240"
# The current UCI archive (an outer zip holding "UCI HAR Dataset.zip"). Its SHA-256 and
# size are the values recorded independently by several projects that verified the download.
HAR_ARCHIVE = Resource(
    "human+activity+recognition+using+smartphones.zip",
    urls=("https://archive.ics.uci.edu/static/public/240/human+activity+recognition+using+smartphones.zip",),
    sha256="c00b803081a5c797cd5e4b83700a9810b38d53d9d84e01917e090e1fdbc81031", size=61005872,
    subdir="har", aliases=("human+activity+recognition+using+smartphones.zip",), page=HAR_PAGE,
)
HAR_INNER_ZIP = Resource(
    "UCI HAR Dataset.zip", sha256="2045e435c955214b38145fb5fa00776c72814f01b203fec405152dac7d5bfeb0",
    subdir="har", aliases=("UCI HAR Dataset.zip",), page=HAR_PAGE,
)
# Original label / subject files (SHA-256 of the original bytes, shared/data/README.md).
LABEL_SHA256 = {
    "y_train.txt": "415b3357e2e2d5e70a45c781947c6bdd80e0410a579d862eedcd6bbce3c694ef",
    "subject_train.txt": "66e1e2fbe9b396fa5155f531dc3348c803f503be663e2318772d49947db9153a",
    "y_test.txt": "2a94cb53ca46b956c1b2aebd4a09a72badd8a8e9ea9cdfe9f31b3306a08666bb",
    "subject_test.txt": "63b8c577f4a85431c06bd87f6384608c90a9f72f05c7956dd21255dc63515c07",
}
HAR_TRAIN_NPZ = Resource(
    "uci_har_train.npz", sha256="c3c84248c7e8d95636c0bd10f6b1ed7abe50a57cd18487d8e51ac0ffc0266baa",
    size=14621519, subdir="har", page=HAR_PAGE,
)
N_TRAIN, N_TEST, N_FEATURES = 7352, 2947, 561
FOLDER_CANDIDATES = ("har/UCI HAR Dataset", "UCI HAR Dataset", "HAR", "har")
ACTIVITIES = ("walking", "walking_upstairs", "walking_downstairs", "sitting", "standing", "laying")


def _parse_matrix(data: bytes) -> np.ndarray:
    """Whitespace-separated floats, parsed as FCMI does (``np.loadtxt``, float64)."""
    return np.loadtxt(io.BytesIO(data), dtype=np.float64, ndmin=2)


def _parse_ints(data: bytes) -> np.ndarray:
    return np.array(data.split(), dtype=np.int64)


def _check_label_file(name: str, data: bytes, where: str) -> None:
    import hashlib

    actual = hashlib.sha256(data).hexdigest()
    if actual != LABEL_SHA256[name]:
        raise ChecksumError(where, "sha256", LABEL_SHA256[name], actual)


def _find_folder(data_dir) -> Path | None:
    for rel in FOLDER_CANDIDATES:
        p = Path(data_dir) / rel
        if (p / "train" / "X_train.txt").is_file():
            return p
    return None


class _Members:
    """Read ``train/X_train.txt`` etc. from a folder or a (nested) zip of the UCI release."""

    def __init__(self, source: Path):
        self.source = source
        self._zip_files: dict[str, bytes] | None = None
        if source.is_file():
            self._zip_files = {}
            with zipfile.ZipFile(source) as zf:
                self._collect(zf)

    def _collect(self, zf: zipfile.ZipFile, depth: int = 0):
        for name in zf.namelist():
            if name.lower().endswith(".zip") and depth < 2 and "__MACOSX" not in name:
                with zipfile.ZipFile(io.BytesIO(zf.read(name))) as inner:
                    self._collect(inner, depth + 1)
            elif "__MACOSX" not in name:
                parts = name.split("/")
                if len(parts) >= 2 and parts[-2] in ("train", "test") and parts[-1].endswith(".txt"):
                    self._zip_files[f"{parts[-2]}/{parts[-1]}"] = zf.read(name)

    def has(self, rel: str) -> bool:
        if self._zip_files is not None:
            return rel in self._zip_files
        return (self.source / rel).is_file()

    def read(self, rel: str) -> bytes:
        if self._zip_files is not None:
            if rel not in self._zip_files:
                raise DatasetNotFound(f"{self.source} has no member .../{rel}")
            return self._zip_files[rel]
        return (self.source / rel).read_bytes()


def _original_source(data_dir, download: bool) -> tuple[Path, dict] | None:
    """A verified source of the original files, or None (``download``: fetch the archive)."""
    folder = _find_folder(data_dir)
    if folder is not None:
        return folder, {"file": str(folder), "kind": "extracted UCI HAR folder"}
    for res in (HAR_INNER_ZIP, HAR_ARCHIVE):
        if locate(res, data_dir) is not None:
            path, record = fetch(res, data_dir)
            return path, record
    if download:
        return fetch(HAR_ARCHIVE, data_dir)
    return None


def read_split(members: _Members, split: str, where: str) -> dict:
    """X (float64), y (1..6) and subject (1..30) of one split of the original release."""
    out = {}
    for key, name in (("y", f"y_{split}.txt"), ("subject", f"subject_{split}.txt")):
        data = members.read(f"{split}/{name}")
        _check_label_file(name, data, f"{where}/{split}/{name}")
        out[key] = _parse_ints(data)
    x_bytes = members.read(f"{split}/X_{split}.txt")
    out["X"] = _parse_matrix(x_bytes)
    out["X_sha256"] = np.array(__import__("hashlib").sha256(x_bytes).hexdigest())
    n = N_TRAIN if split == "train" else N_TEST
    if out["X"].shape != (n, N_FEATURES) or out["y"].shape != (n,) or out["subject"].shape != (n,):
        raise ValueError(f"{where}: {split} split has X {out['X'].shape}, expected ({n}, {N_FEATURES})")
    return out


def read_original(source: Path, record: dict, data_dir, splits=("train", "test")) -> dict:
    """Parse the requested splits (cached as arrays, keyed by the source's hash)."""
    key = record.get("sha256") or digest(str(source), [
        (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(Path(source).glob("*/*.txt"))])
    path = cache_root(data_dir) / "har" / f"har-{'-'.join(splits)}-{key[:16]}.npz"

    def build():
        members = _Members(Path(source))
        arrays = {}
        for split in splits:
            for k, v in read_split(members, split, str(source)).items():
                arrays[f"{k}_{split}"] = v
        return arrays

    return cached_arrays(path, build)


def decode_train_npz(path) -> dict:
    """The offline repack: X = mantissa / 10**(7 − exp10), exactly the float64 of X_train.txt."""
    with np.load(path) as d:
        p10 = np.array([10.0 ** k for k in range(16)])
        X = d["X_mantissa"].astype(np.float64) / p10[7 - d["X_exp10"].astype(np.int64)]
        return {"X_train": X, "y_train": d["y"].astype(np.int64), "subject_train": d["subject"].astype(np.int64)}


def _labelled(name, X, y, subject, values, info, n_values=None):
    order = np.argsort(subject, kind="stable")  # FCMI: rows stably sorted by subject
    values = list(values)
    codes = np.searchsorted(np.array(values), subject[order])
    return LabelledData(
        X=X[order].astype(np.float32), y=y[order] - 1, groups=codes,
        attributes=(Attribute("subject", len(values), tuple(str(v) for v in values)),),
        n_clusters=6, name=name, info=info,
    )


@register_dataset
class Har(Dataset):
    """UCI HAR, full (FCMI ``HAR``; DFDC's construction, ``fcmi.md`` §5).

    ``train/X_train.txt`` and ``test/X_test.txt`` (561 features, already in [-1, 1], no further
    scaling) concatenated = 10,299 rows; labels ``y − 1`` (6 activities = 6 clusters);
    sensitive attribute = subject − 1 (30 groups, 281–409 rows each); rows stably sorted by
    subject as FCMI does; float32. Label and subject files are checked against the SHA-256 of
    the originals; the archive against its recorded SHA-256."""

    name = "har"
    description = "UCI HAR train+test (10,299 x 561 features); group = subject (30); needs the original release"
    summary = "10,299 x 561 in [-1,1]; 6 clusters; subject (30)"
    paper = "DFDC (arXiv 2105.14146) as built by FCMI (Zeng et al., CVPR 2023)"
    paper_name = "har"

    def load(self, data_dir) -> LabelledData:
        try:
            source, record = _original_source(data_dir, download=True)
        except DatasetNotFound as exc:
            raise DatasetNotFound(
                f"{exc}. The full HAR needs the original release including the test split; "
                f"a folder with the train split only can use the dataset 'har-train'") from None
        arrays = read_original(source, record, data_dir, ("train", "test"))
        X = np.concatenate([arrays["X_train"], arrays["X_test"]])
        y = np.concatenate([arrays["y_train"], arrays["y_test"]])
        s = np.concatenate([arrays["subject_train"], arrays["subject_test"]])
        info = {"files": [record], "X_train_sha256": str(arrays["X_sha256_train"]),
                "X_test_sha256": str(arrays["X_sha256_test"]),
                "preprocessing": "train+test concatenated; y-1; subject-1; stable sort by subject; float32"}
        return _labelled(self.name, X, y, s, range(1, 31), info)


@register_dataset
class HarTrain(Dataset):
    """UCI HAR, train split only (7,352 rows, 21 subjects): the offline copy's content.

    Same preprocessing as ``har`` (561 raw features, labels ``y − 1``, rows stably sorted by
    subject, float32); the attribute takes 21 values, one per train subject (value names are the
    subject ids 1, 3, 5, …, 30). Read from the original ``X_train.txt`` where it exists, else
    from ``har/uci_har_train.npz`` (lossless repack, SHA-256 pinned) with the original
    ``y_train.txt`` / ``subject_train.txt`` checked when present. Not the papers' HAR."""

    name = "har-train"
    description = "UCI HAR train split only (7,352 x 561, 21 subjects); not comparable to the papers' HAR"
    summary = "7,352 x 561 in [-1,1]; 6 clusters; subject (21)"
    paper = "FCMI's HAR construction restricted to the train split"
    paper_name = ""

    def load(self, data_dir) -> LabelledData:
        found = _original_source(data_dir, download=False)
        if found is not None:
            source, record = found
            arrays = read_original(source, record, data_dir, ("train",))
            info = {"files": [record], "X_train_sha256": str(arrays["X_sha256_train"])}
        elif locate(HAR_TRAIN_NPZ, data_dir) is not None:
            path, record = fetch(HAR_TRAIN_NPZ, data_dir)
            arrays = decode_train_npz(path)
            info = {"files": [record]}
            for key, fname in (("y_train", "y_train.txt"), ("subject_train", "subject_train.txt")):
                original = Path(data_dir) / "har" / fname
                if original.is_file():
                    data = original.read_bytes()
                    _check_label_file(fname, data, str(original))
                    if not np.array_equal(_parse_ints(data), arrays[key]):
                        raise ChecksumError(path, fname, "the labels of the original file", "different labels")
                    info["files"].append({"file": str(original), "sha256": LABEL_SHA256[fname]})
        else:
            source, record = _original_source(data_dir, download=True)
            arrays = read_original(source, record, data_dir, ("train",))
            info = {"files": [record], "X_train_sha256": str(arrays["X_sha256_train"])}
        info["preprocessing"] = "train split; y-1; subject as 21 groups; stable sort by subject; float32"
        s = arrays["subject_train"]
        return _labelled(self.name, arrays["X_train"], arrays["y_train"], s, np.unique(s), info)
