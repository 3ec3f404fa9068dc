"""The seams the daemon and the OTA client use, with the project's own ModelHost, ONNX Runtime
backend and pre-processor: the tap feeds drift and shadow exactly as docs/quality.md describes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgefleet.agent.daemon.host import ModelHost
from edgefleet.agent.daemon.preprocess import Preprocessor
from edgefleet.agent.quality import DriftMonitor, ShadowRunner, build_reference_profile
from edgefleet.agent.runtime.base import LoadOptions
from edgefleet.agent.runtime.onnx import load
from edgefleet.agent.wire import ModelMeta, PreprocessSpec, ShadowSpec
from tests.quality.support import SIZE, scenes
from tests.support.models import make_onnx_image_classifier


def test_host_loop_feeds_drift_and_shadow_gate(tmp_path: Path) -> None:
    options = LoadOptions(threads=1, providers=("CPUExecutionProvider",))
    serving = load(make_onnx_image_classifier(tmp_path / "v1.onnx", size=SIZE, seed=0), options)
    rival = load(make_onnx_image_classifier(tmp_path / "v2.onnx", size=SIZE, seed=1), options)
    twin = load(make_onnx_image_classifier(tmp_path / "v2b.onnx", size=SIZE, seed=0), options)
    meta = ModelMeta(name="cls", version=1, task="classification", preprocess=PreprocessSpec(scale=1 / 255))
    host = ModelHost()
    host.swap(serving, meta)
    pre = Preprocessor(serving.inputs, meta.preprocess)

    reference = list(scenes(seed=1, count=200))
    profile = build_reference_profile(reference, [serving.infer(pre(f)) for f in reference], meta.task,
                                      model=meta.name, version=meta.version)
    drift = DriftMonitor(profile, min_samples=100)
    spec = ShadowSpec(sample_fraction=1.0, cpu_budget_pct=100, min_samples=100, min_agreement=0.9)
    gates = [ShadowRunner(rival.infer, spec, meta.task), ShadowRunner(twin.infer, spec, meta.task)]

    def tap(feeds: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray], frame: np.ndarray) -> None:
        drift.observe(frame, outputs)  # the daemon, after each inference
        for gate in gates:  # the OTA client, while a candidate is shadowed
            gate.offer(feeds, outputs)
            gate.wait_idle(5.0)

    try:
        for frame in scenes(seed=1, count=100):
            feeds = pre(frame)
            outputs, served = host.infer(feeds)
            assert served is meta
            tap(feeds, outputs, frame)
        verdicts = [gate.verdict() for gate in gates]
    finally:
        for gate in gates:
            gate.stop()
    assert verdicts[0] == (False, "agreement 0.370 < 0.900 over 100 inputs")  # held back
    assert verdicts[1][0] is True  # an identical candidate may swap in
    report = drift.report()
    assert report["samples"] == 100 and report["drifted"] is False and report["max_psi"] < 0.15
    for model in (serving, rival, twin):
        model.close()
