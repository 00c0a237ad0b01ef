"""Download, verification and cache rules of datasets/_download.py, without internet:
file:// URLs and a local HTTP server on 127.0.0.1."""
import hashlib
import http.server
import importlib
import io
import os
import threading
import zipfile

import numpy as np
import pytest

from bench.paths import import_project_package

dl = importlib.import_module(import_project_package("datasets").__name__ + "._download")

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRCLUSTERBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FAIRCLUSTERBENCH_OFFLINE", raising=False)


@pytest.fixture
def source(tmp_path):
    src = tmp_path / "remote" / "blob.bin"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    return src


def leftovers(folder):
    return [p.name for p in folder.rglob("*") if p.name.endswith((".part", ".tmp"))] if folder.exists() else []


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/good":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/truncated":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 3])
            self.wfile.flush()
            self.close_connection = True
        else:
            self.send_error(404)


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_good_file_url_downloads_verifies_and_is_reused(tmp_path, source):
    data = tmp_path / "data"
    res = dl.Resource("blob.bin", urls=(source.as_uri(),), sha256=SHA, size=len(PAYLOAD), subdir="x")
    path, record = dl.fetch(res, data, progress=False)
    assert path == data / "x" / "blob.bin" and path.read_bytes() == PAYLOAD
    assert record["sha256"] == SHA and record["bytes"] == len(PAYLOAD)
    source.unlink()  # the second call must not need the URL
    assert dl.fetch(res, data, progress=False)[0] == path
    assert leftovers(data) == []


def test_corrupted_download_names_file_and_hashes_and_is_not_kept(tmp_path, source):
    data = tmp_path / "data"
    wrong = "0" * 64
    res = dl.Resource("blob.bin", urls=(source.as_uri(),), sha256=wrong, subdir="x")
    with pytest.raises(dl.ChecksumError) as err:
        dl.fetch(res, data, progress=False)
    msg = str(err.value)
    assert "blob.bin" in msg and wrong in msg and SHA in msg
    assert not (data / "x" / "blob.bin").exists() and leftovers(data) == []


def test_corrupted_local_file_is_never_used_nor_deleted(tmp_path):
    data = tmp_path / "data"
    (data / "x").mkdir(parents=True)
    bad = data / "x" / "blob.bin"
    bad.write_bytes(PAYLOAD[:-1] + b"\0")
    res = dl.Resource("blob.bin", urls=("file:///nonexistent",), md5=hashlib.md5(PAYLOAD).hexdigest(), subdir="x")
    with pytest.raises(dl.ChecksumError, match="md5 mismatch"):
        dl.fetch(res, data, progress=False)
    assert bad.exists()


def test_interrupted_http_download_raises_and_leaves_nothing(tmp_path, server):
    data = tmp_path / "data"
    res = dl.Resource("blob.bin", urls=(server + "/truncated",), sha256=SHA, subdir="x")
    with pytest.raises(dl.DownloadError, match="interrupted"):
        dl.download(server + "/truncated", data / "x" / "blob.bin", res, progress=False)
    assert not (data / "x" / "blob.bin").exists() and leftovers(data) == []
    with pytest.raises(dl.DatasetNotFound, match="interrupted"):
        dl.fetch(res, data, progress=False)


def test_http_mirrors_are_tried_in_order(tmp_path, server):
    data = tmp_path / "data"
    res = dl.Resource("blob.bin", urls=(server + "/missing", server + "/good"), sha256=SHA, subdir="x")
    path, _ = dl.fetch(res, data, progress=False)
    assert path.read_bytes() == PAYLOAD


def test_missing_file_offline_says_where_to_get_and_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRCLUSTERBENCH_OFFLINE", "1")
    res = dl.Resource("blob.bin", urls=("https://example.org/blob.bin",), sha256=SHA, subdir="x")
    with pytest.raises(dl.DatasetNotFound) as err:
        dl.fetch(res, tmp_path / "data", progress=False)
    msg = str(err.value)
    assert "https://example.org/blob.bin" in msg and str(tmp_path / "data" / "x" / "blob.bin") in msg and SHA in msg


