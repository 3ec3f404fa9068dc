"""What hardware and runtimes this box has. Every probe reads files and never fails: a box that
lacks a Pi device tree, a Jetson release file, a Coral or a GPU simply reports it absent.

``root`` (default ``/``) is where ``proc``, ``sys``, ``dev`` and ``etc`` are looked up, so tests can
point the probe at a fake tree.
"""

from __future__ import annotations

import ctypes.util
import glob
import hashlib
import json
import os
import platform
import re
from pathlib import Path
from typing import Any

CORAL_USB_IDS = {("1a6e", "089a"): "Coral USB Accelerator (unbooted)",
                 ("18d1", "9302"): "Coral USB Accelerator"}
_FLAGS_OF_INTEREST = ("asimddp", "dotprod", "i8mm", "asimdhp", "fphp", "bf16", "sve", "sve2", "neon", "asimd",
                      "avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512vnni", "avx_vnni",
                      "avx512_bf16", "amx_int8", "sse4_2")


def _read(path: Path, limit: int = 1 << 16) -> str | None:
    try:
        with path.open("rb") as fh:
            return fh.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def _cpu(root: Path) -> dict[str, Any]:
    text = _read(root / "proc/cpuinfo", 1 << 20) or ""
    flags: set[str] = set()
    model = None
    hardware = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key in ("model name", "cpu model") and model is None:
            model = value.strip()
        elif key == "hardware" and hardware is None:
            hardware = value.strip()
    if "asimddp" in flags:
        flags.add("dotprod")
    if "avx512vnni" in flags:
        flags.add("avx512_vnni")
    try:
        usable = len(os.sched_getaffinity(0)) if root == Path("/") else None
    except (AttributeError, OSError):
        usable = None
    cores = text.count("processor\t:") or text.count("processor :") or (os.cpu_count() if root == Path("/") else 0)
    return {
        "arch": platform.machine() if root == Path("/") else _arch_from_flags(flags),
        "model": model or hardware,
        "cores": cores or 0,
        "usable_cores": usable or cores or 0,
        "flags": sorted(f for f in flags if f in _FLAGS_OF_INTEREST),
        "int8_dot_product": bool(flags & {"asimddp", "dotprod", "i8mm", "avx512_vnni", "avx_vnni", "amx_int8"}),
    }


def _arch_from_flags(flags: set[str]) -> str:
    if flags & {"asimd", "fp", "neon", "asimddp"}:
        return "aarch64"
    if flags & {"sse2", "avx", "avx2", "sse4_2"}:
        return "x86_64"
    return platform.machine()


