"""The variants job: the variant pipeline (server.optimize.build_variants) in a bounded child process
(server/sandbox.py: ``sandbox.variants_timeout_s``, ``sandbox.memory_mb``), then publish.

The pipeline loads and runs the uploaded model many times; a model that loops or allocates without bound
costs only its child, never a job thread that the server's shutdown would have to wait for. The job is a
row any replica's workers may claim (server/jobs.py); its params name the version and the target.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgefleet.server import sandbox
from edgefleet.server.config import ServerConfig
from edgefleet.server.crud import jobs as job_crud
from edgefleet.server.crud import registry
from edgefleet.server.db import Database
from edgefleet.server.jobs import JobKind, JobRunner, Progress
from edgefleet.server.storage import ArtifactStore

KIND = "variants"


def _local(store: ArtifactStore, sha256: str, out: Path) -> Path:
    """A local path of a stored file: the store's own, or a copy in ``out``."""
    found = store.path(sha256)
    if found is not None:
        return found
    with store.open(sha256) as src, out.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    return out


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


def variants_job(db: Database, store: ArtifactStore, config: ServerConfig) -> JobKind:
    limits = sandbox.Limits(timeout_s=config.sandbox.variants_timeout_s, cpu_s=config.sandbox.variants_timeout_s,
                            memory_mb=config.sandbox.memory_mb)

    def build(job_id: int, params: dict[str, Any], progress: Progress) -> dict[str, Any]:
        target = str(params["target"])
        with db.session() as session:
            _, row = registry.get_version(session, name=str(params["model"]), version=int(params["version"]))
            version_id, sha256, fmt, calibration_sha = row.id, row.sha256, row.format, row.calibration_sha256
        out_dir = Path(tempfile.mkdtemp(dir=store.scratch_dir(), prefix=f"job{job_id}-")).resolve()
        try:
            reference = _local(store, sha256, out_dir / f"reference.{fmt}")
            calibration = _local(store, calibration_sha, out_dir / "calibration.npz") if calibration_sha else None
            try:
                done = sandbox.run("variants", {"reference": str(reference), "format": fmt, "target": target,
                                                "out_dir": str(out_dir),
                                                "calibration": str(calibration) if calibration else None},
                                   limits, progress)
            except sandbox.SandboxError as exc:
                from edgefleet.server.optimize import OptimizeError

                raise OptimizeError(str(exc) if exc.kind == "refused" else f"variant pipeline {exc}") from exc
            published: list[dict[str, Any]] = []
            for result in done["variants"]:
                entry: dict[str, Any] = {"name": result["name"], "report": dict(result.get("report") or {}),
                                         "format": result["format"]}
                path = result.get("path")
                made = Path(path).resolve() if path else None
                if result["status"] == "ready" and made is not None and made.is_file() and out_dir in made.parents:
                    entry["sha256"], entry["size"] = store.put_file(made)
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

    def failed(job_id: int, _params: dict[str, Any], reason: str) -> None:
        with db.session() as session:
            registry.fail_building(session, job_id=job_id, reason=reason)

    return JobKind(build, failed)
