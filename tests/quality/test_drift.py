from __future__ import annotations

import json

import numpy as np
import pytest

from edgefleet.agent.quality import (
    SIZE_STATS,
    DriftMonitor,
    ReferenceProfile,
    build_reference_profile,
    profile_from_samples,
    psi,
    summarize_fleet,
)
from edgefleet.agent.quality.smallgray import luma_stats, small_gray
from edgefleet.agent.quality.stats import WindowedHistogram, input_stats
from edgefleet.agent.wire import Telemetry
from tests.quality.conftest import Infer
from tests.quality.support import scenes, to_tensor


@pytest.fixture(scope="module")
def profile(serving: Infer) -> ReferenceProfile:
    frames = list(scenes(seed=1, count=300))
    return build_reference_profile(frames, [serving(to_tensor(f)) for f in frames], "classification",
                                   model="cls", version=3)


def run_device(profile: ReferenceProfile, serving: Infer, *, seed: int, darken: float = 1.0,
               every: int = 1, count: int = 300) -> dict[str, object]:
    monitor = DriftMonitor(profile, window=1000, every=every, min_samples=100)
    for frame in scenes(seed=seed, count=count, darken=darken):
        monitor.observe(frame, serving(to_tensor(frame)))
    return monitor.report()


def test_input_stats_known_images() -> None:
    flat = np.full((60, 80, 3), 51, dtype=np.uint8)
    stats = input_stats(flat)
    assert stats["brightness"] == pytest.approx(0.2)
    assert stats["contrast"] == pytest.approx(0.0)
    assert stats["blur"] == pytest.approx(-6.0)  # log10(1e-6 + 0): no edges at all
    assert stats["aspect"] == pytest.approx(80 / 60)
    assert stats["pixels"] == pytest.approx(np.log2(4800))
    halves = np.zeros((96, 96), dtype=np.uint8)
    halves[:, 48:] = 255
    stats = input_stats(halves)
    assert stats["brightness"] == pytest.approx(0.5)
    assert stats["contrast"] == pytest.approx(0.5)
    blurred = input_stats(np.asarray(__import__("cv2").GaussianBlur(halves, (31, 31), 8)))
    assert blurred["blur"] < stats["blur"] - 0.5  # sharper is higher
    big = np.full((2160, 3840, 3), 51, dtype=np.uint8)
    assert input_stats(big)["brightness"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="expected an image"):
        input_stats(np.zeros((4, 4, 2), dtype=np.uint8))


@pytest.mark.parametrize("shape", [(96, 128, 3), (480, 640, 3), (1080, 1920, 3), (224, 224, 3), (64, 64, 3),
                                   (30, 40, 3), (100, 100), (50, 300, 4)])
def test_numpy_statistics_equal_opencvs(shape: tuple[int, ...]) -> None:
    """The server (no OpenCV) and a device (OpenCV loaded) get the same figures for the same image."""
    import cv2

    rng = np.random.default_rng(len(shape) * 1000 + shape[0])
    for sigma in (0, 2, 8):
        frame = rng.integers(0, 256, shape, dtype=np.uint8)
        if sigma:
            frame = cv2.GaussianBlur(frame, (4 * sigma + 1, 4 * sigma + 1), sigma)
        with_cv2 = small_gray(frame, use_opencv=True)
        numpy_only = small_gray(frame, use_opencv=False)
        assert with_cv2.shape == numpy_only.shape == (min(48, shape[0]), min(48, shape[1]))
        differ = with_cv2.astype(int) - numpy_only.astype(int)
        assert np.abs(differ).max() <= 1 and np.count_nonzero(differ) <= 0.06 * differ.size  # a rounding step
        a, b = luma_stats(frame, use_opencv=True), luma_stats(frame, use_opencv=False)
        assert a[0] == pytest.approx(b[0], abs=0.02) and a[1] == pytest.approx(b[1], abs=0.02)
        assert np.log10(1e-6 + a[2] / 65025) == pytest.approx(np.log10(1e-6 + b[2] / 65025), abs=0.01)


