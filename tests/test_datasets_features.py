"""ResNet-50 (torchvision-compatible), FCMI's image pipeline, feature cache, and Office-31 on
a tiny fixture with the real folder layout and a small backbone."""
import importlib
import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from bench import registry
from bench.paths import import_project_package

pkg = import_project_package("datasets").__name__
feats = importlib.import_module(pkg + "._features")
images = importlib.import_module(pkg + "._images")
dl = importlib.import_module(pkg + "._download")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRCLUSTERBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FAIRCLUSTERBENCH_OFFLINE", "1")
    monkeypatch.delenv("FAIRCLUSTERBENCH_RESNET50_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def test_resnet50_has_torchvision_layout():
    with torch.device("meta"):
        model = feats.ResNet50()
    state = model.state_dict()
    assert len(state) == 320 and sum(p.numel() for p in model.parameters()) == 25_557_032
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["conv1.weight"] == (64, 3, 7, 7)
    assert shapes["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert shapes["layer2.0.conv2.weight"] == (128, 128, 3, 3)  # stride on the 3x3 (v1.5)
    assert shapes["layer4.2.bn3.running_var"] == (2048,) and shapes["fc.weight"] == (1000, 2048)
    assert sum(k.startswith("layer3.") and k.endswith(".conv1.weight") for k in state) == 6


def test_weights_file_loading_and_checks(tmp_path):
    torch.manual_seed(1)
    model = feats.ResNet50()
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}  # old-file style
    custom = tmp_path / "my-resnet.pth"
    torch.save(state, custom)
    backbone = feats.get_backbone("resnet50", str(custom))
    assert not backbone.reference and backbone.weights_sha256 == dl.file_hash(custom)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        expected = model.eval().features(x)
        out = backbone.model.features(x)
    assert out.shape == (1, 2048) and (out >= 0).all() and torch.equal(out, expected)
    assert int(backbone.model.bn1.num_batches_tracked) == 0
    # a file carrying the reference name but other bytes is refused
    fake = tmp_path / "cache" / "weights" / "resnet50-0676ba61.pth"
    fake.parent.mkdir(parents=True)
    fake.write_bytes(custom.read_bytes())
    with pytest.raises(dl.ChecksumError, match="0676ba61b6795bbe"):
        feats.get_backbone("resnet50")
    fake.unlink()
    torch.save({"conv1.weight": torch.zeros(1)}, custom)
    with pytest.raises(ValueError, match="not a ResNet-50"):
        feats.get_backbone("resnet50", str(custom))


def test_missing_resnet_weights_offline_says_what_to_do(tmp_path):
    with pytest.raises(dl.DatasetNotFound) as err:
        feats.get_backbone("resnet50", "", tmp_path)
    msg = str(err.value)
    assert "cannot be downloaded" in msg and "resnet50-0676ba61.pth" in msg
    assert str(tmp_path / "cache" / "weights") in msg and "mtfl-pixels" in msg


def _jpeg(color, size):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG", quality=100)
    return buf.getvalue()


def test_fcmi_pipeline_geometry_and_normalisation():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    im = Image.new("RGB", (300, 200), (0, 0, 0))
    im.paste((255, 255, 255), (150, 0, 300, 200))  # right half white
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    x = feats.fcmi_image_tensor(buf.getvalue(), mean, std)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    # Resize(256): 200x300 -> 256x384; CenterCrop(224) keeps columns 80..303 -> boundary at 112
    assert np.allclose(x[:, :, :100], ((0 - np.array(mean)) / np.array(std))[:, None, None], atol=1e-6)
    assert np.allclose(x[:, :, 125:], ((1 - np.array(mean)) / np.array(std))[:, None, None], atol=1e-6)
    grey = feats.fcmi_image_tensor(_jpeg((128, 128, 128), (50, 40)), mean, std)
    assert np.allclose(grey, ((128 / 255 - np.array(mean)) / np.array(std))[:, None, None], atol=0.03)


CLASSES = ("back_pack", "bike", "calculator")


def make_office(root, per_class=(3, 2)):
    """<domain>/images/<class>/frame_XXXX.jpg, colours depending on class and domain."""
    rng = np.random.default_rng(0)
    for d, domain in enumerate(("amazon", "webcam", "dslr")):
        for c, cls in enumerate(CLASSES):
            folder = root / domain / "images" / cls
            folder.mkdir(parents=True)
            for i in range(per_class[min(d, 1)]):
                pixels = rng.integers(0, 40, (48, 64, 3)) + np.array([80 * c, 60 * d, 100], dtype=np.int64)
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"frame_{i + 1:04d}.jpg")


