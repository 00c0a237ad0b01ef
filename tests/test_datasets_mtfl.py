"""MTFL: FCMI's seeded 2,000-face subset on the real annotations, the pixel fallback on the
offline copy, and the checks on other layouts."""
import hashlib
import importlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import registry
from bench.paths import import_project_package

mtfl = importlib.import_module(import_project_package("datasets").__name__ + ".mtfl")
images = importlib.import_module(import_project_package("datasets").__name__ + "._images")
dl = importlib.import_module(import_project_package("datasets").__name__ + "._download")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRCLUSTERBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FAIRCLUSTERBENCH_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


@pytest.fixture(scope="module")
def rows(shared_data):
    folder = Path(shared_data) / "mtfl"
    return (mtfl.parse_annotations((folder / "testing.txt").read_text())
            + mtfl.parse_annotations((folder / "training.txt").read_text()))


def test_annotations_match_published_counts(rows):
    assert len(rows) == 12995 and len({r[0] for r in rows}) == 12995
    assert sum(r[1] == 1 for r in rows) == 6980 and sum(r[3] == 1 for r in rows) == 1649
    assert rows[0][0].startswith("AFLW/") and rows[2995][0] == "lfw_5590/Aaron_Eckhart_0001.jpg"


def test_fcmi_subset_rule_and_seed(rows):
    idx = mtfl.fcmi_subset(rows, 9116)
    assert len(idx) == 2000 and len(set(idx.tolist())) == 2000
    glasses = np.array([rows[i][3] == 1 for i in idx])
    male = np.array([rows[i][1] == 1 for i in idx])
    assert glasses[:1000].sum() == 0 and glasses[1000:].all()  # g0 (without) then g1 (with)
    for g in (0, 1):
        part = male[1000 * g: 1000 * (g + 1)]
        assert part.sum() == 654 and not part[:346].any()  # y0 (346 female) then y1 (654 male)
    names = [rows[i][0].replace("/", "_") for i in idx[:346]]
    assert names == sorted(names)  # ImageFolder order of the copied files
    assert np.array_equal(idx, mtfl.fcmi_subset(rows, 9116))  # same seed, same subset
    other = mtfl.fcmi_subset(rows, 1)
    assert len(set(idx.tolist()) ^ set(other.tolist())) > 500
    # the cell shuffles come from one legacy generator seeded once (np.random.seed(9116))
    rng = np.random.RandomState(9116)
    cell = np.flatnonzero([(r[3] != 1) and (r[1] != 1) for r in rows])
    order = np.arange(len(cell))
    rng.shuffle(order)
    assert set(idx[:346].tolist()) == set(cell[order[:346]].tolist())


@pytest.fixture(scope="module")
def pixels(shared_data, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("FAIRCLUSTERBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
    try:
        yield registry.datasets.get("mtfl-pixels")().load(shared_data)
    finally:
        mp.undo()


def test_mtfl_pixels_offline_fallback(pixels, rows):
    d = pixels
    assert d.X.shape == (2000, 1, 32, 32) and d.X.dtype == np.float32
    assert d.X.min() >= -1 and d.X.max() <= 1 and d.X.std() > 0.2
    assert [a.name for a in d.attributes] == ["glasses", "smile"] and d.n_clusters == 2
    assert np.bincount(d.groups[:, 0]).tolist() == [1000, 1000]
    for g in (0, 1):
        assert np.bincount(d.y[d.groups[:, 0] == g]).tolist() == [346, 654]
    idx = mtfl.fcmi_subset(rows)
    assert d.groups[:, 1].tolist() == [int(rows[i][2] == 1) for i in idx]
    listing = Path(d.info["subset_file"]).read_text().splitlines()
    assert len(listing) == 2000 and listing[0].split()[0] == rows[idx[0]][0]
    assert hashlib.sha256(Path(d.info["subset_file"]).read_bytes()).hexdigest() == d.info["subset_sha256"]
    assert d.info["seed"] == 9116 and registry.datasets.get("mtfl-pixels").paper_name == ""
    assert {f["sha256"] for f in d.info["files"]} >= {r.sha256 for r in mtfl.IMAGE_ZIPS}


def test_mtfl_pixels_other_seed_differs_and_is_cached(shared_data, pixels):
    d = registry.datasets.get("mtfl-pixels")(seed=5, size=16).load(shared_data)
    assert d.X.shape == (2000, 1, 16, 16) and d.info["subset_sha256"] != pixels.info["subset_sha256"]
    again = registry.datasets.get("mtfl-pixels")(seed=5, size=16).load(shared_data)
    assert np.array_equal(again.X, d.X) and Path(again.info["cache_file"]).is_file()


def test_mtfl_features_need_the_reference_weights(shared_data):
    with pytest.raises(dl.DatasetNotFound, match="mtfl-pixels"):
        registry.datasets.get("mtfl")().load(shared_data)


def test_manifest_check_refuses_other_images(tmp_path):
    root = tmp_path / "MTFL"
    (root / "AFLW").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "AFLW" / "0001-image1.jpg")
    source = images.FolderImages(root, mtfl.IMAGE_FOLDERS)
    assert source.names() == ["AFLW/0001-image1.jpg"]
    with pytest.raises(dl.ChecksumError, match="manifest"):
        mtfl.check_manifest(source, source.names())


def test_mtfl_missing_everything_says_where(tmp_path):
    with pytest.raises(dl.DatasetNotFound, match="MTFL.zip"):
        mtfl.mtfl_source(tmp_path / "empty")
