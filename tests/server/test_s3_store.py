"""Artifacts on S3-compatible storage, against a real SeaweedFS: the store itself, garbage collection, and
the server serving uploads, resumable downloads (Range / If-Range) and deltas from it."""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import bsdiff4
import numpy as np
import pytest
import requests

from edgefleet.server.artifact_gc import collect
from edgefleet.server.db import Database, migrate
from edgefleet.server.db.models import Delta
from edgefleet.server.storage import ArtifactStore, LocalStore, S3Store, TooLarge
from tests.support.net import free_port, wait_until
from tests.support.s3 import SeaweedS3, weed_reason

pytestmark = pytest.mark.skipif(weed_reason() is not None, reason=str(weed_reason()))


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = SeaweedS3(tmp_path_factory.mktemp("s3")).start()
    saved = {key: os.environ.get(key) for key in server.env()}
    os.environ.update(server.env())
    try:
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


def s3_store(seaweed: SeaweedS3, tmp_path: Path) -> S3Store:
    # a prefix per test: the bucket is shared by the module's tests
    return S3Store(seaweed.bucket, prefix=f"{tmp_path.name}/", endpoint_url=seaweed.endpoint,
                   scratch=tmp_path / "scratch")


def test_s3_store_round_trip_range_reads_and_a_seekable_open(seaweed: SeaweedS3, tmp_path: Path) -> None:
    store = s3_store(seaweed, tmp_path)
    body = os.urandom(3 * 1024 * 1024 + 17)  # several read chunks
    sha, size = store.put_stream(io.BytesIO(body))
    assert (sha, size) == (hashlib.sha256(body).hexdigest(), len(body))
    assert store.exists(sha) and store.size(sha) == len(body) and store.path(sha) is None
    assert b"".join(store.read_range(sha, 0, size)) == body
    assert b"".join(store.read_range(sha, 1_000_000, 10)) == body[1_000_000:1_000_010]
    assert b"".join(store.read_range(sha, size - 5, 5)) == body[-5:]
    with store.open(sha) as handle:  # seekable: the botocore body it replaced is not
        handle.seek(size - 3)
        assert handle.read() == body[-3:]
    missing = "0" * 64
    assert not store.exists(missing) and not store.exists("not-a-sha")
    with pytest.raises(FileNotFoundError):
        store.size(missing)
    with pytest.raises(FileNotFoundError):
        store.open(missing)
    with pytest.raises(TooLarge):
        store.put_stream(io.BytesIO(b"x" * 2000), limit=1000)
    assert [(s, n) for s, _, n in store.list()] == [(sha, size)]
    store.delete(sha)
    assert not store.exists(sha) and list(store.list()) == []
    assert list((tmp_path / "scratch").iterdir()) == []  # no temporary file left behind


