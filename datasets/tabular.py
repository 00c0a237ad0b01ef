"""Tabular fair-clustering test beds with real multiple sensitive attributes: UCI Adult
(sex, race) and UCI Bank marketing (marital status, age band).

Common preprocessing (the usual fair-clustering recipe, e.g. Ziko et al. AAAI 2021 and Bera
et al. NeurIPS 2019 use these data sets; they keep numeric columns, we also one-hot the
categoricals, as the issue asks): numeric columns standardised to zero mean and unit variance
(population std), categorical columns one-hot encoded (categories sorted, none dropped), the
sensitive attributes and the label are *not* features. True labels = the binary target, so the
default number of clusters is 2; the K = 10 protocol of the classical literature (Ziko et al.)
is ``n_clusters=10``.
"""
from __future__ import annotations

import gzip
import io
import zipfile

import numpy as np
import pandas as pd

from bench import Attribute, Dataset, LabelledData, ParameterError, register_dataset

from ._download import DatasetNotFound, Resource, fetch, locate

ADULT_URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/adult/"
ADULT_DATA = Resource("adult.data", urls=(ADULT_URL + "adult.data",), md5="5d7c39d7b8804f071cdd1f2a7c460872",
                      sha256="5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d", size=3974305,
                      subdir="adult", page="https://archive.ics.uci.edu/dataset/2/adult")
ADULT_TEST = Resource("adult.test", urls=(ADULT_URL + "adult.test",), md5="35238206dfdf7f1fe215bbb874adecdc",
                      sha256="a2a9044bc167a35b2361efbabec64e89d69ce82d9790d2980119aac5fd7e9c05", size=2003153,
                      subdir="adult", page="https://archive.ics.uci.edu/dataset/2/adult")
ADULT_COLUMNS = ["age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
                 "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country",
                 "income"]
ADULT_NUMERIC = ["age", "education-num", "capital-gain", "capital-loss", "hours-per-week"]
ADULT_CATEGORICAL = ["workclass", "marital-status", "occupation", "relationship", "native-country"]
ADULT_ROWS = 45222  # 48,842 rows of adult.data + adult.test, less the 3,620 with a missing value

BANK_FULL_MD5 = "e6b0ca77f3f200ec5428e04dd104da53"  # published MD5 of bank-full.csv
BANK_PAGE = "https://archive.ics.uci.edu/dataset/222/bank+marketing"
BANK_FULL_GZ = Resource("bank-full.csv.gz", sha256="a33820520e31d26b498e31003e99eb0e477690b699a38eade375acf3b3004dcd",
                        size=475023, subdir="bank", page=BANK_PAGE)
BANK_FULL_CSV = Resource("bank-full.csv", md5=BANK_FULL_MD5, subdir="bank", page=BANK_PAGE)
BANK_ZIP = Resource("bank.zip", urls=("https://archive.ics.uci.edu/ml/machine-learning-databases/00222/bank.zip",
                                      "https://archive.ics.uci.edu/static/public/222/bank+marketing.zip"),
                    subdir="bank", members={"bank-full.csv": ("md5", BANK_FULL_MD5)}, page=BANK_PAGE)
BANK_NUMERIC = ["balance", "day", "duration", "campaign", "pdays", "previous"]
BANK_CATEGORICAL = ["job", "education", "default", "housing", "loan", "contact", "month", "poutcome"]
BANK_ROWS = 45211
AGE_BANDS = (("<30", 0, 29), ("30-39", 30, 39), ("40-49", 40, 49), ("50-59", 50, 59), (">=60", 60, 200))


def encode(frame: pd.DataFrame, numeric, categorical) -> tuple[np.ndarray, list[str]]:
    """Standardised numerics then one-hot categoricals (sorted categories), float32."""
    num = frame[numeric].to_numpy(np.float64)
    num = (num - num.mean(axis=0)) / num.std(axis=0)
    blocks, names = [num], list(numeric)
    for col in categorical:
        cats = sorted(frame[col].unique())
        blocks.append(np.eye(len(cats))[codes(frame[col], cats)])
        names += [f"{col}={c}" for c in cats]
    return np.concatenate(blocks, axis=1).astype(np.float32), names


def codes(values: pd.Series, categories) -> np.ndarray:
    out = pd.Categorical(values, categories=list(categories)).codes.astype(np.int64)
    if (out < 0).any():
        raise ValueError(f"unexpected values {sorted(set(values) - set(categories))[:5]}")
    return out


class _Tabular(Dataset):
    parameters = {"n_clusters": 2}

    def validate(self):
        if self.params["n_clusters"] < 2:
            raise ParameterError(f"{self.name}: n_clusters must be an integer >= 2")