def _memory(root: Path) -> dict[str, Any]:
    info: dict[str, int] = {}
    for line in (_read(root / "proc/meminfo") or "").splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            info[key.strip()] = int(parts[0])
    return {"total_mb": info.get("MemTotal", 0) // 1024, "available_mb": info.get("MemAvailable", 0) // 1024}


def _board(root: Path) -> dict[str, Any]:
    model = _read(root / "proc/device-tree/model") or _read(root / "sys/firmware/devicetree/base/model")
    model = model.rstrip("\x00").strip() if model else None
    pi = None
    if model and model.startswith("Raspberry Pi"):
        match = re.match(r"Raspberry Pi (\d+|Zero 2|Zero|Compute Module \d+)", model)
        pi = match.group(1) if match else "?"
    return {"model": model, "raspberry_pi": pi}


def _jetson(root: Path) -> dict[str, Any] | None:
    release = _read(root / "etc/nv_tegra_release")
    nodes = sorted(os.path.basename(p) for p in glob.glob(str(root / "dev/nvhost-*")))
    if not release and not nodes:
        return None
    l4t = None
    if release:
        match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", release)
        l4t = f"{match.group(1)}.{match.group(2)}" if match else release.splitlines()[0].strip()
    return {"l4t": l4t, "nvhost_nodes": nodes}


def _library_version(name: str, root: Path) -> str | None:
    """Version of lib<name>.so.X[.Y.Z] from the usual library folders (or None)."""
    folders = ["usr/lib/aarch64-linux-gnu", "usr/lib/x86_64-linux-gnu", "usr/local/cuda/lib64", "usr/lib"]
    best: str | None = None
    for folder in folders:
        for found in glob.glob(str(root / folder / f"lib{name}.so.*")):
            version = found.split(".so.", 1)[1]
            if best is None or len(version) > len(best):
                best = version
    if best is None and root == Path("/") and ctypes.util.find_library(name):
        best = "present"
    return best


def _coral(root: Path) -> list[dict[str, str]]:
    found = []
    for device in sorted(glob.glob(str(root / "sys/bus/usb/devices/*"))):
        vendor = (_read(Path(device) / "idVendor") or "").strip().lower()
        product = (_read(Path(device) / "idProduct") or "").strip().lower()
        if (vendor, product) in CORAL_USB_IDS:
            found.append({"bus": "usb", "id": f"{vendor}:{product}", "name": CORAL_USB_IDS[(vendor, product)],
                          "path": os.path.basename(device)})
    for node in sorted(glob.glob(str(root / "dev/apex_*"))):
        found.append({"bus": "pcie", "id": "apex", "name": "Coral PCIe/M.2 Accelerator", "path": node})
    return found


def _nvidia_gpus(root: Path) -> list[dict[str, str]]:
    gpus = []
    for info in sorted(glob.glob(str(root / "proc/driver/nvidia/gpus/*/information"))):
        text = _read(Path(info)) or ""
        match = re.search(r"Model:\s*(.+)", text)
        gpus.append({"model": match.group(1).strip() if match else "NVIDIA GPU"})
    if not gpus and glob.glob(str(root / "dev/nvidia[0-9]*")):
        gpus.append({"model": "NVIDIA GPU"})
    return gpus


def _thermal(root: Path) -> list[dict[str, Any]]:
    zones = []
    for zone in sorted(glob.glob(str(root / "sys/class/thermal/thermal_zone*"))):
        raw = (_read(Path(zone) / "temp") or "").strip()
        kind = (_read(Path(zone) / "type") or "").strip()
        try:
            zones.append({"zone": os.path.basename(zone), "type": kind, "temp_c": int(raw) / 1000.0})
        except ValueError:
            continue
    return zones


def accelerators(hw: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(present and usable, installed but not usable): a CUDA or TensorRT library is an accelerator only
    with an NVIDIA GPU (or a Jetson's) for it to run on."""
    present: list[str] = []
    unusable: list[str] = []
    libraries = ", ".join(f"{name} {hw[key]}" for name, key in (("CUDA", "cuda"), ("TensorRT", "tensorrt"))
                          if hw.get(key))
    gpus = [g.get("model") or "NVIDIA GPU" for g in hw.get("nvidia_gpus") or []]
    jetson = hw.get("jetson")
    if jetson:
        gpus.insert(0, f"Jetson GPU (L4T {jetson.get('l4t') or '?'})")
    for gpu in gpus:
        present.append(f"{gpu} with {libraries}" if libraries else f"{gpu} (no CUDA libraries found)")
    if libraries and not gpus:
        unusable.append(f"{libraries} libraries, but no NVIDIA GPU")
    present.extend(c["name"] for c in hw.get("coral") or [])
    return present, unusable


def probe_hardware(root: str | Path = "/", *, runtimes: bool = True) -> dict[str, Any]:
    """Everything above as one JSON-able dict; ``runtimes`` adds what each runtime/delegate can do here."""
    root = Path(root)
    board = _board(root)
    hw: dict[str, Any] = {
        "os": platform.system().lower(),
        "cpu": _cpu(root),
        "memory": _memory(root),
        "board": board,
        "jetson": _jetson(root),
        "cuda": _library_version("cudart", root),
        "tensorrt": _library_version("nvinfer", root),
        "coral": _coral(root),
        "nvidia_gpus": _nvidia_gpus(root),
        "thermal": _thermal(root),
    }
    if runtimes:
        from edgefleet.agent.runtime.inventory import runtime_inventory

        hw["runtimes"] = runtime_inventory(hw)
    return hw


def device_class(hw: dict[str, Any]) -> str:
    """rpi5, rpi4, ..., jetson, coral, x86_64, aarch64 (a Coral outranks the host it plugs into)."""
    if hw.get("coral"):
        return "coral"
    if hw.get("jetson"):
        return "jetson"
    pi = (hw.get("board") or {}).get("raspberry_pi")
    if pi:
        digits = re.sub(r"\D", "", str(pi))
        return f"rpi{digits}" if digits and "Zero" not in str(pi) else "rpi-zero"
    arch = (hw.get("cpu") or {}).get("arch") or platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(arch.lower(), arch.lower())


def hardware_fingerprint(hw: dict[str, Any]) -> str:
    """Stable across restarts and temperature: what decides which runtime is fastest."""
    cpu = hw.get("cpu") or {}
    runtimes = hw.get("runtimes") or {}
    key = {
        "class": device_class(hw),
        "arch": cpu.get("arch"), "model": cpu.get("model"), "cores": cpu.get("usable_cores"),
        "flags": cpu.get("flags"), "board": (hw.get("board") or {}).get("model"),
        "coral": [c.get("id") for c in hw.get("coral") or []],
        "gpus": [g.get("model") for g in hw.get("nvidia_gpus") or []],
        "runtimes": sorted(f"{name}={info.get('version')}" for name, info in runtimes.items()
                           if isinstance(info, dict) and info.get("available")),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