def test_read_only_data_dir_is_never_written(tmp_path, source, monkeypatch):
    monkeypatch.delenv("FAIRCLUSTERBENCH_CACHE")
    monkeypatch.setenv("FAIRCLUSTERBENCH_DATA", str(tmp_path / "home"))
    data = tmp_path / "ro"
    data.mkdir()
    data.chmod(0o555)
    try:
        assert not dl.is_writable(data)  # permission bits count, even for root
        assert dl.cache_root(data) == tmp_path / "home" / "cache"
        res = dl.Resource("blob.bin", urls=(source.as_uri(),), sha256=SHA, subdir="x")
        path, _ = dl.fetch(res, data, progress=False)
        assert path == tmp_path / "home" / "cache" / "downloads" / "x" / "blob.bin"
        assert list(data.iterdir()) == []
    finally:
        data.chmod(0o755)
    assert dl.is_writable(data) and dl.cache_root(data) == data / "cache"


def test_zip_verified_through_pinned_members(tmp_path):
    def make(name, content):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("inner/bank-full.csv", content)
        outer = tmp_path / name
        with zipfile.ZipFile(outer, "w") as zf:  # nested, like UCI's current archive
            zf.writestr("bank.zip", buf.getvalue())
        return outer

    res = dl.Resource("good.zip", members={"bank-full.csv": ("md5", hashlib.md5(b"a;b\n1;2\n").hexdigest())})
    record = dl.verify(make("good.zip", b"a;b\n1;2\n"), res)
    assert record["members"]["bank-full.csv"] == res.members["bank-full.csv"][1]
    with pytest.raises(dl.ChecksumError, match="bank-full.csv"):
        dl.verify(make("bad.zip", b"a;b\n1;3\n"), res)


def test_cached_arrays_builds_once_atomically(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"a": np.arange(5)}

    path = tmp_path / "c" / "x.npz"
    first = dl.cached_arrays(path, build)
    second = dl.cached_arrays(path, build)
    assert calls == [1] and np.array_equal(first["a"], second["a"]) and leftovers(tmp_path) == []
    path.write_bytes(b"garbage")  # an unreadable cache is rebuilt, not trusted
    assert np.array_equal(dl.cached_arrays(path, build)["a"], np.arange(5)) and len(calls) == 2


def test_an_atomic_write_is_all_or_nothing_and_on_disk_before_the_rename(tmp_path, monkeypatch):
    # one writer (bench.paths.write_atomically) serves records, checkpoints and dataset caches
    from bench import paths

    target = tmp_path / "c" / "x.bin"
    paths.write_atomically(target, lambda tmp: tmp.write_bytes(b"old"))

    def dies_half_way(tmp):
        tmp.write_bytes(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        paths.write_atomically(target, dies_half_way)
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []

    events, fsync, replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("rename"), replace(a, b))[1])
    dl.cached_arrays(tmp_path / "c" / "y.npz", lambda: {"a": np.arange(3)})
    assert events == ["fsync", "rename"] and leftovers(tmp_path) == []


def test_downloads_and_caches_get_the_permissions_the_umask_gives(tmp_path, source):
    # both are written to a temporary file (mkstemp: 0600) and renamed into place; a data
    # folder shared by a group must stay readable to it
    old = os.umask(0o002)
    try:
        got = dl.download(source.as_uri(), tmp_path / "data" / "blob.bin", progress=False)
        cache = tmp_path / "c" / "x.npz"
        dl.cached_arrays(cache, lambda: {"a": np.arange(5)})
    finally:
        os.umask(old)
    assert got.read_bytes() == PAYLOAD
    assert oct(got.stat().st_mode & 0o777) == oct(cache.stat().st_mode & 0o777) == oct(0o664)
