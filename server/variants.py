"""The variants job: call the variant pipeline (server.optimize.build_variants), then publish."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from server.config import ServerConfig
from server.crud import registry
from server.db import Database
from server.jobs import JobRunner, Progress
from server.storage import ArtifactStore


def _calibration(store: ArtifactStore, sha256: str | None) -> dict[str, np.ndarray] | None:
    if not sha256:
        return None
    with store.open(sha256) as handle, np.load(handle, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def start_variants_job(*, db: Database, store: ArtifactStore, runner: JobRunner, config: ServerConfig,
                       name: str, version: int, target: str) -> int:
    with db.session() as session:
        _, row = registry.get_version(session, name=name, version=version)
        version_id, sha256, fmt, calibration_sha = row.id, row.sha256, row.format, row.calibration_sha256

    def build(job_id: int, progress: Progress) -> dict[str, Any]:
        from server.optimize import build_variants  # the variant pipeline (another package owner)

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
                else:  # refused by validation or not applicable; "failed" is kept for a job that broke
                    entry["status"] = "rejected"
                published.append(entry)
            with db.session() as session:
                registry.publish_variants(session, version_id=version_id, target=target, job_id=job_id,
                                          results=published)
            return {"variants": [{"name": e["name"], "status": e["status"]} for e in published]}
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)

    def failed(job_id: int, reason: str) -> None:
        with db.session() as session:
            registry.fail_building(session, job_id=job_id, reason=reason)

    job_id = runner.create(kind="variants", params={"model": name, "version": version, "target": target})
    with db.session() as session:
        registry.set_building(session, version_id=version_id, names=config.device_classes.get(target, []),
                              target=target, job_id=job_id)
    runner.start(job_id, build, failed)
    return job_id
