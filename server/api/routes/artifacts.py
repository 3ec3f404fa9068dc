"""Artifact and delta downloads: ETag, Accept-Ranges, Range → 206, If-Range; streamed.

A device token downloads only what its last manifest offered it (server/offers.py); the admin token any
stored artifact. A delta is served only once the background job has made it: this route never diffs.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Response
from fastapi.responses import StreamingResponse

from edgefleet.server.api.deps import SHA256, AdminDep, Credentials, SessionDep, StateDep, bearer_token, is_admin
from edgefleet.server.api.errors import problems
from edgefleet.server.api.public.service import JobPublic
from edgefleet.server.api.routes.devices import etag_matches
from edgefleet.server.api.routing import ContractRoute
from edgefleet.server.crud import devices as device_crud
from edgefleet.server.crud import jobs as job_crud
from edgefleet.server.crud.deltas import get_delta
from edgefleet.server.db.models import Device
from edgefleet.server.deltas import PAIR_KIND, delta_fits, delta_limits
from edgefleet.server.offers import artifact_refusal, delta_refusal, refusal
from edgefleet.server.storage import ArtifactStore

router = APIRouter(tags=["artifacts"], route_class=ContractRoute)
BINARY = {"schema": {"type": "string", "format": "binary"}}
DOWNLOAD_HEADERS = {"ETag": {"description": "the sha256 in quotes", "schema": {"type": "string"}},
                    "Accept-Ranges": {"schema": {"type": "string", "enum": ["bytes"]}}}


def download_responses(what: str, s403: str, s404: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {"description": what, "content": {"application/octet-stream": BINARY}, "headers": DOWNLOAD_HEADERS},
        206: {"description": "the byte range asked for (Range; If-Range with the current ETag)",
              "content": {"application/octet-stream": BINARY},
              "headers": {**DOWNLOAD_HEADERS, "Content-Range": {"schema": {"type": "string"}}}},
        304: {"description": "unchanged: If-None-Match names the current ETag"},
        **problems(401, 403, 404, 416, 422, s403=s403, s404=s404)}

INLINE_BYTES = 1 << 20  # whole artifacts up to this size are answered from memory, larger ones streamed
RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
ShaPath = Annotated[str, Path(pattern=SHA256)]


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) for one ``bytes=`` range; None when it cannot be satisfied."""
    match = RANGE_RE.match(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:  # suffix: the last N bytes
        length = int(last)
        if length == 0:
            return None
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        return None
    return start, end


def serve(store: ArtifactStore, sha256: str, etag_value: str, range_header: str | None,
          if_range: str | None, if_none_match: str | None = None) -> Response:
    """The artifact through this server, its ETag the sha256 (so ``If-Range`` works the same on every
    store), a range read from the store itself (a ranged GET on S3): docs/deploying.md says why not a
    redirect to a presigned URL."""
    try:
        size = store.size(sha256)
    except FileNotFoundError:
        raise HTTPException(404, f"artifact {sha256} is not stored") from None
    etag = f'"{etag_value}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "public, max-age=31536000, immutable"}
    if etag_matches(if_none_match, etag):  # RFC 9110 13.2.2: If-None-Match is judged before Range
        return Response(status_code=304, headers=headers)
    use_range = range_header is not None and (if_range is None or if_range.strip() == etag)
    if use_range:
        assert range_header is not None
        if not range_header.strip().startswith("bytes=") or "," in range_header:
            use_range = False  # unsupported unit or several ranges: the whole file
        else:
            span = parse_range(range_header, size)
            if span is None:
                return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
            start, end = span
            headers.update({"Content-Range": f"bytes {start}-{end}/{size}", "Content-Length": str(end - start + 1)})
            return StreamingResponse(store.read_range(sha256, start, end - start + 1), status_code=206,
                                     media_type="application/octet-stream", headers=headers)
    headers["Content-Length"] = str(size)
    if size <= INLINE_BYTES:  # read here, in the endpoint's thread: no thread hop per chunk of a stream
        return Response(b"".join(store.read_range(sha256, 0, size)), media_type="application/octet-stream",
                        headers=headers)
    return StreamingResponse(store.read_range(sha256, 0, size), media_type="application/octet-stream",
                             headers=headers)


def downloader(state: StateDep, session: SessionDep, credentials: Credentials) -> Device | None:
    """The device whose token this is, or None for the admin token; 401 for anything else."""
    token = bearer_token(credentials)
    if is_admin(state, token):
        return None
    device = device_crud.any_device_for_token(session, token=token)
    if device is None:
        raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})
    return device


