"""Fuzzed model files: valid ONNX and TFLite containers with random bytes flipped (seeded).

Each variant goes to the runtime layer's loader in a child process (what the agent does after the
test-load) and to the OTA test-load itself (``python -m edgefleet.agent.ota.probe_load``); a few that the server
accepts are rolled out to a running agent, which must refuse them and keep serving the model it has.
"""

from __future__ import annotations

import collections
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.models import make_onnx_image_classifier, make_tflite_float

REPO = Path(__file__).resolve().parents[2]
VARIANTS = int(os.environ.get("RELIABILITY_FUZZ_VARIANTS", "100"))
SEED = int(os.environ.get("RELIABILITY_FUZZ_SEED", "9"))


def fuzz(base: Path, out: Path, count: int, seed: int) -> list[Path]:
    """``count`` copies of ``base`` with random bytes replaced by random values: 1-3 (most of the file
    still parses) for even variants, 1-16 for odd ones."""
    rng = random.Random(seed)
    data = base.read_bytes()
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 3 if i % 2 == 0 else 16)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        if bytes(mutated) == data:
            mutated[rng.randrange(len(mutated))] ^= 0xFF
        path = out / f"{i:03d}{base.suffix}"
        path.write_bytes(bytes(mutated))
        paths.append(path)
    return paths


def load_all(directory: Path) -> dict[str, dict[str, str | None]]:
    """Run the loader child over ``directory``; a file whose load kills the child is recorded as "crash"."""
    results: dict[str, dict[str, str | None]] = {}
    env = dict(os.environ, PYTHONPATH=str(REPO))
    remaining = sorted(p.name for p in directory.iterdir())
    while remaining:
        scratch = directory.parent / f"{directory.name}-rest"
        scratch.mkdir(exist_ok=True)
        for old in scratch.iterdir():
            old.unlink()
        for name in remaining:
            os.link(directory / name, scratch / name)
        done = subprocess.run([sys.executable, "-m", "tests.reliability.fuzz_child", str(scratch)], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=300)
        current = None
        for line in done.stdout.splitlines():
            if not line.startswith("FUZZ "):
                continue  # a runtime's own chatter
            doc = json.loads(line[5:])
            if doc["outcome"] == "start":
                current = doc["file"]
            else:
                results[doc["file"]] = {"outcome": doc["outcome"], "error": doc["error"]}
                current = None
        if current is not None:  # the child died on this file
            results[current] = {"outcome": "crash", "error": f"exit {done.returncode}: {done.stderr[-300:]}"}
        remaining = [n for n in remaining if n not in results]
        if done.returncode == 0 and remaining:
            raise AssertionError(f"child skipped {remaining}")
    return results


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    base = tmp_path_factory.mktemp("fuzz")
    onnx = make_onnx_image_classifier(base / "base.onnx", seed=3)
    tflite = make_tflite_float(base / "base.tflite")
    return {"onnx": fuzz(onnx, base / "onnx", VARIANTS, SEED), "tflite": fuzz(tflite, base / "tflite", VARIANTS, SEED)}


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_runtime_loader_refuses_fuzzed_models_with_its_own_errors(fuzzed: dict[str, list[Path]], fmt: str) -> None:
    results = load_all(fuzzed[fmt][0].parent)
    counts = collections.Counter(r["outcome"] for r in results.values())
    print(f"{fmt}: {len(results)} fuzzed variants (seed {SEED}): {dict(counts)}")
    assert len(results) == VARIANTS
    leaked = {name: r["error"] for name, r in results.items() if r["outcome"] == "other"}
    assert leaked == {}, leaked  # third-party errors are translated at the boundary
    for r in results.values():
        if r["outcome"] == "refused":
            assert r["error"] and "\n" not in r["error"]
    crashes = [name for name, r in results.items() if r["outcome"] == "crash"]
    # a crash is contained by the test-load: probe_load must die or fail on exactly those files
    for name in crashes:
        probe = subprocess.run([sys.executable, "-m", "edgefleet.agent.ota.probe_load",
                                str(fuzzed[fmt][0].parent / name),
                                "--format", fmt], cwd=REPO, capture_output=True, text=True, timeout=120,
                               env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert probe.returncode != 0, name


def test_regression_tflite_resize_failure_is_a_model_error(tmp_path: Path) -> None:
    """Finding: variant 47 of seed 9 (a dynamic input whose re-allocation fails in XNNPACK) leaked a raw
    RuntimeError from TFLiteModel.infer, outside the project's error hierarchy."""
    from edgefleet.agent.errors import ModelError
    from edgefleet.agent.runtime import example_feeds, load_model

    path = fuzz(make_tflite_float(tmp_path / "base.tflite"), tmp_path / "v", 48, 9)[47]
    model = load_model(path, prefer="litert", autotune=False, threads=1)
    with pytest.raises(ModelError, match=r"047\.tflite: inference failed: .*failed to prepare"):
        model.infer(example_feeds(model.inputs))
