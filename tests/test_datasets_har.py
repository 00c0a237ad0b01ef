"""UCI HAR: ``har-train`` on the offline copy; ``har`` (full) on a folder in the original
release layout rebuilt from it (train features exact, test features stand-ins)."""
import importlib
import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bench import registry
from bench.paths import import_project_package

har = importlib.import_module(import_project_package("datasets").__name__ + ".har")
dl = importlib.import_module(import_project_package("datasets").__name__ + "._download")

TRAIN_SUBJECTS = {1: 347, 3: 341, 5: 302, 6: 325, 7: 308, 8: 281, 11: 316, 14: 323, 15: 328, 16: 366, 17: 368,
                  19: 360, 21: 408, 22: 321, 23: 372, 25: 409, 26: 392, 27: 376, 28: 382, 29: 344, 30: 383}
TEST_SUBJECTS = {2: 302, 4: 317, 9: 288, 10: 294, 12: 320, 13: 327, 18: 364, 20: 354, 24: 381}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRCLUSTERBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FAIRCLUSTERBENCH_OFFLINE", "1")


@pytest.fixture(scope="module")
def har_train(shared_data):
    return registry.datasets.get("har-train")().load(shared_data)


def test_har_train_offline_copy(har_train):
    d = har_train
    assert d.X.shape == (7352, 561) and d.X.dtype == np.float32
    assert d.X.min() == -1.0 and d.X.max() == 1.0
    assert d.n_clusters == 6 and np.bincount(d.y).tolist() == [1226, 1073, 986, 1286, 1374, 1407]
    a = d.attributes[0]
    assert a.name == "subject" and a.n_values == 21 and a.value_names == tuple(str(s) for s in TRAIN_SUBJECTS)
    assert np.bincount(d.groups[:, 0]).tolist() == list(TRAIN_SUBJECTS.values())
    assert np.all(np.diff(d.groups[:, 0]) >= 0)  # stably sorted by subject
    np.testing.assert_array_equal(d.X[0, :3], np.float32([0.28858451, -0.020294171, -0.13290514]))
    assert registry.datasets.get("har-train").paper_name == ""


def test_full_har_refuses_train_only_copy(shared_data):
    with pytest.raises(dl.DatasetNotFound, match="har-train"):
        registry.datasets.get("har")().load(shared_data)


@pytest.fixture(scope="module")
def release(tmp_path_factory, shared_data):
    """A ``UCI HAR Dataset/`` folder with the original label/subject files; X_train.txt holds
    the real rows of subject 1 (the first 347, written as in the release, %.7e) and zeros
    elsewhere, X_test.txt zeros (the offline copy lacks it): the full shapes, written fast."""
    root = tmp_path_factory.mktemp("har") / "data"
    folder = root / "har" / "UCI HAR Dataset"
    for split in ("train", "test"):
        (folder / split).mkdir(parents=True)
        for kind in ("y", "subject"):
            shutil.copy(Path(shared_data) / "har" / f"{kind}_{split}.txt", folder / split / f"{kind}_{split}.txt")
    X = har.decode_train_npz(Path(shared_data) / "har" / "uci_har_train.npz")["X_train"]
    zeros = " ".join(["0"] * 561) + "\n"
    with open(folder / "train" / "X_train.txt", "w") as f:
        f.writelines(" ".join(f"{v:.7e}" for v in row) + "\n" for row in X[:347])
        f.write(zeros * (7352 - 347))
    (folder / "test" / "X_test.txt").write_text(zeros * 2947)
    return root, X[:347]


def test_full_har_from_release_folder(release):
    root, X_train = release
    d = registry.datasets.get("har")().load(root)
    assert d.X.shape == (10299, 561) and d.X.dtype == np.float32 and d.n_clusters == 6
    assert d.attributes[0].n_values == 30
    sizes = {**TRAIN_SUBJECTS, **TEST_SUBJECTS}
    assert np.bincount(d.groups[:, 0], minlength=30).tolist() == [sizes[s] for s in range(1, 31)]
    assert np.all(np.diff(d.groups[:, 0]) >= 0)
    assert np.bincount(d.y).tolist() == [1226 + 496, 1073 + 471, 986 + 420, 1286 + 491, 1374 + 532, 1407 + 537]
    # subject 1 is train-only: its rows are the first 347 rows of X_train, exactly
    assert np.array_equal(d.X[:347], X_train[:347].astype(np.float32))
    again = registry.datasets.get("har")().load(root)  # from the processed-array cache
    assert np.array_equal(again.X, d.X)
    assert len(list((dl.cache_root(root) / "har").glob("*.npz"))) == 1


def test_release_zip_nested_members_and_label_check(release, tmp_path):
    root, X_train = release
    folder = root / "har" / "UCI HAR Dataset"
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        for p in sorted(folder.rglob("*.txt")):
            if "X_test" not in p.name:
                zf.write(p, p.relative_to(folder.parent).as_posix())
    outer = tmp_path / "outer.zip"
    with zipfile.ZipFile(outer, "w") as zf:
        zf.writestr("UCI HAR Dataset.zip", inner.getvalue())
    members = har._Members(outer)
    train = har.read_split(members, "train", str(outer))
    assert np.array_equal(train["X"][:347], X_train) and not train["X"][347:].any()
    assert train["subject"][0] == 1
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / "train" / "y_train.txt").write_text("1\n" * 7352)
    with pytest.raises(dl.ChecksumError, match="y_train.txt"):
        har.read_split(har._Members(bad), "train", str(bad))
