"""Office-31 (Amazon + Webcam) with frozen ResNet-50 features, as FCMI builds it
(``fcmi.md`` §1.3, §5; DFC's two domains, ``dfc.md`` §4.1)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench import Attribute, Dataset, LabelledData, ParameterError, register_dataset

from ._download import DatasetNotFound, Resource, fetch, locate
from ._features import backbone_names, get_backbone, image_features, tanh_standardise
from ._images import FolderImages, ImageSource, TarImages

OFFICE_PAGE = "https://faculty.cc.gatech.edu/~judy/domainadapt/"
# domain_adaptation_images.tar.gz (extracts to amazon/, dslr/, webcam/); SHA-1 as pinned by a
# public download script that checks it. It is served through Google Drive only (a
# confirmation page), so it is not downloaded automatically.
OFFICE_TAR = Resource("domain_adaptation_images.tar.gz", sha1="7aa25a86f3880b6e79283227816f9d4d8506d636",
                      subdir="office31", aliases=("domain_adaptation_images.tar.gz",), page=OFFICE_PAGE)
FOLDER_CANDIDATES = ("office31", "office31/domain_adaptation_images", "Office31", "Office", "office",
                     "OFFICE31", "domain_adaptation_images", ".")
DOMAINS = ("amazon", "webcam")
EXPECTED = {"amazon": 2817, "webcam": 795}
N_CLASSES = 31
# FCMI's Office normalisation ("newnorm") and feature post-transform constants.
MEAN, STD = (0.7076, 0.7034, 0.7021), (0.3249, 0.3261, 0.3275)
MU, SIGMA = 0.3970963954925537, 0.43060600757598877


def office_source(data_dir) -> tuple[ImageSource, dict]:
    """The extracted ``<domain>/images/<class>/*.jpg`` tree, or the tar.gz (SHA-1 checked)."""
    anchors = ("amazon", "webcam", "dslr")
    for rel in FOLDER_CANDIDATES:
        root = Path(data_dir) / rel
        if all((root / d / "images").is_dir() for d in DOMAINS):
            return FolderImages(root, anchors), {"file": str(root.resolve()), "kind": "image folder"}
    if locate(OFFICE_TAR, data_dir) is not None:
        path, record = fetch(OFFICE_TAR, data_dir)
        return TarImages(path, anchors), record
    raise DatasetNotFound(
        f"Office-31 not found under {data_dir}: download domain_adaptation_images.tar.gz from {OFFICE_PAGE} "
        f"(Google Drive; sha1 {OFFICE_TAR.sha1}) and put it at {Path(data_dir) / 'office31'}/, or extract it there "
        "so that office31/amazon/images/<class>/*.jpg exists")


def imagefolder_listing(names, domain: str) -> tuple[list[str], np.ndarray, list[str]]:
    """torchvision ``ImageFolder(<domain>/images)`` order: classes sorted, files sorted within
    each class; returns (paths, labels, classes)."""
    prefix = f"{domain}/images/"
    rows = sorted((n[len(prefix):].split("/", 1)[0], n) for n in names if n.startswith(prefix) and n.count("/") >= 3)
    classes = sorted({c for c, _ in rows})
    index = {c: i for i, c in enumerate(classes)}
    return [n for _, n in rows], np.array([index[c] for c, _ in rows], dtype=np.int64), classes


@register_dataset
class Office31(Dataset):
    """Office-31, Amazon (2,817 images, group 0) followed by Webcam (795, group 1) = 3,612;
    31 object classes = 31 clusters; sensitive attribute = domain (DSLR unused), as FCMI.

    Features (FCMI ``featurelize``): each image RGB, ``Resize(256)`` (PIL bilinear),
    ``CenterCrop(224)``, ``ToTensor``, ``Normalize(mean=(0.7076, 0.7034, 0.7021),
    std=(0.3249, 0.3261, 0.3275))`` (FCMI's Office statistics, not ImageNet's), frozen
    ImageNet ResNet-50 (``IMAGENET1K_V1``, eval mode) average-pooled 2048-d, then
    ``tanh((x − 0.39710)/0.43061)``. Classes and file order follow ``ImageFolder``. Raw features
    are cached keyed by backbone, weights hash and image hashes.

    ``backbone`` is pluggable (e.g. ``tiny-cnn`` for tests); with anything but the reference
    ResNet-50 weights the numbers are not the papers' (``paper_name`` is then empty).
    ``check_counts`` (default on) requires the exact 2,817 / 795 images in 31 classes."""

    name = "office31"
    description = "Office-31 Amazon+Webcam, frozen ImageNet ResNet-50 features (2048-d, tanh); group = domain"
    summary = "3,612 x 2048 in [-0.73,1]; 31 clusters; domain (2: amazon 2,817 / webcam 795)"
    paper = "DFC (Li et al., CVPR 2020) as built by FCMI (Zeng et al., CVPR 2023)"
    paper_name = "office31"
    parameters = {"backbone": "resnet50", "weights": "", "device": "auto", "check_counts": True}

    def validate(self):
        if self.params["backbone"] not in backbone_names():
            raise ParameterError(f"office31: backbone must be one of {', '.join(backbone_names())}")
        if self.params["backbone"] != "resnet50":
            self.paper_name = ""  # not the papers' features

    def load(self, data_dir) -> LabelledData:
        source, record = office_source(data_dir)
        all_names = source.names()
        paths, labels, groups = [], [], []
        classes_seen = None
        for g, domain in enumerate(DOMAINS):
            p, y, classes = imagefolder_listing(all_names, domain)
            if self.params["check_counts"] and (len(p) != EXPECTED[domain] or len(classes) != N_CLASSES):
                raise DatasetNotFound(
                    f"Office-31 {domain} in {source.description} has {len(p)} images in {len(classes)} classes; "
                    f"expected {EXPECTED[domain]} in {N_CLASSES} (incomplete copy?)")
            if classes_seen is not None and classes != classes_seen:
                raise ValueError(f"Office-31: the class folders of amazon and {domain} differ")
            classes_seen = classes
            paths += p
            labels.append(y)
            groups.append(np.full(len(p), g, dtype=np.int64))
        backbone = get_backbone(self.params["backbone"], self.params["weights"], data_dir)
        if not backbone.reference:
            self.paper_name = ""
        raw, feat_record = image_features(self.name, paths, source.read_many(paths), backbone, MEAN, STD,
                                          data_dir, self.params["device"])
        X = tanh_standardise(raw, MU, SIGMA)
        info = {"files": [record], "features": feat_record, "classes": classes_seen,
                "reference_features": backbone.reference,
                "preprocessing": f"ResNet features, tanh((x-{MU})/{SIGMA})"}
        return LabelledData(
            X=X, y=np.concatenate(labels), groups=np.concatenate(groups),
            attributes=(Attribute("domain", 2, DOMAINS),), n_clusters=len(classes_seen), name=self.name, info=info,
        )
