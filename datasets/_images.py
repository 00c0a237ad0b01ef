"""Read encoded images (JPEG bytes) from a folder, zip archives or a tar archive by their
relative path, without extracting anything to disk."""
from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path
from typing import Iterable, Sequence

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


def is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


class ImageSource:
    """Relative POSIX paths → bytes. ``anchors``: a path is normalised to start at the first
    component found in ``anchors`` (so ``MTFL/AFLW/x.jpg`` and ``AFLW/x.jpg`` are the same)."""

    def __init__(self, anchors: Sequence[str] = ()):
        self.anchors = tuple(anchors)

    def normalise(self, name: str) -> str | None:
        parts = name.replace("\\", "/").split("/")
        if not self.anchors:
            return "/".join(parts)
        for i, part in enumerate(parts):
            if part in self.anchors:
                return "/".join(parts[i:])
        return None

    def names(self) -> list[str]:  # pragma: no cover - interface
        raise NotImplementedError

    def read_many(self, names: Sequence[str]) -> list[bytes]:  # pragma: no cover - interface
        raise NotImplementedError

    description = ""


class FolderImages(ImageSource):
    def __init__(self, root, anchors: Sequence[str] = ()):
        super().__init__(anchors)
        self.root = Path(root)
        self.description = f"folder {self.root}"
        self._map: dict[str, Path] | None = None

    def _index(self) -> dict[str, Path]:
        if self._map is None:
            self._map = {}
            for p in sorted(self.root.rglob("*")):
                if p.is_file() and is_image(p.name):
                    rel = self.normalise(p.relative_to(self.root).as_posix())
                    if rel is not None:
                        self._map.setdefault(rel, p)
        return self._map

    def names(self) -> list[str]:
        return sorted(self._index())

    def read_many(self, names: Sequence[str]) -> list[bytes]:
        index = self._index()
        return [index[n].read_bytes() for n in names]


class ZipImages(ImageSource):
    def __init__(self, paths: Iterable, anchors: Sequence[str] = ()):
        super().__init__(anchors)
        self.paths = [Path(p) for p in paths]
        self.description = "zip " + ", ".join(str(p) for p in self.paths)
        self._map: dict[str, tuple[int, str]] = {}
        self._handles = [zipfile.ZipFile(p) for p in self.paths]
        for i, zf in enumerate(self._handles):
            for name in zf.namelist():
                if is_image(name):
                    rel = self.normalise(name)
                    if rel is not None:
                        self._map.setdefault(rel, (i, name))

    def names(self) -> list[str]:
        return sorted(self._map)

    def read_many(self, names: Sequence[str]) -> list[bytes]:
        return [self._handles[self._map[n][0]].read(self._map[n][1]) for n in names]

    def __del__(self):
        for h in getattr(self, "_handles", ()):
            h.close()


class TarImages(ImageSource):
    """A (compressed) tar; reading is one sequential pass over the archive."""

    def __init__(self, path, anchors: Sequence[str] = ()):
        super().__init__(anchors)
        self.path = Path(path)
        self.description = f"tar {self.path}"
        self._names: list[str] | None = None

    def names(self) -> list[str]:
        if self._names is None:
            with tarfile.open(self.path) as tf:
                found = (self.normalise(m.name) for m in tf if m.isfile() and is_image(m.name))
                self._names = sorted({n for n in found if n is not None})
        return self._names

    def read_many(self, names: Sequence[str]) -> list[bytes]:
        wanted, got = set(names), {}
        with tarfile.open(self.path) as tf:
            for member in tf:
                if member.isfile():
                    rel = self.normalise(member.name)
                    if rel in wanted and rel not in got:
                        got[rel] = tf.extractfile(member).read()
        missing = wanted - set(got)
        if missing:
            raise KeyError(f"{self.path}: {len(missing)} images missing, e.g. {sorted(missing)[:3]}")
        return [got[n] for n in names]
