"""Adult and Bank marketing on the offline copies, and the registry entries of all datasets."""
import gzip
import importlib
import shutil

import numpy as np
import pytest

from bench import ParameterError, registry
from bench.paths import import_project_package

tabular = importlib.import_module(import_project_package("datasets").__name__ + ".tabular")

PAPER_NAMES = {"mnist-usps", "reverse-mnist", "har", "office31", "mtfl", ""}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRCLUSTERBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FAIRCLUSTERBENCH_OFFLINE", "1")


def _check_encoding(X, n_numeric, n_categorical):
    num = X[:, :n_numeric].astype(np.float64)
    np.testing.assert_allclose(num.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(num.std(axis=0), 1, atol=1e-4)
    onehot = X[:, n_numeric:]
    assert set(np.unique(onehot).tolist()) == {0.0, 1.0}
    assert np.all(onehot.sum(axis=1) == n_categorical)  # exactly one category per column


def test_adult(shared_data):
    d = registry.datasets.get("adult")().load(shared_data)
    assert d.X.shape == (45222, 80) and d.X.dtype == np.float32
    assert d.info["rows_read"] == 48842 and d.info["rows_kept"] == 45222
    assert [a.name for a in d.attributes] == ["sex", "race"] and d.n_clusters == 2
    assert np.bincount(d.groups[:, 0]).tolist() == [14695, 30527]
    assert d.attributes[1].value_names[-1] == "White" and np.bincount(d.groups[:, 1]).tolist() == [
        435, 1303, 4228, 353, 38903]
    assert np.bincount(d.y).tolist() == [34014, 11208]
    cols = d.info["feature_columns"]
    assert not any(c.split("=")[0] in ("sex", "race", "income", "fnlwgt", "education") for c in cols)
    _check_encoding(d.X, len(tabular.ADULT_NUMERIC), len(tabular.ADULT_CATEGORICAL))
    assert registry.datasets.get("adult")(n_clusters=10).load(shared_data).n_clusters == 10
    with pytest.raises(ParameterError):
        registry.datasets.get("adult")(n_clusters=1)


def test_bank(shared_data):
    d = registry.datasets.get("bank")().load(shared_data)
    assert d.X.shape == (45211, 47) and d.X.dtype == np.float32
    assert [a.name for a in d.attributes] == ["marital", "age_band"] and d.n_clusters == 2
    assert np.bincount(d.groups[:, 0]).tolist() == [5207, 27214, 12790]
    assert np.bincount(d.groups[:, 1]).tolist() == [5273, 18089, 11655, 8410, 1784]
    assert np.bincount(d.y).tolist() == [39922, 5289]
    assert not any(c.split("=")[0] in ("marital", "age", "y") for c in d.info["feature_columns"])
    _check_encoding(d.X, len(tabular.BANK_NUMERIC), len(tabular.BANK_CATEGORICAL))


def test_bank_from_plain_csv_and_corrupted_copy(shared_data, tmp_path):
    folder = tmp_path / "data" / "bank"
    folder.mkdir(parents=True)
    with gzip.open(f"{shared_data}/bank/bank-full.csv.gz") as src, open(folder / "bank-full.csv", "wb") as dst:
        shutil.copyfileobj(src, dst)
    d = registry.datasets.get("bank")().load(tmp_path / "data")
    assert d.n_samples == 45211 and d.info["files"][0]["file"].endswith("bank-full.csv")
    with open(folder / "bank-full.csv", "ab") as f:
        f.write(b'30;"admin.";"single";"secondary";"no";1;"no";"no";"cellular";1;"jan";1;1;-1;0;"unknown";"no"\n')
    with pytest.raises(Exception, match="md5 mismatch"):
        registry.datasets.get("bank")().load(tmp_path / "data")


def test_every_dataset_declares_itself():
    names = registry.datasets.names()
    for required in ("mnist-usps", "reverse-mnist", "har", "har-train", "office31", "mtfl", "mtfl-pixels",
                     "adult", "bank"):
        assert required in names
    for name, cls in registry.datasets.items():
        assert cls.description and "\n" not in cls.description, name
        assert cls.summary and cls.paper_name in PAPER_NAMES, name
        if cls.paper_name:
            assert cls.paper_name == name and cls.paper, name
    assert registry.datasets.get("mtfl-pixels").paper_name == "" and registry.datasets.get("har-train").paper_name == ""
