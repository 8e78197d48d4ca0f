"""DataSource: local folders, and downloads from a loopback HTTP server into the cache."""

from __future__ import annotations

import functools
import hashlib
import http.server
import logging
import shutil
import socket
import threading
from pathlib import Path

import pytest
from data_fixtures import MIRROR, requires_mirror

from cmrkit.data.source import (
    REGISTRY_RELPATH,
    SHA256,
    UPSTREAM_BASE_URL,
    UPSTREAM_COMMIT,
    ChecksumError,
    DataNotFoundError,
    DataSource,
    default_cache_dir,
    split_relpath,
)

VAL = "data/processed/cleaned-mllm-val.json"
EVAL = "data/processed/cleaned-mllm-eval.json"
TRAIN = "data/processed/cleaned-mllm-train.json"


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    """Static file handler that records request paths and can fail the first requests."""

    def do_GET(self) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        if self.server.failures_left > 0:  # type: ignore[attr-defined]
            self.server.failures_left -= 1  # type: ignore[attr-defined]
            self.send_error(503, "try again")
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def served(tmp_path):
    """Folder with small release-shaped files; VAL and EVAL are cut from the mirror when present."""
    root = tmp_path / "served"
    for relpath in (VAL, EVAL):
        target = root / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        if (MIRROR / relpath).is_file():
            lines = (MIRROR / relpath).read_text(encoding="utf-8").splitlines(keepends=True)
            target.write_text("".join(lines[:5]), encoding="utf-8")
        else:
            target.write_text('{"model_name": "org/a"}\n', encoding="utf-8")
    (root / TRAIN).write_text('{"model_name": "org/train"}\n', encoding="utf-8")
    return root