Downloader = Annotated[Device | None, Depends(downloader)]


@router.get("/v1/artifacts/{sha256}", response_class=Response, operation_id="artifacts.download",
            responses=download_responses("the artifact", "not offered to this device by its manifest (also for "
                                         "an unknown sha256)", "no such artifact is stored (admin token)"))
def artifact(sha256: ShaPath, state: StateDep, credentials: Credentials,
             range: Annotated[str | None, Header()] = None, if_range: Annotated[str | None, Header()] = None,
             if_none_match: Annotated[str | None, Header()] = None) -> Response:
    """A stored artifact by sha256: a device token gets only what its manifest offers."""
    # the wave's hot download: its own transaction, closed here, not a request-scoped session whose connection
    # stays checked out until the event loop tears it down (a wave of downloads then held the whole pool)
    with state.db.session() as session:
        who = downloader(state, session, credentials)
        if who is not None:
            refused = refusal(state.manifests, session, who, lambda offered: artifact_refusal(who.id, offered, sha256))
            if refused is not None:
                raise HTTPException(403, refused)
    return serve(state.store, sha256, sha256, range, if_range, if_none_match)


@router.get("/v1/deltas/{from_sha256}/{to_sha256}", response_class=Response, operation_id="deltas.download",
            responses=download_responses("the patch", "not offered to this device by its manifest",
                                         "no such delta has been made: download the full artifact"))
def delta(from_sha256: ShaPath, to_sha256: ShaPath, state: StateDep, session: SessionDep, who: Downloader,
          algorithm: Annotated[Literal["bsdiff4", "tensor"], Query()] = "bsdiff4",
          range: Annotated[str | None, Header()] = None, if_range: Annotated[str | None, Header()] = None,
          if_none_match: Annotated[str | None, Header()] = None) -> Response:
    """A patch from→to that a background job made: bsdiff4 (default) or a tensor delta (docs/ota.md)."""
    if from_sha256 == to_sha256:
        raise HTTPException(422, "from and to are the same artifact")
    if who is not None and (refused := refusal(state.manifests, session, who,
                                               lambda offered: delta_refusal(who.id, offered, from_sha256, to_sha256))
                            ) is not None:
        raise HTTPException(403, refused)
    row = get_delta(session, from_sha256=from_sha256, to_sha256=to_sha256, algorithm=algorithm)
    if row is None or not state.store.exists(row.sha256):
        raise HTTPException(404, f"no {algorithm} delta between these artifacts has been made; "
                                 "download the full artifact")
    return serve(state.store, row.sha256, row.sha256, range, if_range, if_none_match)


@router.post("/v1/deltas/{from_sha256}/{to_sha256}", status_code=202, dependencies=[AdminDep],
             operation_id="deltas.create", response_model=JobPublic, responses=problems(
                 401, 403, 404, 422, s404="an artifact is not stored", s422="the pair cannot be diffed"))
def make_delta(from_sha256: ShaPath, to_sha256: ShaPath, state: StateDep,
               algorithm: Annotated[Literal["bsdiff4", "tensor"], Query()] = "bsdiff4") -> dict[str, Any]:
    """Make the patch from→to in a background job (rollouts make the ones their devices need)."""
    if from_sha256 == to_sha256:
        raise HTTPException(422, "from and to are the same artifact")
    for sha in (from_sha256, to_sha256):
        if not state.store.exists(sha):
            raise HTTPException(404, f"artifact {sha} is not stored")
    limits = delta_limits(state.config)
    why = delta_fits(algorithm, max(state.store.size(from_sha256), state.store.size(to_sha256)), limits)
    if why is not None:
        raise HTTPException(422, f"no delta for this pair: {why}")

    job_id = state.jobs.submit(kind=PAIR_KIND, params={"from": from_sha256, "to": to_sha256,
                                                       "algorithm": algorithm})
    with state.db.session() as session:
        return job_crud.job_public(job_crud.get_job(session, job_id=job_id))
