"""The model registry: download over loopback HTTP, sha256 check, cache reuse, offline errors, local paths."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from curate import registry
from curate.errors import ModelError

PAYLOAD = b"<opencv_storage>not really a cascade</opencv_storage>\n" * 100


@pytest.fixture
def server():
    """A loopback file server that counts its requests."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            if self.path != "/model.xml":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()


def artifact(url: str, sha: str | None = None) -> registry.Artifact:
    return registry.Artifact(
        name="test-model",
        url=url,
        sha256=sha or hashlib.sha256(PAYLOAD).hexdigest(),
        filename="model.xml",
        licence="MIT",
        description="a test model",
    )


@pytest.fixture
def online(monkeypatch, tmp_path):
    monkeypatch.setenv("CURATE_CACHE", str(tmp_path / "cache"))
    for name in ("CURATE_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "cache"


def test_download_verifies_and_caches(server, online):
    url, hits = server
    path = registry.resolve(artifact(f"{url}/model.xml"))
    assert path == online / "test-model" / "model.xml" and path.read_bytes() == PAYLOAD
    assert registry.resolve(artifact(f"{url}/model.xml")) == path
    assert hits == ["/model.xml"]  # the second call used the cache


def test_checksum_mismatch_and_http_errors_leave_nothing(server, online):
    url, _ = server
    with pytest.raises(ModelError, match="expected 0000"):
        registry.resolve(artifact(f"{url}/model.xml", sha="0" * 64))
    with pytest.raises(ModelError, match="HTTP 404"):
        registry.resolve(artifact(f"{url}/missing.xml"))
    assert not any((online / "test-model").iterdir())  # no partial or unverified file


def test_offline_names_the_place_to_put_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("CURATE_CACHE", str(tmp_path))
    monkeypatch.setenv("CURATE_OFFLINE", "1")
    with pytest.raises(ModelError) as caught:
        registry.resolve("lbpcascade_animeface")
    message = str(caught.value)
    assert str(tmp_path / "lbpcascade_animeface" / "lbpcascade_animeface.xml") in message
    assert registry.CASCADE.url in message


def test_cached_pinned_file_and_local_paths(fixtures, monkeypatch, tmp_path):
    monkeypatch.setenv("CURATE_CACHE", str(tmp_path))
    monkeypatch.setenv("CURATE_OFFLINE", "1")
    cached = registry.cached_path(registry.CASCADE)
    cached.parent.mkdir(parents=True)
    cached.write_bytes((fixtures / "models" / "lbpcascade_animeface.xml").read_bytes())  # the pinned file
    assert registry.resolve("lbpcascade_animeface") == cached
    cached.write_bytes(b"tampered")
    with pytest.raises(ModelError, match="does not match the pinned sha256"):
        registry.resolve("lbpcascade_animeface")
    own = tmp_path / "mine.xml"
    own.write_bytes(b"x")
    assert registry.resolve("lbpcascade_animeface", own) == own  # a user's own file is used as it is
    with pytest.raises(ModelError, match="not found"):
        registry.resolve("lbpcascade_animeface", tmp_path / "absent.xml")
    with pytest.raises(ModelError, match="unknown model"):
        registry.resolve("nope")
