"""The variants job: call the variant pipeline (server.optimize.build_variants), then publish."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from server.config import ServerConfig
from server.crud import jobs as job_crud
from server.crud import registry
from server.db import Database
from server.jobs import JobKind, JobRunner, Progress
from server.storage import ArtifactStore

KIND = "variants"


def _calibration(store: ArtifactStore, sha256: str | None) -> dict[str, np.ndarray] | None:
    if not sha256:
        return None
    with store.open(sha256) as handle, np.load(handle, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def start_variants_job(*, db: Database, runner: JobRunner, config: ServerConfig, name: str, version: int,
                       target: str) -> int:
    """Queue the job and its placeholder variants in one transaction; any replica's worker may run it."""
    with db.session() as session:
        job = job_crud.create_job(session, kind=KIND, params={"model": name, "version": version, "target": target})
        _, row = registry.get_version(session, name=name, version=version)
        registry.set_building(session, version_id=row.id, names=config.device_classes.get(target, []),
                              target=target, job_id=job.id)
        job_id = job.id
    runner.wake()
    return job_id


def variants_job(db: Database, store: ArtifactStore) -> JobKind:
    def build(job_id: int, params: dict[str, Any], progress: Progress) -> dict[str, Any]:
        from server.optimize import build_variants  # the variant pipeline (another package owner)

        target = str(params["target"])
        with db.session() as session:
            _, row = registry.get_version(session, name=str(params["model"]), version=int(params["version"]))
            version_id, sha256, fmt, calibration_sha = row.id, row.sha256, row.format, row.calibration_sha256
        out_dir = Path(tempfile.mkdtemp(dir=store.scratch_dir(), prefix=f"job{job_id}-"))
        try:
            reference = store.path(sha256)
            if reference is None:
                reference = out_dir / f"reference.{fmt}"
                with store.open(sha256) as src, reference.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
            results = build_variants(reference, fmt, target, out_dir, _calibration(store, calibration_sha), progress)
            published: list[dict[str, Any]] = []
            for result in results:
                entry: dict[str, Any] = {"name": result.name, "report": dict(result.report or {}),
                                         "format": result.format}
                if result.status == "ready" and result.path is not None:
                    entry["sha256"], entry["size"] = store.put_file(Path(result.path))
                    entry["status"] = "ready"
                else:
                    entry["status"] = "failed"
                published.append(entry)
            with db.session() as session:
                registry.publish_variants(session, version_id=version_id, target=target, job_id=job_id,
                                          results=published)
            return {"variants": [{"name": e["name"], "status": e["status"]} for e in published]}
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)

    def failed(job_id: int, _params: dict[str, Any], reason: str) -> None:
        with db.session() as session:
            registry.fail_building(session, job_id=job_id, reason=reason)

    return JobKind(build, failed)
