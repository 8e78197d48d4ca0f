"""File access for the CMRBench release: a local folder, or a verified download cache.

Files are addressed by their path relative to the root of the upstream repository
(https://github.com/collagelab/CMR at ``UPSTREAM_COMMIT``), e.g.
``data/processed/cleaned-mllm-eval.json``. A ``DataSource`` either reads them from a local copy
with that layout or downloads them from the raw-file URL of that commit into a cache folder,
checking each file against its known SHA-256 before it enters the cache.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tqdm.auto import tqdm

from cmrkit.data.records import EXPERIENCES

logger = logging.getLogger("cmrkit.data")

UPSTREAM_COMMIT = "712e77b31d254918d38b5c126ba7d793b841d20b"
UPSTREAM_BASE_URL = f"https://raw.githubusercontent.com/collagelab/CMR/{UPSTREAM_COMMIT}/"

REGISTRY_RELPATH = "data/model_indices/e1_e2_e3_e4.json"
DOMAINS_RELPATH = "data/processed/hugging-bench-domains.json"

FILE_SPLITS: tuple[str, ...] = ("train", "val", "eval")
"""Split names used in the upstream file names."""

SHA256: dict[str, str] = {
    "data/model_indices/e1_e2_e3_e4.json": (
        "bd6145abce21f62ebe0050f01b20122f02c3c315998ca04d70e4e31858be3e4e"
    ),
    "data/processed/cleaned-apibench-hf-eval.json": (
        "54cabaa2698b9f7aa98b0457b2bc16bd22c6d7e8d83885c5885e7fe3857a10b3"
    ),
    "data/processed/cleaned-apibench-hf-val.json": (
        "662ec2e9b1776ee16876f9e40550a47a31951908be0038a352edc984712ef1b6"
    ),
    "data/processed/cleaned-hugging-bench-1-eval.json": (
        "65c7ea130edd46f59505c8210ae086bf786c7cf04aae951b1a84ce3ffd295498"
    ),
    "data/processed/cleaned-hugging-bench-1-val.json": (
        "ded5405c99032a852806e56775a8e68ed5722fdfb048a29f1cbac3644825d027"
    ),
    "data/processed/cleaned-hugging-bench-2-eval.json": (
        "c2a4ee5377b73cd8f6a88c2a9ee746994b4de5e59139b568d145970ade5e9f15"
    ),
    "data/processed/cleaned-hugging-bench-2-val.json": (
        "2ac90b32b24cbf4c40bfc8d757cd7cd9aa54982f9046ec6b5795991568ff4096"
    ),
    "data/processed/cleaned-mllm-eval.json": (
        "bee73f2895bb2a5f42ed889397fbc1589d8dbdc3f7b6f22472fb7e8151e7aae1"
    ),
    "data/processed/cleaned-mllm-val.json": (
        "ce51a6969f85096e988087cf4bf0c15b2a0a3fa30528752b3c4e149f3cca4303"
    ),
    "data/processed/hugging-bench-domains.json": (
        "8343ef18c215bcb2282151d466bca3d004bbbf4382a92c71fb6c6ca275fdda2a"
    ),
}
"""SHA-256 of the release files at ``UPSTREAM_COMMIT``, by relative path.

The upstream training splits (``cleaned-<experience>-train.json``) have no entry because the
hashes were taken from a copy without them. Those files are downloaded unchecked and their hash is
logged.
"""

DATA_DIR_HINT = (
    "To use a local copy of the CMRBench release (a checkout of https://github.com/collagelab/CMR "
    "or a folder with the same data/ layout), set the environment variable CMRKIT_DATA_DIR, pass "
    "--data-dir on the command line, or set data.dir in the config."
)

_CHUNK_BYTES = 1 << 16

# Failures worth another attempt. Disk errors while writing the cache are not among them.
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError)


class DataNotFoundError(FileNotFoundError):
    """A release file that is neither in the local folder nor in the cache, nor downloadable.

    The message names the file and explains how to point cmrkit at a local copy.
    """


class ChecksumError(ValueError):
    """A file whose SHA-256 differs from the expected value."""


def split_relpath(experience: str, split: str) -> str:
    """Return the relative path of one split file, e.g. ``data/processed/cleaned-mllm-val.json``.

    Args:
        experience: One of ``EXPERIENCES``.
        split: ``"train"``, ``"val"`` or ``"eval"`` (the upstream file-name splits).
    """
    if experience not in EXPERIENCES:
        raise ValueError(f"invalid experience {experience!r}: expected one of {', '.join(EXPERIENCES)}")
    if split not in FILE_SPLITS:
        raise ValueError(f"invalid split {split!r}: expected one of {', '.join(FILE_SPLITS)}")
    return f"data/processed/cleaned-{experience}-{split}.json"


def sha256_file(path: Path) -> str:
    """Return the hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_cache_dir(base_url: str = UPSTREAM_BASE_URL) -> Path:
    """Return the default download cache for a base URL.

    The root is ``$CMRKIT_CACHE_DIR`` or ``~/.cache/cmrkit``. Files of the upstream commit go
    under ``cmrbench/<commit>``, and files of any other base URL under
    ``cmrbench/url-<first 16 hex digits of the URL's SHA-256>`` so that mirrors never mix.
    """
    root = os.environ.get("CMRKIT_CACHE_DIR") or "~/.cache/cmrkit"
    if base_url == UPSTREAM_BASE_URL:
        name = UPSTREAM_COMMIT
    else:
        name = "url-" + hashlib.sha256(base_url.encode("utf-8")).hexdigest()[:16]
    return Path(root).expanduser() / "cmrbench" / name