def test_windowed_histogram_slides() -> None:
    hist = WindowedHistogram(bins=3, window=8, blocks=4)  # blocks of 2
    for _ in range(8):
        hist.add(0)
    assert hist.n == 6 and hist.counts().tolist() == [6, 0, 0]  # a full block was just dropped
    for _ in range(8):
        hist.add(2)
    assert hist.n == 6 and hist.counts().tolist() == [0, 0, 6]  # the old traffic is gone
    hist.add_spread(np.array([0, 1, 1, 1]))
    assert hist.counts().tolist() == pytest.approx([0.25, 0.75, 6.0])
    with pytest.raises(ValueError, match="window >= blocks"):
        WindowedHistogram(bins=3, window=1)


def test_psi_known_values() -> None:
    assert psi([0.5, 0.5], np.array([50.0, 50.0])) == pytest.approx(0.0)
    expected = (0.9 - 0.5) * np.log(0.9 / 0.5) + (0.1 - 0.5) * np.log(0.1 / 0.5)
    assert psi([0.5, 0.5], np.array([90.0, 10.0])) == pytest.approx(expected)
    # an empty expected bin is floored at 1e-4, not infinite
    assert psi([1.0, 0.0], np.array([50.0, 50.0])) == pytest.approx(
        (0.5 - 1.0) * np.log(0.5) + (0.5 - 1e-4) * np.log(0.5 / 1e-4))


def test_profile_shape(profile: ReferenceProfile) -> None:
    assert profile.samples == 300 and profile.model == "cls" and profile.version == 3
    assert sorted(profile.stats) == ["input.aspect", "input.blur", "input.brightness", "input.contrast",
                                     "input.pixels", "output.top1_class", "output.top1_score"]
    brightness = profile.stats["input.brightness"]
    assert len(brightness.edges) == 9  # deciles
    assert brightness.expected == pytest.approx([0.1] * 10, abs=0.01)
    # every reference frame is 96x128: one degenerate value gets a bin of its own
    aspect = profile.stats["input.aspect"]
    assert aspect.edges == [128 / 96, float(np.nextafter(128 / 96, np.inf))]
    assert aspect.expected == [0.0, 1.0, 0.0]


def test_darker_device_is_flagged_unchanged_one_is_not(profile: ReferenceProfile, serving: Infer) -> None:
    unchanged = run_device(profile, serving, seed=2)
    darker = run_device(profile, serving, seed=2, darken=0.45)
    assert unchanged["samples"] == 300 and unchanged["ready"] is True
    assert unchanged["drifted"] is False
    assert unchanged["max_psi"] < 0.15  # type: ignore[operator]
    assert darker["drifted"] is True
    assert darker["psi"]["input.brightness"] > 2.0  # type: ignore[index]
    assert darker["psi"]["output.top1_score"] > 0.25  # type: ignore[index]
    assert darker["psi"]["input.aspect"] == 0.0  # type: ignore[index]
    # the report is what telemetry carries
    doc = Telemetry(seq=1, ts=0.0, drift=darker).model_dump(mode="json")
    assert json.loads(json.dumps(doc))["drift"]["drifted"] is True


def test_other_resolution_is_flagged_by_size(profile: ReferenceProfile, serving: Infer) -> None:
    import cv2

    monitor = DriftMonitor(profile, min_samples=50)
    for frame in scenes(seed=2, count=60):
        wide = cv2.resize(frame, (256, 144))
        monitor.observe(wide, serving(to_tensor(wide)))
    report = monitor.report()
    assert report["drifted"] is True
    assert report["psi"]["input.aspect"] > 5 and report["psi"]["input.pixels"] > 5


def test_sampling_every_nth_and_readiness(profile: ReferenceProfile, serving: Infer) -> None:
    report = run_device(profile, serving, seed=2, darken=0.45, every=5, count=300)
    assert report["observed"] == 60 and report["samples"] == 60
    assert report["ready"] is False and report["drifted"] is False  # 60 < min_samples: not judged yet


def test_monitor_counts_bad_input_and_keeps_going(profile: ReferenceProfile, serving: Infer) -> None:
    monitor = DriftMonitor(profile)
    monitor.observe(np.zeros((0, 0), dtype=np.uint8), {})
    frame = next(scenes(seed=2, count=1))
    monitor.observe(frame, serving(to_tensor(frame)))
    report = monitor.report()
    assert report["errors"] == 1 and report["observed"] == 1
    assert monitor.last_error is not None and "expected an image" in monitor.last_error