@pytest.fixture()
def server(served):
    handler = functools.partial(CountingHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.requests = []  # type: ignore[attr-defined]
    httpd.failures_left = 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def hashes_of(root: Path, *relpaths: str) -> dict[str, str]:
    return {rel: hashlib.sha256((root / rel).read_bytes()).hexdigest() for rel in relpaths}


def remote(server, tmp_path, **kwargs) -> DataSource:
    options = {
        "cache_dir": tmp_path / "cache",
        "base_url": f"http://127.0.0.1:{server.server_address[1]}/",
        "retry_delay": 0.0,
        "timeout": 5.0,
    } | kwargs
    return DataSource(**options)


def cached_files(cache: Path) -> list[Path]:
    return [path for path in cache.rglob("*") if path.is_file()] if cache.exists() else []


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_split_relpath():
    assert split_relpath("mllm", "val") == VAL
    assert split_relpath("hugging-bench-2", "train") == ("data/processed/cleaned-hugging-bench-2-train.json")


@pytest.mark.parametrize(("experience", "split"), [("gorilla", "val"), ("mllm", "test")])
def test_split_relpath_rejects_unknown(experience, split):
    with pytest.raises(ValueError, match="invalid"):
        split_relpath(experience, split)


def test_upstream_constants():
    assert UPSTREAM_BASE_URL == (f"https://raw.githubusercontent.com/collagelab/CMR/{UPSTREAM_COMMIT}/")
    assert len(SHA256) == 10
    assert REGISTRY_RELPATH in SHA256


@requires_mirror
def test_hashes_match_mirror_sums():
    lines = (MIRROR / "SHA256SUMS").read_text(encoding="utf-8").split("\n")
    sums = {path: digest for digest, path in (line.split() for line in lines if line.strip())}
    assert sums == SHA256


@requires_mirror
def test_mirror_verifies():
    assert len(DataSource(MIRROR).verify_local()) == 10


def test_local_dir_read(served):
    source = DataSource(served)
    assert source.path(VAL) == served / VAL
    assert source.is_local


def test_local_dir_from_environment(served, monkeypatch):
    monkeypatch.setenv("CMRKIT_DATA_DIR", str(served))
    assert DataSource().path(VAL) == served / VAL


def test_local_missing_file_names_path(served, server):
    source = DataSource(served, base_url=f"http://127.0.0.1:{server.server_address[1]}/")

    with pytest.raises(DataNotFoundError) as info:
        source.path(REGISTRY_RELPATH)

    assert str(served / REGISTRY_RELPATH) in str(info.value)
    assert "CMRKIT_DATA_DIR" in str(info.value)
    assert server.requests == []


def test_missing_local_dir_raises(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        DataSource(tmp_path / "nowhere")


@pytest.mark.parametrize("relpath", ["", "/etc/passwd", "../secret.json", "data\\x.json"])
def test_invalid_relpath_rejected(served, relpath):
    with pytest.raises(ValueError, match="invalid relative path"):
        DataSource(served).path(relpath)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("CMRKIT_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "cmrbench" / UPSTREAM_COMMIT
    assert default_cache_dir("http://127.0.0.1:1/").parent == tmp_path / "cmrbench"
    assert default_cache_dir("http://127.0.0.1:1/") != default_cache_dir()


def test_download_verified(server, served, tmp_path):
    source = remote(server, tmp_path, sha256=hashes_of(served, VAL, EVAL))

    path = source.path(VAL)

    assert path == tmp_path / "cache" / VAL
    assert path.read_bytes() == (served / VAL).read_bytes()
    assert server.requests == ["/" + VAL]
    assert cached_files(tmp_path / "cache") == [path]


def test_download_without_known_hash_logged(server, served, tmp_path, caplog):
    source = remote(server, tmp_path, sha256={})

    with caplog.at_level(logging.INFO, logger="cmrkit.data"):
        path = source.path(TRAIN)

    assert path.read_bytes() == (served / TRAIN).read_bytes()
    assert hashes_of(served, TRAIN)[TRAIN] in caplog.text


def test_cached_file_reused(server, served, tmp_path):
    hashes = hashes_of(served, VAL)
    remote(server, tmp_path, sha256=hashes).path(VAL)

    again = remote(server, tmp_path, sha256=hashes, download=False).path(VAL)

    assert again.is_file()
    assert len(server.requests) == 1


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    source = remote(server, tmp_path, sha256={VAL: "0" * 64})

    with pytest.raises(ChecksumError) as info:
        source.path(VAL)

    assert VAL in str(info.value)
    assert "0" * 64 in str(info.value)
    assert cached_files(tmp_path / "cache") == []


def test_checksum_skipped_without_verify(server, tmp_path):
    source = remote(server, tmp_path, sha256={VAL: "0" * 64}, verify=False)
    assert source.path(VAL).is_file()


def test_download_retries_server_errors(server, served, tmp_path, caplog):
    server.failures_left = 2
    source = remote(server, tmp_path, sha256=hashes_of(served, VAL))

    with caplog.at_level(logging.WARNING, logger="cmrkit.data"):
        path = source.path(VAL)

    assert path.is_file()
    assert len(server.requests) == 3
    assert "attempt 1 of 3" in caplog.text
    assert "attempt 2 of 3" in caplog.text


def test_download_gives_up_after_retries(server, tmp_path):
    server.failures_left = 5
    source = remote(server, tmp_path, retries=3)

    with pytest.raises(DataNotFoundError, match="failed 3 times"):
        source.path(VAL)

    assert len(server.requests) == 3
    assert cached_files(tmp_path / "cache") == []


def test_missing_upstream_file_not_retried(server, tmp_path):
    source = remote(server, tmp_path)

    with pytest.raises(DataNotFoundError, match="HTTP 404"):
        source.path("data/processed/cleaned-nothing-val.json")

    assert len(server.requests) == 1


def test_offline_without_cache_explains_fix(tmp_path, caplog):
    source = DataSource(
        cache_dir=tmp_path / "cache",
        base_url=f"http://127.0.0.1:{closed_port()}/",
        retry_delay=0.0,
        timeout=2.0,
    )

    with caplog.at_level(logging.WARNING, logger="cmrkit.data"):
        with pytest.raises(DataNotFoundError) as info:
            source.path(VAL)

    message = str(info.value)
    assert "CMRKIT_DATA_DIR" in message
    assert "--data-dir" in message
    assert "data.dir" in message
    assert "Giving up" in caplog.text
    assert cached_files(tmp_path / "cache") == []


def test_download_disabled_without_cache(tmp_path):
    source = DataSource(cache_dir=tmp_path / "cache", download=False)
    with pytest.raises(DataNotFoundError, match="downloading is disabled"):
        source.path(VAL)


def test_verify_local_reports_mismatch(served):
    hashes = hashes_of(served, VAL) | {EVAL: "f" * 64, "data/absent.json": "e" * 64}
    source = DataSource(served, sha256=hashes)

    with pytest.raises(ChecksumError) as info:
        source.verify_local()

    assert EVAL in str(info.value)
    assert VAL not in str(info.value)


def test_verify_local_checks_present_files(served):
    source = DataSource(served, sha256=hashes_of(served, VAL) | {"data/absent.json": "e" * 64})
    assert source.verify_local() == [VAL]


@requires_mirror
def test_cache_layout_matches_mirror(tmp_path):
    cache = tmp_path / "cache"
    (cache / VAL).parent.mkdir(parents=True)
    shutil.copy(MIRROR / VAL, cache / VAL)

    source = DataSource(cache_dir=cache, download=False)

    assert source.path(VAL) == cache / VAL
    assert source.verify_local() == [VAL]
