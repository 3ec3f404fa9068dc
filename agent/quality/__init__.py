"""Model quality in the field: drift of live traffic against a reference profile, shadow
evaluation of a candidate model before a swap, and a small sample store for ground truth.

numpy only (OpenCV just to store and read JPEG samples; no server dependencies), so the agent and the
server share it.
"""

from edgefleet.agent.quality.agreement import (
    AgreementTracker,
    BoxLayout,
    LatencyBuckets,
    agreement,
    cosine_agreement,
    detection_agreement,
    iou_matrix,
    match_boxes,
    top1_agreement,
)
from edgefleet.agent.quality.drift import (
    DEFAULT_THRESHOLD,
    DriftMonitor,
    ReferenceProfile,
    StatProfile,
    build_reference_profile,
    profile_from_samples,
    psi,
    summarize_fleet,
)
from edgefleet.agent.quality.samples import SampleStore, accuracy_by
from edgefleet.agent.quality.shadow import ShadowRunner
from edgefleet.agent.quality.stats import SIZE_STATS, WindowedHistogram, input_stats, tensor_to_frames

__all__ = [
    "DEFAULT_THRESHOLD",
    "SIZE_STATS",
    "AgreementTracker",
    "BoxLayout",
    "DriftMonitor",
    "LatencyBuckets",
    "ReferenceProfile",
    "SampleStore",
    "ShadowRunner",
    "StatProfile",
    "WindowedHistogram",
    "accuracy_by",
    "agreement",
    "build_reference_profile",
    "cosine_agreement",
    "detection_agreement",
    "input_stats",
    "iou_matrix",
    "match_boxes",
    "profile_from_samples",
    "psi",
    "summarize_fleet",
    "tensor_to_frames",
    "top1_agreement",
]
