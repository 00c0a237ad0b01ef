"""MTFL faces: FCMI's 2,000-image subset (``fcmi.md`` §5, ``DataSetMaster/MTFL.py``'s rule),
with frozen ResNet-50 features (``mtfl``) or, offline, downscaled grey pixels (``mtfl-pixels``).

The subset (reconstructed from the description of FCMI's ``read_all``):

1. Annotations: ``testing.txt`` (2,995 faces) followed by ``training.txt`` (10,000); each line
   ``path x1..x5 y1..y5 gender smile glasses pose``, ``\\`` in paths read as ``/``.
2. y = 1 for gender code 1 (male), 0 for female; g = 1 for glasses code 1 (wearing), else 0.
3. A legacy NumPy generator seeded once (``np.random.seed(9116)``); for g in (0, 1), for y in
   (0, 1): shuffle the indices of that cell and keep the first 346 (y = 0) or 654 (y = 1).
4. Order as FCMI's ``ImageFolder`` reads the copied files ``g{g}/y{y}/<path with / → _>``:
   by g, then y, then that file name.

Result: 2,000 faces, 1,000 per glasses group, each 346 female + 654 male; 2 clusters (gender);
attributes glasses (primary) and smile (code 1 = smiling).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from bench import Attribute, Dataset, LabelledData, ParameterError, register_dataset
from bench.paths import write_atomically

from ._download import ChecksumError, DatasetNotFound, Resource, cache_root, cached_arrays, digest, fetch, locate
from ._features import backbone_names, get_backbone, image_features, tanh_standardise
from ._images import FolderImages, ImageSource, ZipImages

MTFL_URL = "http://mmlab.ie.cuhk.edu.hk/projects/TCDCN/data/MTFL.zip"
MTFL_PAGE = "http://mmlab.ie.cuhk.edu.hk/projects/TCDCN.html"
ANNOTATION_SHA256 = {
    "training.txt": "3631e6fa753e8934e18ff9ff435ade3fdcbf4a45460d7598d7812507977530d5",
    "testing.txt": "91e3ddbf2fe394728a2c4307de800b77f53bfb9dd1a67d32ff3916ff40f41476",
}
# SHA-256 of "\n".join(f"{path} {sha256(image bytes)}") over the 12,995 annotated images,
# sorted by path: checks an extracted folder or the original MTFL.zip image by image.
IMAGES_MANIFEST_SHA256 = "aaef543edc36cdfbce448932b6f12084778317282325a7a9fb9deeaf83b21361"
IMAGE_FOLDERS = ("AFLW", "lfw_5590", "net_7876")
# The offline copy: the original JPEG bytes repacked per folder (shared/data/README.md).
IMAGE_ZIPS = (
    Resource("mtfl_AFLW.zip", sha256="f843d02e9e6c8f11f80ee38f3a40ddf7a9d4fedca52473f463d4ced548479dc5",
             size=14141754, subdir="mtfl"),
    Resource("mtfl_lfw_5590.zip", sha256="fca7494e1832ba1f704d14b4b55ef4fc0e45c71a4aef645ff2a0cf8d7d0a8ccd",
             size=36829520, subdir="mtfl"),
    Resource("mtfl_net_7876.zip", sha256="ecf274007ca2d52a80f77b4dfd74eb8207d132fc2c484230b2bd07d59e885ee0",
             size=66020588, subdir="mtfl"),
)
MTFL_ZIP = Resource("MTFL.zip", urls=(MTFL_URL,), subdir="mtfl", aliases=("MTFL.zip",), page=MTFL_PAGE,
                    members={k: ("sha256", v) for k, v in ANNOTATION_SHA256.items()})
FOLDER_CANDIDATES = ("mtfl", "MTFL", "mtfl/MTFL", ".")
FCMI_SEED, PER_GROUP, N_FEMALE = 9116, 1000, 346
# FCMI's MTFL normalisation and feature post-transform constants (fcmi.md §1.3).
MEAN, STD = (0.4951, 0.4064, 0.3579), (0.2868, 0.2594, 0.2545)
MU, SIGMA = 0.34949973225593567, 0.3805956244468689


# --------------------------------------------------------------------------- annotations and subset


def parse_annotations(text: str) -> list[tuple[str, int, int, int, int]]:
    """(path, gender, smile, glasses, pose) per non-empty line, codes as in the file."""
    rows = []
    for line in text.splitlines():
        items = line.split()
        if len(items) < 15:
            if items:
                raise ValueError(f"MTFL annotation line with {len(items)} fields, expected 15: {line[:80]!r}")
            continue
        rows.append((items[0].replace("\\", "/"), *(int(v) for v in items[11:15])))
    return rows


def fcmi_subset(rows, seed: int = FCMI_SEED, per_group: int = PER_GROUP, n_female: int = N_FEMALE) -> np.ndarray:
    """Indices into ``rows`` (testing then training annotations) of FCMI's subset, in FCMI's
    ImageFolder order (see the module docstring)."""
    gender_y = np.array([r[1] == 1 for r in rows], dtype=np.int64)   # 1 male, 0 female
    glasses_g = np.array([r[3] == 1 for r in rows], dtype=np.int64)  # 1 with, 0 without
    rng = np.random.RandomState(seed)
    chosen = []
    for g in np.unique(glasses_g):
        for y in np.unique(gender_y):
            cell = np.flatnonzero((glasses_g == g) & (gender_y == y))
            order = np.arange(len(cell))
            rng.shuffle(order)
            take = (n_female, per_group - n_female)[y]
            if len(cell) < take:
                raise ValueError(f"MTFL cell glasses={g}, male={y} has {len(cell)} faces, fewer than {take}")
            picked = cell[order[:take]]
            chosen.append(sorted(picked, key=lambda i: rows[i][0].replace("/", "_")))
    return np.concatenate(chosen).astype(np.int64)


# --------------------------------------------------------------------------- sources


def _find_folder(data_dir) -> Path | None:
    for rel in FOLDER_CANDIDATES:
        root = Path(data_dir) / rel
        if all((root / d).is_dir() for d in IMAGE_FOLDERS) and (root / "training.txt").is_file():
            return root
    return None


def _checked_text(data: bytes, name: str, where: str) -> str:
    actual = hashlib.sha256(data).hexdigest()
    if actual != ANNOTATION_SHA256[name]:
        raise ChecksumError(where, "sha256", ANNOTATION_SHA256[name], actual, "not used")
    return data.decode("utf-8")


def _zip_member(path, name: str) -> bytes:
    import zipfile

    with zipfile.ZipFile(path) as zf:
        for member in zf.namelist():
            if member.rsplit("/", 1)[-1] == name:
                return zf.read(member)
    raise DatasetNotFound(f"{path} has no member {name}")


def check_manifest(source: ImageSource, names) -> str:
    """Verify every annotated image against :data:`IMAGES_MANIFEST_SHA256`."""
    names = sorted(names)
    lines = [f"{n} {hashlib.sha256(b).hexdigest()}" for n, b in zip(names, source.read_many(names))]
    actual = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    if actual != IMAGES_MANIFEST_SHA256:
        raise ChecksumError(source.description, "sha256 of the image manifest", IMAGES_MANIFEST_SHA256, actual,
                            "some MTFL images differ from the original release; not used")
    return actual


def mtfl_source(data_dir) -> tuple[list, ImageSource, dict]:
    """(annotation rows, image source, provenance) from the offline repack zips, an extracted
    MTFL folder, or ``MTFL.zip`` (downloaded if needed)."""
    files = []
    folder = Path(data_dir) / "mtfl"
    zips_present = [locate(r, data_dir) is not None for r in IMAGE_ZIPS]
    texts = {}
    if all(zips_present) and all((folder / n).is_file() for n in ANNOTATION_SHA256):
        for name in ("testing.txt", "training.txt"):
            texts[name] = _checked_text((folder / name).read_bytes(), name, str(folder / name))
            files.append({"file": str(folder / name), "sha256": ANNOTATION_SHA256[name]})
        paths = []
        for res in IMAGE_ZIPS:
            path, record = fetch(res, data_dir)
            paths.append(path)
            files.append(record)
        source, verified = ZipImages(paths, IMAGE_FOLDERS), "pinned zip hashes"
    else:
        root = _find_folder(data_dir)
        if root is not None:
            for name in ("testing.txt", "training.txt"):
                texts[name] = _checked_text((root / name).read_bytes(), name, str(root / name))
            source = FolderImages(root, IMAGE_FOLDERS)
            files.append({"file": str(root), "kind": "extracted MTFL folder"})
        else:
            path, record = fetch(MTFL_ZIP, data_dir)
            for name in ("testing.txt", "training.txt"):
                texts[name] = _checked_text(_zip_member(path, name), name, f"{path}!{name}")
            source = ZipImages([path], IMAGE_FOLDERS)
            files.append(record)
        verified = None
    rows = parse_annotations(texts["testing.txt"]) + parse_annotations(texts["training.txt"])
    if verified is None:
        verified = "image manifest " + check_manifest(source, [r[0] for r in rows])
    return rows, source, {"files": files, "images_verified_by": verified}


def build_subset(data_dir, seed: int):
    """Rows, chosen indices, image source, info (with the stored subset list)."""
    rows, source, info = mtfl_source(data_dir)
    idx = fcmi_subset(rows, seed)
    listing = "".join(f"{rows[i][0]} glasses={int(rows[i][3] == 1)} male={int(rows[i][1] == 1)} "
                      f"smiling={int(rows[i][2] == 1)}\n" for i in idx)
    list_path = cache_root(data_dir) / "mtfl" / f"subset-seed{seed}.txt"
    try:
        write_atomically(list_path, lambda tmp: tmp.write_text(listing))
        info["subset_file"] = str(list_path)
    except OSError:
        pass
    info.update(seed=seed, subset_sha256=hashlib.sha256(listing.encode()).hexdigest(),
                subset_rule="FCMI MTFL.py: testing+training, seed, 346 female + 654 male per glasses group")
    return rows, idx, source, info


def _labelled(name, X, rows, idx, info) -> LabelledData:
    y = np.array([rows[i][1] == 1 for i in idx], dtype=np.int64)
    glasses = np.array([rows[i][3] == 1 for i in idx], dtype=np.int64)
    smile = np.array([rows[i][2] == 1 for i in idx], dtype=np.int64)
    return LabelledData(
        X=X, y=y, groups=np.stack([glasses, smile], axis=1),
        attributes=(Attribute("glasses", 2, ("without", "with")), Attribute("smile", 2, ("not smiling", "smiling"))),
        n_clusters=2, name=name, info=info,
    )


# --------------------------------------------------------------------------- datasets


class _MtflBase(Dataset):
    parameters = {"seed": FCMI_SEED}

    def validate(self):
        if self.params["seed"] < 0:
            raise ParameterError(f"{self.name}: seed must be a non-negative integer")


@register_dataset
class Mtfl(_MtflBase):
    """MTFL, FCMI's 2,000-face subset (module docstring), ResNet-50 features as FCMI:
    RGB, ``Resize(256)``, ``CenterCrop(224)``, ``Normalize(mean=(0.4951, 0.4064, 0.3579),
    std=(0.2868, 0.2594, 0.2545))``, frozen ImageNet ResNet-50 (``IMAGENET1K_V1``) average-pooled
    2048-d, then ``tanh((x − 0.34950)/0.38060)``. Clusters = gender (female 0 / male 1);
    attributes glasses (primary) then smile. ``seed`` = 9116 is FCMI's subset; ``backbone``
    is pluggable (not the papers' numbers unless the reference ResNet-50)."""

    name = "mtfl"
    description = "MTFL 2,000 faces (FCMI subset), frozen ImageNet ResNet-50 features; gender; glasses, smile"
    summary = "2,000 x 2048 in [-0.73,1]; 2 clusters (gender); glasses (2: 1,000 / 1,000), smile (2)"
    paper = "DFC (Li et al., CVPR 2020) subset rule of FCMI (Zeng et al., CVPR 2023)"
    paper_name = "mtfl"
    parameters = {"seed": FCMI_SEED, "backbone": "resnet50", "weights": "", "device": "auto"}

    def validate(self):
        super().validate()
        if self.params["backbone"] not in backbone_names():
            raise ParameterError(f"mtfl: backbone must be one of {', '.join(backbone_names())}")
        if self.params["backbone"] != "resnet50" or self.params["seed"] != FCMI_SEED:
            self.paper_name = ""  # not the papers' features or subset

    def load(self, data_dir) -> LabelledData:
        backbone = get_backbone(self.params["backbone"], self.params["weights"], data_dir)
        if not backbone.reference or self.params["seed"] != FCMI_SEED:
            self.paper_name = ""
        rows, idx, source, info = build_subset(data_dir, self.params["seed"])
        names = [rows[i][0] for i in idx]
        raw, info["features"] = image_features(self.name, names, source.read_many(names), backbone, MEAN, STD,
                                               data_dir, self.params["device"])
        info["reference_features"] = backbone.reference
        info["preprocessing"] = f"ResNet features, tanh((x-{MU})/{SIGMA})"
        return _labelled(self.name, tanh_standardise(raw, MU, SIGMA), rows, idx, info)


def grey_pixels(data: bytes, size: int) -> np.ndarray:
    """Grey ``size``×``size`` uint8 thumbnail: JPEG draft decoding at ≥ 2× the size, centre
    square crop, PIL bilinear resize."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.draft("L", (2 * size, 2 * size))
        img = im.convert("L")
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    img = img.crop((left, top, left + s, top + s)).resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


@register_dataset
class MtflPixels(_MtflBase):
    """Offline fallback for MTFL, under its own name so its numbers never stand beside the
    papers': the same FCMI 2,000-face subset, same clusters (gender) and attributes (glasses,
    smile), but the features are grey ``size``×``size`` thumbnails (JPEG draft decoding, centre
    square crop, PIL bilinear) scaled to [-1, 1] as float32 (n, 1, size, size), instead of
    ImageNet ResNet-50 features (whose weights cannot be downloaded offline)."""

    name = "mtfl-pixels"
    description = "MTFL FCMI subset as 32x32 grey pixels in [-1,1] (offline fallback, not the papers' features)"
    summary = "2,000 images 1x32x32 in [-1,1]; 2 clusters (gender); glasses (2: 1,000 / 1,000), smile (2)"
    paper = "FCMI's MTFL subset with a pixel fallback instead of ResNet-50 features"
    paper_name = ""
    parameters = {"seed": FCMI_SEED, "size": 32}

    def validate(self):
        super().validate()
        if not 8 <= self.params["size"] <= 224:
            raise ParameterError("mtfl-pixels: size must be an integer in 8..224")

    def load(self, data_dir) -> LabelledData:
        size = self.params["size"]
        rows, idx, source, info = build_subset(data_dir, self.params["seed"])
        names = [rows[i][0] for i in idx]
        key = digest("mtfl-pixels-1", size, info["subset_sha256"], info["images_verified_by"])
        cache = cache_root(data_dir) / "mtfl" / f"pixels-{size}-{key[:16]}.npz"

        def build():
            return {"u8": np.stack([grey_pixels(b, size) for b in source.read_many(names)])}

        u8 = cached_arrays(cache, build)["u8"]
        X = (u8.astype(np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
        info["preprocessing"] = f"grey, draft decode, centre square crop, bilinear {size}x{size}, (x/255-0.5)/0.5"
        info["cache_file"] = str(cache)
        return _labelled(self.name, X[:, None], rows, idx, info)
