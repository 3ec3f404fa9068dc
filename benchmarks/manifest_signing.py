"""What the RFC 8785 form costs against the legacy json.dumps form, measured in the same run.

    .venv/bin/python benchmarks/manifest_signing.py [--manifests 2000] [--json]

A realistic manifest (a delta, trial and shadow terms, a 16-statistic drift profile of 20 bins each:
floats everywhere) is signed and verified ``--manifests`` times in each form. Signing is the server's
slow path of a check-in (a desired state changed: a rollout wave reaching N devices signs N manifests);
verification is once per new manifest on a device. ``sign_server`` is what the server does: the
release's drift profile is encoded once and spliced in (``agent.signing.canonical_object``). Prints µs per
manifest and the ratio to legacy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgefleet.agent.signing import (
    canonical_json,
    generate_private_key,
    legacy_json,
    sign_canonical,
    sign_document,
    valid_signers,
    verify_document,
)


def manifest(i: int) -> dict[str, Any]:
    bins = [{"edges": [k * 0.05 for k in range(21)], "counts": [0.05 + k * 1e-3 for k in range(20)]}
            for _ in range(16)]
    return {"device_id": f"cam-{i:05d}", "model": {"name": "detector", "version": 7, "sha256": "a" * 64,
                                                  "task": "detection", "labels": ["person", "car", "bike"]},
            "artifact": {"sha256": "a" * 64, "size": 4_718_592, "format": "tflite", "variant": "int8",
                         "url": f"http://updates.local:8080/v1/artifacts/{'a' * 64}"},
            "delta": {"from_sha256": "b" * 64, "sha256": "c" * 64, "size": 91_234, "algorithm": "bsdiff4",
                      "url": "http://updates.local:8080/v1/deltas/x/y"},
            "runtime": {"prefer": "auto", "delegate": "auto", "threads": 0},
            "trial": {"window_s": 30.0, "min_inferences": 20, "max_error_rate": 0.05, "max_latency_ratio": 2.0},
            "shadow": {"sample_fraction": 0.1, "cpu_budget_pct": 20.0, "min_samples": 50, "min_agreement": 0.9},
            "rollout_id": 12, "revert": False, "drift_profile": {"stats": bins},
            "issued_at": 1764600000.123 + i, "expires_at": 1765204800.123 + i, "generation": 40 + i}


def timed(fn: Any, items: list[Any]) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - start) / len(items) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--manifests", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    key = generate_private_key()
    public = key.public_key()
    docs = [manifest(i) for i in range(args.manifests)]
    legacy_sigs = [sign_document(key, d) for d in docs]
    jcs_sigs = [sign_canonical(key, d) for d in docs]
    keys = {jcs_sigs[0]["keyid"]: public}
    shared = {"drift_profile": canonical_json(docs[0]["drift_profile"])}
    figures = {
        "bytes": len(canonical_json(docs[0])),
        "encode_legacy_us": timed(legacy_json, docs),
        "encode_rfc8785_us": timed(canonical_json, docs),
        "sign_legacy_us": timed(lambda d: sign_document(key, d), docs),
        "sign_rfc8785_us": timed(lambda d: sign_canonical(key, d), docs),
        "sign_server_us": timed(lambda d: sign_canonical(key, d, shared), docs),
        "verify_legacy_us": timed(lambda p: verify_document(public, p[0], p[1]),
                                  list(zip(docs, legacy_sigs, strict=True))),
        "verify_rfc8785_us": timed(lambda p: valid_signers(keys, p[0], [(p[1]["keyid"], p[1]["sig"])]),
                                   list(zip(docs, jcs_sigs, strict=True))),
    }
    figures["sign_server_ratio"] = figures["sign_server_us"] / figures["sign_legacy_us"]
    for what in ("encode", "sign", "verify"):
        figures[f"{what}_ratio"] = figures[f"{what}_rfc8785_us"] / figures[f"{what}_legacy_us"]
    if args.json:
        print(json.dumps({k: round(v, 3) for k, v in figures.items()}))
        return 0
    print(f"manifest of {figures['bytes']} canonical bytes, {args.manifests} of them")
    for what in ("encode", "sign", "verify"):
        legacy, jcs = figures[f"{what}_legacy_us"], figures[f"{what}_rfc8785_us"]
        print(f"{what:7s} legacy {legacy:8.1f} µs   RFC 8785 {jcs:8.1f} µs   ratio {figures[f'{what}_ratio']:.2f}x")
    print(f"sign as the server does (drift profile encoded once): {figures['sign_server_us']:8.1f} µs   "
          f"ratio {figures['sign_server_ratio']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