class DataSource:
    """Resolve CMRBench release files to local paths.

    Args:
        data_dir: Root of a local copy of the release. ``None`` falls back to the environment
            variable ``CMRKIT_DATA_DIR``. When that is unset too, files come from the cache.
            With a local folder, nothing is downloaded.
        cache_dir: Download cache. ``default_cache_dir`` gives the default.
        base_url: URL that relative paths are appended to. It must end with "/".
        download: Whether a file missing from the cache may be downloaded.
        verify: Whether a downloaded file must match its expected SHA-256.
        timeout: Socket timeout of one download attempt, in seconds.
        sha256: Expected hashes by relative path, by default ``SHA256``. Files without an
            entry are accepted unchecked and their hash is logged.
        retries: Download attempts per file before giving up.
        retry_delay: Seconds to wait after the first failed attempt. It doubles after each one.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        cache_dir: str | Path | None = None,
        base_url: str = UPSTREAM_BASE_URL,
        download: bool = True,
        verify: bool = True,
        timeout: float = 30.0,
        sha256: Mapping[str, str] | None = None,
        retries: int = 3,
        retry_delay: float = 1.0,
    ) -> None:
        if data_dir is None:
            data_dir = os.environ.get("CMRKIT_DATA_DIR") or None
        if not base_url.endswith("/"):
            raise ValueError(f"invalid base_url {base_url!r}: it must end with '/'")
        if retries < 1:
            raise ValueError(f"invalid retries {retries}: at least one attempt is needed")

        self.data_dir: Path | None = Path(data_dir).expanduser() if data_dir is not None else None
        if self.data_dir is not None and not self.data_dir.is_dir():
            raise DataNotFoundError(
                f"the CMRBench data folder {self.data_dir} does not exist or is not a folder. "
                + DATA_DIR_HINT
            )
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir(base_url)
        self.base_url = base_url
        self.download = download
        self.verify = verify
        self.timeout = timeout
        self.sha256: dict[str, str] = dict(SHA256 if sha256 is None else sha256)
        self.retries = retries
        self.retry_delay = retry_delay

    def __repr__(self) -> str:
        if self.data_dir is not None:
            return f"DataSource(data_dir={str(self.data_dir)!r})"
        return f"DataSource(cache_dir={str(self.cache_dir)!r}, base_url={self.base_url!r})"

    @property
    def is_local(self) -> bool:
        """Whether files are read from a local folder rather than the download cache."""
        return self.data_dir is not None

    def path(self, relpath: str) -> Path:
        """Return the local path of a release file, downloading it into the cache if needed.

        Raises:
            DataNotFoundError: The file is missing from the local folder, or it is not cached
                and cannot be downloaded (download disabled, HTTP 404, or every retry failed).
            ChecksumError: The downloaded file does not match its expected SHA-256, and nothing
                is left in the cache.
        """
        _check_relpath(relpath)
        if self.data_dir is not None:
            local = self.data_dir / relpath
            if not local.is_file():
                raise DataNotFoundError(
                    f"{relpath} not found: {local} does not exist in the local data folder "
                    f"{self.data_dir}. " + DATA_DIR_HINT
                )
            return local

        cached = self.cache_dir / relpath
        if cached.is_file():
            logger.debug("using cached %s", cached)
            return cached
        if not self.download:
            raise DataNotFoundError(
                f"{relpath} is not in the cache {self.cache_dir} and downloading is disabled. "
                + DATA_DIR_HINT
            )
        self._download(relpath, cached)
        return cached

    def verify_local(self) -> list[str]:
        """Check every present file that has an expected hash, without downloading anything.

        Looks in the local folder, or in the cache when there is none. Returns the relative
        paths that were checked. Absent files are skipped.

        Raises:
            ChecksumError: One or more files differ from their expected SHA-256 (all are listed).
        """
        root = self.data_dir if self.data_dir is not None else self.cache_dir
        checked: list[str] = []
        mismatches: list[str] = []
        for relpath, expected in sorted(self.sha256.items()):
            local = root / relpath
            if not local.is_file():
                continue
            actual = sha256_file(local)
            checked.append(relpath)
            if actual != expected:
                mismatches.append(f"{local}: expected {expected}, got {actual}")
        if mismatches:
            raise ChecksumError("SHA-256 mismatch for " + "; ".join(mismatches))
        logger.info("verified the SHA-256 of %d files under %s", len(checked), root)
        return checked

    def _download(self, relpath: str, destination: Path) -> None:
        url = self.base_url + relpath
        destination.parent.mkdir(parents=True, exist_ok=True)
        last_error: Exception | None = None
        for attempt in range(1, self.retries + 1):
            try:
                self._fetch_verified(relpath, url, destination)
                return
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    raise DataNotFoundError(
                        f"{relpath} not found at {url} (HTTP 404). " + DATA_DIR_HINT
                    ) from exc
                last_error = exc
            except _NETWORK_ERRORS as exc:
                last_error = exc

            if attempt < self.retries:
                delay = self.retry_delay * 2 ** (attempt - 1)
                logger.warning(
                    "download of %s failed (attempt %d of %d): %s. Retrying in %.1f s",
                    url,
                    attempt,
                    self.retries,
                    last_error,
                    delay,
                )
                time.sleep(delay)
            else:
                logger.warning(
                    "download of %s failed (attempt %d of %d): %s. Giving up",
                    url,
                    attempt,
                    self.retries,
                    last_error,
                )

        raise DataNotFoundError(
            f"{relpath} is not cached in {self.cache_dir} and downloading it from {url} failed "
            f"{self.retries} times (last error: {last_error}). " + DATA_DIR_HINT
        ) from last_error

    def _fetch_verified(self, relpath: str, url: str, destination: Path) -> None:
        """Download one file to a ``.part`` file and rename it into place once its hash checks."""
        handle, temp_name = tempfile.mkstemp(
            dir=destination.parent, prefix=destination.name + ".", suffix=".part"
        )
        temp_path = Path(temp_name)
        try:
            with os.fdopen(handle, "wb") as sink:
                actual = self._stream_to(url, sink, label=relpath)
            self._check_hash(relpath, url, actual)
            os.replace(temp_path, destination)
        finally:
            temp_path.unlink(missing_ok=True)
        logger.info("downloaded %s to %s", url, destination)

    def _stream_to(self, url: str, sink: BinaryIO, *, label: str) -> str:
        """Copy a URL's body into a binary file object and return the hex SHA-256 of the bytes."""
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=self.timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, desc=label, leave=False, disable=None) as bar:
                for chunk in iter(lambda: response.read(_CHUNK_BYTES), b""):
                    digest.update(chunk)
                    sink.write(chunk)
                    bar.update(len(chunk))
        return digest.hexdigest()

    def _check_hash(self, relpath: str, url: str, actual: str) -> None:
        expected = self.sha256.get(relpath)
        if expected is None:
            logger.info("%s has no known SHA-256, so it was accepted unchecked (SHA-256 %s)", relpath, actual)
            return
        if not self.verify:
            logger.info("SHA-256 check of %s skipped (verify=False)", relpath)
            return
        if actual != expected:
            raise ChecksumError(
                f"SHA-256 mismatch for {relpath} downloaded from {url}: expected {expected}, "
                f"got {actual}. The file was discarded."
            )


def _check_relpath(relpath: str) -> None:
    parts = PurePosixPath(relpath).parts
    if not relpath or relpath.startswith("/") or "\\" in relpath or ".." in parts:
        raise ValueError(
            f"invalid relative path {relpath!r}: expected a forward-slash path inside the release"
        )