def test_office31_tiny_fixture_with_small_backbone(tmp_path):
    data = tmp_path / "data"
    make_office(data / "office31")
    ds = registry.datasets.get("office31")(backbone="tiny-cnn", check_counts=False, device="cpu")
    d = ds.load(data)
    assert d.X.shape == (3 * 3 + 3 * 2, 16) and d.X.dtype == np.float32
    assert d.X.min() >= -1 and d.X.max() <= 1 and np.isfinite(d.X).all()
    assert d.groups[:, 0].tolist() == [0] * 9 + [1] * 6  # amazon first, dslr unused
    assert d.y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 0, 1, 1, 2, 2]  # ImageFolder order
    assert d.n_clusters == 3 and d.info["classes"] == list(CLASSES)
    assert ds.paper_name == "" and d.info["reference_features"] is False
    assert d.info["features"]["cached"] is False
    # the same images through the pipeline by hand give the same raw features
    backbone = feats.get_backbone("tiny-cnn")
    first = (data / "office31/amazon/images/back_pack/frame_0001.jpg").read_bytes()
    with torch.no_grad():
        raw = backbone.model.features(torch.from_numpy(feats.fcmi_image_tensor(first, (0.7076, 0.7034, 0.7021),
                                                                                (0.3249, 0.3261, 0.3275))[None]))
    np.testing.assert_allclose(d.X[0], np.tanh((raw[0].numpy() - 0.3970963954925537) / 0.43060600757598877),
                               atol=1e-5)
    # class/domain signal survives: different classes give different features
    assert np.abs(d.X[0] - d.X[3]).max() > 1e-3
    again = registry.datasets.get("office31")(backbone="tiny-cnn", check_counts=False).load(data)
    assert again.info["features"]["cached"] is True and np.array_equal(again.X, d.X)
    # editing one image changes the cache key
    Image.new("RGB", (64, 48), (1, 2, 3)).save(data / "office31/webcam/images/bike/frame_0001.jpg")
    changed = registry.datasets.get("office31")(backbone="tiny-cnn", check_counts=False).load(data)
    assert changed.info["features"]["cached"] is False and not np.array_equal(changed.X, d.X)


def test_office31_checks_counts_and_reports_missing(tmp_path):
    data = tmp_path / "data"
    with pytest.raises(dl.DatasetNotFound, match="domain_adaptation_images.tar.gz"):
        registry.datasets.get("office31")(backbone="tiny-cnn").load(data)
    make_office(data / "office31")
    with pytest.raises(dl.DatasetNotFound, match="expected 2817 in 31"):
        registry.datasets.get("office31")(backbone="tiny-cnn").load(data)


def test_tar_image_source(tmp_path):
    make_office(tmp_path / "src", per_class=(1, 1))
    tar = tmp_path / "domain_adaptation_images.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(tmp_path / "src" / "amazon", arcname="amazon")
        tf.add(tmp_path / "src" / "webcam", arcname="webcam")
    source = images.TarImages(tar, ("amazon", "webcam", "dslr"))
    names = source.names()
    assert names[0] == "amazon/images/back_pack/frame_0001.jpg" and len(names) == 6
    folder = images.FolderImages(tmp_path / "src", ("amazon", "webcam", "dslr"))
    assert source.read_many(names[::-1]) == folder.read_many(names[::-1])