def test_profile_round_trips_through_json(profile: ReferenceProfile, serving: Infer) -> None:
    text = profile.to_json()
    again = ReferenceProfile.from_json(text)
    assert again == profile
    assert json.loads(again.to_json()) == json.loads(text)
    a = run_device(profile, serving, seed=4, count=120)
    b = run_device(again, serving, seed=4, count=120)
    assert a == b


def test_bad_profiles_are_refused() -> None:
    good = {"samples": 1, "stats": {"input.brightness": {"kind": "numeric", "edges": [0.5],
                                                        "expected": [0.5, 0.5]}}}
    assert ReferenceProfile.from_dict(good).stats["input.brightness"].bins == 2
    bad_len = json.loads(json.dumps(good))
    bad_len["stats"]["input.brightness"]["expected"] = [1.0]
    with pytest.raises(ValueError, match=r"^invalid reference profile: stats\.input\.brightness: .*1 expected"):
        ReferenceProfile.from_dict(bad_len)
    with pytest.raises(ValueError, match="invalid reference profile: format"):
        ReferenceProfile.from_dict({**good, "format": 2})
    with pytest.raises(ValueError, match="edges must increase"):
        ReferenceProfile.from_dict({"samples": 1, "stats": {"x": {"kind": "numeric", "edges": [0.5, 0.5],
                                                                  "expected": [0.2, 0.3, 0.5]}}})
    with pytest.raises(ValueError, match="unknown task"):
        build_reference_profile([], [], "segmentation")
    with pytest.raises(ValueError, match="no samples to profile"):
        build_reference_profile([], [], "other")


def test_non_classifier_outputs_get_value_histograms() -> None:
    rng = np.random.default_rng(0)
    reference = [{"embedding": rng.normal(0, 1, (1, 512)).astype(np.float32)} for _ in range(200)]
    profile = build_reference_profile([], reference, "other")
    assert list(profile.stats) == ["output.embedding"]
    same, shifted = DriftMonitor(profile, min_samples=50), DriftMonitor(profile, min_samples=50)
    for _ in range(100):
        same.observe(None, {"embedding": rng.normal(0, 1, (1, 512))})
        shifted.observe(None, {"embedding": rng.normal(0.8, 1, (1, 512))})
    assert same.report()["max_psi"] < 0.05
    assert shifted.report()["drifted"] is True and shifted.report()["max_stat"] == "output.embedding"


def test_profile_from_calibration_tensors_matches_frames(serving: Infer) -> None:
    frames = list(scenes(seed=1, count=100))
    tensors = np.concatenate([to_tensor(f)["image"] for f in frames])
    from_tensors = profile_from_samples(serving, {"image": tensors}, "classification", image_input="image",
                                        model="cls", version=3)
    assert not any(f"input.{s}" in from_tensors.stats for s in SIZE_STATS)
    assert from_tensors.samples == 100
    # brightness of the 32x32 model input is the brightness of the frame it came from
    direct = build_reference_profile(frames, [serving(to_tensor(f)) for f in frames], "classification")
    assert from_tensors.stats["input.brightness"].edges == pytest.approx(
        direct.stats["input.brightness"].edges, abs=0.01)
    assert from_tensors.stats["output.top1_score"] == direct.stats["output.top1_score"]


def test_fleet_summary_flags_drifted_devices(profile: ReferenceProfile, serving: Infer) -> None:
    latest = {"cam-1": run_device(profile, serving, seed=2, count=150),
              "cam-2": run_device(profile, serving, seed=3, darken=0.45, count=150),
              "cam-3": run_device(profile, serving, seed=3, count=20),  # not ready: not judged
              "cam-4": None}
    summary = summarize_fleet(latest)
    assert [d["device_id"] for d in summary["drifted_devices"]] == ["cam-2"]
    assert summary["versions"] == {"cls@3": {"model": "cls", "version": 3, "devices": 2, "drifted": 1,
                                             "drifted_fraction": 0.5}}
    assert summarize_fleet(latest, threshold=100.0)["drifted_devices"] == []
