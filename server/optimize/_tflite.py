"""TFLite variants: compiled elsewhere (Edge TPU) and uploaded ready-made, or compiled here when the
Edge TPU compiler is installed on the server."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

EDGETPU_OP = b"edgetpu-custom-op"
NEEDS_DELEGATE = "cannot validate on this server: needs the Edge TPU delegate"


def is_edgetpu_compiled(path: Path) -> bool:
    """An Edge TPU-compiled model carries the ``edgetpu-custom-op`` custom operator."""
    return EDGETPU_OP in path.read_bytes()


def compiler() -> str | None:
    return shutil.which("edgetpu_compiler")


def compile_edgetpu(src: Path, dst: Path, timeout_s: float = 600) -> dict[str, Any]:
    """Run ``edgetpu_compiler`` (needs a fully int8-quantized TFLite) and move its output to ``dst``."""
    exe = compiler()
    if exe is None:
        raise FileNotFoundError("edgetpu_compiler is not installed on the server: compile the int8 TFLite with it "
                                "and upload the result as a ready-made variant")
    done = subprocess.run([exe, "-s", "-o", str(dst.parent), str(src)], capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    produced = dst.parent / f"{src.stem}_edgetpu.tflite"
    if done.returncode != 0 or not produced.is_file():
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"edgetpu_compiler failed ({done.returncode}): {tail[0][:300]}")
    produced.replace(dst)
    return {"params": {"compiler": exe}, "notes": [done.stdout.strip()[-500:]]}
