"""MNIST-USPS and Color-Reverse MNIST on the offline copies (shared/data)."""
import bz2
import gzip
import importlib
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench import registry
from bench.paths import import_project_package

mnist = importlib.import_module(import_project_package("datasets").__name__ + ".mnist")

MNIST_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
USPS_COUNTS = [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRCLUSTERBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FAIRCLUSTERBENCH_OFFLINE", "1")


@pytest.fixture(scope="module")
def mnist_usps(shared_data):
    pytest.importorskip("h5py")
    return registry.datasets.get("mnist-usps")().load(shared_data)


def test_mnist_usps_sizes_groups_classes_range(mnist_usps):
    d = mnist_usps
    assert d.X.shape == (67291, 1, 28, 28) and d.X.dtype == np.float32
    assert d.X.min() == -1.0 and d.X.max() == 1.0
    assert d.n_clusters == 10 and [a.name for a in d.attributes] == ["source"]
    g = d.groups[:, 0]
    assert np.bincount(g).tolist() == [60000, 7291]
    assert np.all(g[:60000] == 0)  # MNIST first, as FCMI's ConcatDataset
    assert np.bincount(d.y[g == 0]).tolist() == MNIST_COUNTS
    assert np.bincount(d.y[g == 1]).tolist() == USPS_COUNTS
    assert d.y[:5].tolist() == [5, 0, 4, 1, 9] and d.y[60000:60003].tolist() == [6, 5, 4]  # torchvision order
    assert {f["sha256"] for f in d.info["files"]} >= {
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "734f88c541104a956d88be2c95d03b4a463ffd74ccc2ba9c80841fb98e3fcb36"}


def test_mnist_part_is_totensor_normalize(mnist_usps, shared_data):
    with gzip.open(f"{shared_data}/mnist/train-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read()[16:], np.uint8).reshape(-1, 28, 28)
    expected = (torch.from_numpy(raw[:100].copy()).float().div(255) - 0.5) / 0.5
    assert np.array_equal(mnist_usps.X[:100, 0], expected.numpy())
    assert abs(float((raw / 255.0).mean()) - 0.1306604762738429) < 1e-12


def test_usps_resize_matches_bilinear_within_rounding(mnist_usps, shared_data):
    import h5py

    with h5py.File(f"{shared_data}/usps/usps.h5", "r") as f:
        u8 = (f["train/data"][:200] * 255).astype(np.uint8).reshape(-1, 1, 16, 16)
    up = F.interpolate(torch.from_numpy(u8).float(), size=(28, 28), mode="bilinear", align_corners=False)
    ours = (mnist_usps.X[60000:60200] * 0.5 + 0.5) * 255
    diff = np.abs(ours - up.numpy())
    assert diff.max() <= 2.0 and diff.mean() < 0.6  # PIL rounds to uint8 in each of its two passes


def test_usps_libsvm_reader_matches_h5(tmp_path, shared_data):
    pytest.importorskip("h5py")
    x_h5, y_h5 = mnist.read_usps_h5(f"{shared_data}/usps/usps.h5")
    import h5py

    with h5py.File(f"{shared_data}/usps/usps.h5", "r") as f:
        x = f["train/data"][:50]
    v = np.rint(x.astype(np.float64) * 2000).astype(int) - 1000  # libsvm value × 1000
    lines = [f"{y + 1} " + " ".join(f"{j + 1}:{vj / 1000:g}" for j, vj in enumerate(row))
             for y, row in zip(y_h5[:50], v)]
    path = tmp_path / "usps.bz2"
    path.write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))
    x_lib, y_lib = mnist.read_usps_libsvm(path)
    assert np.array_equal(x_lib, x_h5[:50]) and np.array_equal(y_lib, y_h5[:50])


def test_torchvision_raw_layout_is_accepted(tmp_path, shared_data):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        with gzip.open(f"{shared_data}/mnist/{name}.gz") as src, open(raw / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    info = {}
    x, y = mnist.load_mnist_train(tmp_path / "data", info)
    assert x.shape == (60000, 28, 28) and np.bincount(y).tolist() == MNIST_COUNTS
    assert info["files"][0]["file"].endswith("MNIST/raw/train-images-idx3-ubyte")
    (raw / "train-labels-idx1-ubyte").write_bytes(b"\0" * 60008)  # corrupted: refused
    with pytest.raises(Exception, match="md5 mismatch"):
        mnist.load_mnist_train(tmp_path / "data", {})


def test_reverse_mnist(shared_data):
    d = registry.datasets.get("reverse-mnist")().load(shared_data)
    assert d.X.shape == (120000, 1, 28, 28) and d.X.dtype == np.float32
    assert d.X.min() == -1.0 and d.X.max() == 1.0
    assert np.bincount(d.groups[:, 0]).tolist() == [60000, 60000]
    assert np.array_equal(d.y[:60000], d.y[60000:]) and np.bincount(d.y[:60000]).tolist() == MNIST_COUNTS
    # reversed copy = Normalize(1 - ToTensor(x)), i.e. the negated original up to float rounding
    idx = np.random.default_rng(0).choice(60000, 2000, replace=False)
    np.testing.assert_allclose(d.X[60000 + idx], -d.X[idx], atol=1e-6)
    first = torch.from_numpy(((d.X[:1] * 0.5 + 0.5) * 255).round().astype(np.uint8)).float().div(255)
    assert np.array_equal(d.X[60000:60001], ((1 - first) - 0.5).div(0.5).numpy())


def test_ifc_synthetic_attribute(shared_data):
    """IFC's second attribute (ifc_infomin.md §A.5): exactly 60 % zeros in each component,
    the same values for an image and its reversed twin, seeded; the primary attribute and the
    images are unchanged."""
    plain = registry.datasets.get("reverse-mnist")().load(shared_data)
    d = registry.datasets.get("reverse-mnist")(ifc_attribute=True).load(shared_data)
    assert [a.name for a in d.attributes] == ["reversed", "synthetic"] and d.groups.shape == (120000, 2)
    np.testing.assert_array_equal(d.groups[:, 0], plain.groups[:, 0])
    assert np.array_equal(d.X[::997], plain.X[::997])
    s = d.groups[:, 1]
    assert np.bincount(s[:60000]).tolist() == [36000, 24000]
    np.testing.assert_array_equal(s[:60000], s[60000:])  # twins share the value
    for c in range(10):  # independent of the digit: every class near 60 %
        assert abs((s[:60000][d.y[:60000] == c] == 0).mean() - 0.6) < 0.03
    digits = registry.datasets.get("digits-reversed")(ifc_attribute=True).load()
    assert np.bincount(digits.groups[:1797, 1]).tolist() == [1078, 719]
    np.testing.assert_array_equal(digits.groups[:1797, 1], digits.groups[1797:, 1])
    again = registry.datasets.get("digits-reversed")(ifc_attribute=True, reversed_fraction=0.5).load()
    np.testing.assert_array_equal(again.groups[:1797, 1], digits.groups[:1797, 1])


def test_ifc_synthetic_attribute_on_mnist_usps(mnist_usps, shared_data):
    d = registry.datasets.get("mnist-usps")(ifc_attribute=True).load(shared_data)
    np.testing.assert_array_equal(d.groups[:, 0], mnist_usps.groups[:, 0])
    s = d.groups[:, 1]
    assert np.bincount(s[:60000]).tolist() == [36000, 24000]
    assert np.bincount(s[60000:]).tolist() == [4375, 2916]  # round(0.6 · 7,291) = 4,375
    assert d.clustering_input().joint_groups()[1] == 4