def test_npz_calibration_loads_from_s3(seaweed: SeaweedS3, tmp_path: Path) -> None:
    store = s3_store(seaweed, tmp_path)
    buffer = io.BytesIO()
    np.savez(buffer, image=np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    sha, _ = store.put_stream(io.BytesIO(buffer.getvalue()))
    with store.open(sha) as handle, np.load(handle, allow_pickle=False) as data:  # zip: needs seek()
        assert data["image"].shape == (2, 3, 4) and float(data["image"].sum()) == 276.0


def test_storing_again_renews_the_time_the_collector_goes_by(seaweed: SeaweedS3, tmp_path: Path) -> None:
    store = s3_store(seaweed, tmp_path)
    sha, _ = store.put_stream(io.BytesIO(b"same bytes"))
    first = next(t for s, t, _ in store.list() if s == sha)
    time.sleep(1.1)  # S3 times have one-second resolution
    assert store.put_stream(io.BytesIO(b"same bytes"))[0] == sha
    assert next(t for s, t, _ in store.list() if s == sha) > first


def test_an_unreachable_store_raises_rather_than_saying_not_found(tmp_path: Path) -> None:
    store = S3Store("edgefleet", endpoint_url=f"http://127.0.0.1:{free_port()}", scratch=tmp_path / "scratch")
    store.client.meta.config.retries = {"max_attempts": 1}
    with pytest.raises(Exception) as raised:
        store.exists("a" * 64)
    assert not isinstance(raised.value, FileNotFoundError)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_garbage_collection_deletes_only_old_unreferenced_artifacts(kind: str, seaweed: SeaweedS3,
                                                                    tmp_path: Path) -> None:
    store: ArtifactStore = LocalStore(tmp_path / "store") if kind == "local" else s3_store(seaweed, tmp_path)
    db = Database(f"sqlite:///{tmp_path / 'gc.db'}")
    migrate(db.engine)
    named, orphan = store.put_stream(io.BytesIO(b"a patch"))[0], store.put_stream(io.BytesIO(b"an orphan"))[0]
    with db.session() as session:
        session.add(Delta(from_sha256="1" * 64, to_sha256="2" * 64, sha256=named, size=7, created_at=time.time()))
    young = collect(db, store, grace_s=3600)  # both were just stored: inside the grace period
    assert (young.deleted, young.kept) == (0, 2) and store.exists(orphan)
    old = collect(db, store, grace_s=60, now=time.time() + 120)
    assert (old.deleted, old.freed_bytes, old.kept) == (1, len(b"an orphan"), 1)
    assert store.exists(named) and not store.exists(orphan)
    db.dispose()


def test_the_server_serves_uploads_ranges_and_deltas_from_s3(seaweed: SeaweedS3, tmp_path: Path) -> None:
    from edgefleet.agent.ota.download import Downloader
    from edgefleet.server.demo.models import make_classifier
    from tests.support.server import start_server

    storage = {**seaweed.storage_section(tmp_path / "scratch"), "prefix": "server/"}
    server = start_server(tmp_path, overrides={"storage": storage}, env=seaweed.env())
    try:
        sha = {}
        for version in (1, 2):
            path = make_classifier(tmp_path / f"v{version}.onnx", version)
            with path.open("rb") as handle:
                reply = requests.post(f"{server.url}/v1/models/cls/versions", headers=server.admin(),
                                      files={"file": (path.name, handle)}, timeout=60)
            assert reply.status_code == 201, reply.text
            sha[version] = reply.json()["sha256"]
        v1, v2 = (tmp_path / "v1.onnx").read_bytes(), (tmp_path / "v2.onnx").read_bytes()
        bare = S3Store(seaweed.bucket, prefix="server/", endpoint_url=seaweed.endpoint, scratch=tmp_path / "s")
        assert b"".join(bare.read_range(sha[2], 0, len(v2))) == v2  # the upload landed in the bucket

        url = f"{server.url}/v1/artifacts/{sha[2]}"
        whole = requests.get(url, headers=server.admin(), timeout=30)
        assert whole.status_code == 200 and whole.content == v2 and whole.headers["ETag"] == f'"{sha[2]}"'
        part = requests.get(url, headers={**server.admin(), "Range": "bytes=100-199", "If-Range": f'"{sha[2]}"'},
                            timeout=30)
        assert part.status_code == 206 and part.content == v2[100:200]
        assert part.headers["Content-Range"] == f"bytes 100-199/{len(v2)}"
        stale = requests.get(url, headers={**server.admin(), "Range": "bytes=100-", "If-Range": '"other"'},
                             timeout=30)
        assert stale.status_code == 200 and stale.content == v2  # the entity changed: the whole file
        past = requests.get(url, headers={**server.admin(), "Range": f"bytes={len(v2) + 5}-"}, timeout=30)
        assert past.status_code == 416

        # the agent's own downloader resumes a partial file: only the remainder crosses the wire
        partial = tmp_path / "dl" / f"{sha[2]}.part"
        partial.parent.mkdir()
        session = requests.Session()
        first = Downloader(session, headers=server.admin())
        partial.write_bytes(v2[:1000])
        partial.with_suffix(".etag").write_text(f'"{sha[2]}"')
        fetched = first.fetch(url, partial, len(v2))
        assert (fetched.resumed_from, fetched.transferred) == (1000, len(v2) - 1000)
        assert partial.read_bytes() == v2

        job = requests.post(f"{server.url}/v1/deltas/{sha[1]}/{sha[2]}", headers=server.admin(), timeout=30)
        assert job.status_code == 202, job.text
        wait_until(lambda: requests.get(f"{server.url}/v1/jobs/{job.json()['id']}", headers=server.admin(),
                                        timeout=10).json()["state"] == "succeeded", timeout=60, interval=0.2)
        delta = requests.get(f"{server.url}/v1/deltas/{sha[1]}/{sha[2]}", headers=server.admin(), timeout=60)
        assert delta.status_code == 200 and len(delta.content) < len(v2)
        assert bsdiff4.patch(v1, delta.content) == v2
        assert bare.exists(hashlib.sha256(delta.content).hexdigest())  # the patch is kept in the bucket too
    finally:
        server.stop()
