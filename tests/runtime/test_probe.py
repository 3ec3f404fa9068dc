from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from edgefleet.agent.runtime import available_runtimes, device_class, hardware_fingerprint, probe_hardware
from edgefleet.agent.runtime.inventory import RUNTIMES, TFLITE_RUNTIMES
from edgefleet.agent.runtime.probe import accelerators

PI_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41

processor\t: 1
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
"""


def _write(root: Path, rel: str, data: str | bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def test_fake_raspberry_pi_5_with_coral_usb(tmp_path: Path) -> None:
    _write(tmp_path, "proc/device-tree/model", b"Raspberry Pi 5 Model B Rev 1.0\x00")
    _write(tmp_path, "proc/cpuinfo", PI_CPUINFO)
    _write(tmp_path, "proc/meminfo", "MemTotal:        8245000 kB\nMemAvailable:    7000000 kB\n")
    _write(tmp_path, "sys/bus/usb/devices/2-1/idVendor", "18d1\n")
    _write(tmp_path, "sys/bus/usb/devices/2-1/idProduct", "9302\n")
    _write(tmp_path, "sys/bus/usb/devices/1-1/idVendor", "046d\n")  # a webcam: not a Coral
    _write(tmp_path, "sys/bus/usb/devices/1-1/idProduct", "0825\n")
    _write(tmp_path, "sys/class/thermal/thermal_zone0/temp", "51300\n")
    _write(tmp_path, "sys/class/thermal/thermal_zone0/type", "cpu-thermal\n")
    hw = probe_hardware(tmp_path, runtimes=False)
    assert hw["board"] == {"model": "Raspberry Pi 5 Model B Rev 1.0", "raspberry_pi": "5"}
    assert hw["cpu"]["arch"] == "aarch64" and hw["cpu"]["cores"] == 2
    assert "asimddp" in hw["cpu"]["flags"] and "dotprod" in hw["cpu"]["flags"] and hw["cpu"]["int8_dot_product"]
    assert hw["memory"] == {"total_mb": 8051, "available_mb": 6835}
    assert hw["coral"] == [{"bus": "usb", "id": "18d1:9302", "name": "Coral USB Accelerator", "path": "2-1"}]
    assert hw["thermal"] == [{"zone": "thermal_zone0", "type": "cpu-thermal", "temp_c": 51.3}]
    assert hw["jetson"] is None and hw["nvidia_gpus"] == []
    assert device_class(hw) == "coral"
    hw["coral"] = []
    assert device_class(hw) == "rpi5"
    json.dumps(hw)


def test_fake_pi4_without_dotprod(tmp_path: Path) -> None:
    _write(tmp_path, "proc/device-tree/model", b"Raspberry Pi 4 Model B Rev 1.4\x00")
    _write(tmp_path, "proc/cpuinfo", "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\n")
    hw = probe_hardware(tmp_path, runtimes=False)
    assert device_class(hw) == "rpi4"
    assert not hw["cpu"]["int8_dot_product"]


def test_fake_jetson_with_apex_and_libraries(tmp_path: Path) -> None:
    _write(tmp_path, "etc/nv_tegra_release",
           "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64\n")
    _write(tmp_path, "dev/nvhost-ctrl", "")
    _write(tmp_path, "dev/nvhost-gpu", "")
    _write(tmp_path, "dev/apex_0", "")
    _write(tmp_path, "usr/lib/aarch64-linux-gnu/libnvinfer.so.8.5.2", "")
    _write(tmp_path, "usr/local/cuda/lib64/libcudart.so.11.4.298", "")
    _write(tmp_path, "proc/device-tree/model", b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    hw = probe_hardware(tmp_path, runtimes=False)
    assert hw["jetson"] == {"l4t": "35.4.1", "nvhost_nodes": ["nvhost-ctrl", "nvhost-gpu"]}
    assert hw["tensorrt"] == "8.5.2" and hw["cuda"] == "11.4.298"
    assert hw["coral"][0]["bus"] == "pcie"
    assert hw["board"]["raspberry_pi"] is None
    present, unusable = accelerators(hw)
    assert present == ["Jetson GPU (L4T 35.4.1) with CUDA 11.4.298, TensorRT 8.5.2", "Coral PCIe/M.2 Accelerator"]
    assert unusable == []
    hw["coral"] = []
    assert device_class(hw) == "jetson"


def test_cuda_libraries_without_a_gpu_are_no_accelerator(tmp_path: Path) -> None:
    _write(tmp_path, "usr/local/cuda/lib64/libcudart.so.13.0.48", "")
    hw = probe_hardware(tmp_path, runtimes=False)
    assert hw["cuda"] == "13.0.48"
    assert accelerators(hw) == ([], ["CUDA 13.0.48 libraries, but no NVIDIA GPU"])
    _write(tmp_path, "proc/driver/nvidia/gpus/0000:01:00.0/information", "Model: \t NVIDIA L4\nIRQ: 42\n")
    assert accelerators(probe_hardware(tmp_path, runtimes=False)) == (["NVIDIA L4 with CUDA 13.0.48"], [])


def test_empty_tree_never_fails(tmp_path: Path) -> None:
    hw = probe_hardware(tmp_path, runtimes=False)
    assert hw["coral"] == [] and hw["jetson"] is None and hw["thermal"] == []
    assert hw["board"] == {"model": None, "raspberry_pi": None}
    json.dumps(hw)


def test_real_box() -> None:
    hw = probe_hardware()
    json.dumps(hw)
    assert hw["cpu"]["cores"] >= 1 and hw["memory"]["total_mb"] > 0
    runtimes = available_runtimes()
    # what this install has (the arm64 CI run has no torch) must import; the probe reports the rest
    installed = {name for name in ("litert", "tflite_runtime", "onnxruntime", "torch") if importlib.util.find_spec(
        RUNTIMES[name][0].split(".")[0]) is not None}
    assert installed and installed <= set(runtimes)
    assert all(hw["runtimes"][name]["available"] for name in runtimes)
    if "onnxruntime" in installed:
        assert hw["runtimes"]["onnxruntime"]["providers"]["CPUExecutionProvider"]["usable"]
    tflite = next(name for name in TFLITE_RUNTIMES if hw["runtimes"][name]["available"])
    edgetpu = hw["runtimes"][tflite]["delegates"]["edgetpu"]
    assert not edgetpu["usable"] and "libedgetpu.so.1" in edgetpu["reason"]
    fp = hardware_fingerprint(hw)
    assert fp == hardware_fingerprint(probe_hardware()) and len(fp) == 16
    klass = device_class(hw)
    assert klass in ("x86_64", "aarch64", "armv7l", "jetson", "coral") or klass.startswith("rpi"), klass
