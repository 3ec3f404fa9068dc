"""Artifact and delta downloads: ETag, Accept-Ranges, Range → 206, If-Range; streamed."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from server.api.deps import SHA256, StateDep, require_device_or_admin
from server.crud import NotFound
from server.deltas import ensure_delta
from server.storage import ArtifactStore

router = APIRouter(tags=["artifacts"], dependencies=[Depends(require_device_or_admin)])

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
          if_range: str | None) -> Response:
    """The artifact through this server, its ETag the sha256 (so ``If-Range`` works the same on every
    store), a range read from the store itself (a ranged GET on S3): docs/deploying.md says why not a
    redirect to a presigned URL."""
    try:
        size = store.size(sha256)
    except FileNotFoundError:
        raise HTTPException(404, f"artifact {sha256} is not stored") from None
    etag = f'"{etag_value}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "public, max-age=31536000, immutable"}
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
    return StreamingResponse(store.read_range(sha256, 0, size), media_type="application/octet-stream",
                             headers=headers)


@router.get("/v1/artifacts/{sha256}", response_class=Response, responses={
    200: {"content": {"application/octet-stream": {}}}, 206: {"description": "partial content"},
    404: {"description": "unknown artifact"}, 416: {"description": "range not satisfiable"}})
def artifact(sha256: ShaPath, state: StateDep, range: Annotated[str | None, Header()] = None,
             if_range: Annotated[str | None, Header()] = None) -> Response:
    return serve(state.store, sha256, sha256, range, if_range)


@router.get("/v1/deltas/{from_sha256}/{to_sha256}", response_class=Response, responses={
    200: {"content": {"application/octet-stream": {}}}, 206: {"description": "partial content"},
    404: {"description": "unknown artifact"}})
async def delta(from_sha256: ShaPath, to_sha256: ShaPath, state: StateDep,
                range: Annotated[str | None, Header()] = None,
                if_range: Annotated[str | None, Header()] = None) -> Response:
    if from_sha256 == to_sha256:
        raise HTTPException(422, "from and to are the same artifact")
    try:
        patch_sha, _ = await run_in_threadpool(ensure_delta, state.db, state.store, from_sha256=from_sha256,
                                               to_sha256=to_sha256)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    return serve(state.store, patch_sha, patch_sha, range, if_range)