@register_dataset
class Adult(_Tabular):
    """UCI Adult (census income), ``adult.data`` + ``adult.test`` = 48,842 rows; the 3,620 rows
    with a missing value (``?``) are dropped → 45,222 rows.

    * Features (80 columns): ``age``, ``education-num``, ``capital-gain``, ``capital-loss``,
      ``hours-per-week`` standardised; ``workclass``, ``marital-status``, ``occupation``,
      ``relationship``, ``native-country`` one-hot. Left out: ``sex`` and ``race`` (sensitive),
      ``income`` (label), ``fnlwgt`` (a census sampling weight, not a property of the person) and
      ``education`` (the same information as ``education-num``).
    * Sensitive attributes: sex (female 0 / male 1), then race (5 values, alphabetical).
    * Labels: income >50K (1) vs <=50K (0); 2 clusters by default."""

    name = "adult"
    description = "UCI Adult, 45,222 rows (missing dropped), one-hot + standardised; sex and race; label income"
    summary = "45,222 x 80; 2 clusters (income); sex (2), race (5)"
    paper = "UCI Adult as used in fair clustering (Chierichetti et al. 2017; Bera et al. 2019; Ziko et al. 2021)"

    def load(self, data_dir) -> LabelledData:
        files, frames = [], []
        for res, skip in ((ADULT_DATA, 0), (ADULT_TEST, 1)):
            path, record = fetch(res, data_dir)
            files.append(record)
            frames.append(pd.read_csv(path, header=None, names=ADULT_COLUMNS, skiprows=skip, skipinitialspace=True,
                                      na_values="?", keep_default_na=False))
        frame = pd.concat(frames, ignore_index=True)
        n_raw = len(frame)
        frame = frame.dropna().reset_index(drop=True)
        frame["income"] = frame["income"].str.rstrip(".")
        X, columns = encode(frame, ADULT_NUMERIC, ADULT_CATEGORICAL)
        races = sorted(frame["race"].unique())
        groups = np.stack([codes(frame["sex"], ["Female", "Male"]), codes(frame["race"], races)], axis=1)
        y = codes(frame["income"], ["<=50K", ">50K"])
        info = {"files": files, "rows_read": n_raw, "rows_kept": len(frame), "feature_columns": columns,
                "preprocessing": "dropna ('?'); numerics z-scored; categoricals one-hot; "
                                 "dropped sex, race, income, fnlwgt, education"}
        return LabelledData(
            X=X, y=y, groups=groups,
            attributes=(Attribute("sex", 2, ("female", "male")), Attribute("race", len(races), tuple(races))),
            n_clusters=self.params["n_clusters"], name=self.name, info=info,
        )


def _read_bank_full(data_dir) -> tuple[pd.DataFrame, dict]:
    if locate(BANK_FULL_GZ, data_dir) is not None:
        path, record = fetch(BANK_FULL_GZ, data_dir)
        with gzip.open(path, "rb") as f:
            data = f.read()
    elif locate(BANK_FULL_CSV, data_dir) is not None:
        path, record = fetch(BANK_FULL_CSV, data_dir)
        data = path.read_bytes()
    else:
        path, record = fetch(BANK_ZIP, data_dir)
        data = _zip_member(path, "bank-full.csv")
    return pd.read_csv(io.BytesIO(data), sep=";"), record


def _zip_member(path, name: str, depth: int = 0) -> bytes:
    with zipfile.ZipFile(path if depth == 0 else io.BytesIO(path)) as zf:
        for member in zf.namelist():
            if member.rsplit("/", 1)[-1] == name:
                return zf.read(member)
        for member in zf.namelist():
            if member.lower().endswith(".zip") and depth < 2:
                try:
                    return _zip_member(zf.read(member), name, depth + 1)
                except DatasetNotFound:
                    continue
    raise DatasetNotFound(f"no member {name} in the bank marketing archive")


@register_dataset
class Bank(_Tabular):
    """UCI Bank marketing, ``bank-full.csv`` (45,211 rows, no missing values; ``unknown`` is kept
    as a category of ``job``, ``education``, ``contact`` and ``poutcome``, as UCI documents it).

    * Features (47 columns): ``balance``, ``day``, ``duration``, ``campaign``, ``pdays``,
      ``previous`` standardised; ``job``, ``education``, ``default``, ``housing``, ``loan``,
      ``contact``, ``month``, ``poutcome`` one-hot. Left out: ``marital`` and ``age``
      (sensitive) and ``y`` (label).
    * Sensitive attributes: marital status (divorced / married / single), then age band
      (<30, 30–39, 40–49, 50–59, ≥60).
    * Labels: subscribed a term deposit (``y``: yes 1 / no 0); 2 clusters by default."""

    name = "bank"
    description = "UCI Bank marketing (bank-full), 45,211 rows, one-hot + standardised; marital and age band"
    summary = "45,211 x 47; 2 clusters (subscribed); marital (3), age band (5)"
    paper = "UCI Bank marketing as used in fair clustering (Bera et al. 2019; Ziko et al. 2021)"

    def load(self, data_dir) -> LabelledData:
        frame, record = _read_bank_full(data_dir)
        X, columns = encode(frame, BANK_NUMERIC, BANK_CATEGORICAL)
        band = np.full(len(frame), -1, dtype=np.int64)
        for i, (_, lo, hi) in enumerate(AGE_BANDS):
            band[(frame["age"] >= lo).to_numpy() & (frame["age"] <= hi).to_numpy()] = i
        groups = np.stack([codes(frame["marital"], ["divorced", "married", "single"]), band], axis=1)
        info = {"files": [record], "rows_kept": len(frame), "feature_columns": columns,
                "preprocessing": "numerics z-scored; categoricals one-hot ('unknown' kept); dropped marital, age, y"}
        return LabelledData(
            X=X, y=codes(frame["y"], ["no", "yes"]), groups=groups,
            attributes=(Attribute("marital", 3, ("divorced", "married", "single")),
                        Attribute("age_band", len(AGE_BANDS), tuple(b[0] for b in AGE_BANDS))),
            n_clusters=self.params["n_clusters"], name=self.name, info=info,
        )
