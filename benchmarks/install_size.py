"""Download and unpacked size of each target's install, resolved for the target's platform.

    .venv/bin/python benchmarks/install_size.py            # the table of docs/targets.md
    .venv/bin/python benchmarks/install_size.py --json

For each target, ``pip download --only-binary=:all: --platform P --python-version V`` resolves
``edgefleet[extras]`` (this checkout, built as a wheel) for that platform from the package index
into an empty folder (with every manylinux tag the target's glibc accepts, as pip would on the
device: bookworm has glibc 2.36, Ubuntu 22.04 2.35); "download" is the sum of the wheels' sizes,
"unpacked" the sum of the sizes of the files in them (what lands in site-packages, before byte-compilation). A target
whose set does not resolve from PyPI binaries is reported with pip's reason.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Target:
    name: str
    extras: str
    arch: str  # aarch64, armv7l, x86_64
    python: str
    note: str = ""
    glibc: int = 36  # 2.36: Debian bookworm (Raspberry Pi OS); 35: Ubuntu 22.04 (JetPack 6)

    def platforms(self) -> list[str]:
        """Every platform tag pip accepts on such a device: manylinux_2_<glibc> down to manylinux2014."""
        tags = [f"manylinux_2_{minor}_{self.arch}" for minor in range(self.glibc, 16, -1)]
        return [*tags, f"manylinux2014_{self.arch}", f"linux_{self.arch}"]


TARGETS = [
    Target("Raspberry Pi OS 64-bit, camera (Pi 4/5)", "device,litert,camera", "aarch64", "3.11"),
    Target("Raspberry Pi OS 64-bit, JSON/.npy inputs", "device,litert", "aarch64", "3.11"),
    Target("Raspberry Pi OS 64-bit, edgefleet[agent]", "agent", "aarch64", "3.11", "LiteRT + ONNX Runtime + OpenCV"),
    Target("32-bit Raspberry Pi OS (armv7l)", "device,tflite", "armv7l", "3.11",
           "PyPI only; Raspberry Pi OS's pip also reads piwheels"),
    Target("Jetson, JetPack 6 (before NVIDIA's wheels)", "device,camera", "aarch64", "3.10",
           "plus NVIDIA's onnxruntime-gpu or torch wheel", glibc=35),
    Target("x86 gateway", "agent", "x86_64", "3.11"),
    Target("update server (x86)", "server", "x86_64", "3.11"),
]


def build_wheel(out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)], check=True)
    return next(out.glob("edgefleet-*.whl"))


def measure(target: Target, wheel: Path) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="edgefleet-size-") as folder:
        platforms = [arg for tag in target.platforms() for arg in ("--platform", tag)]
        command = [sys.executable, "-m", "pip", "download", "-q", "--dest", folder, "--only-binary=:all:",
                   *platforms, "--python-version", target.python, f"edgefleet[{target.extras}] @ {wheel.as_uri()}"]
        done = subprocess.run(command, capture_output=True, text=True)
        row: dict[str, object] = {"target": target.name, "extras": target.extras,
                                  "platform": f"{target.arch}, glibc 2.{target.glibc}", "python": target.python,
                                  "note": target.note}
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if "ERROR" in line] or done.stderr.splitlines()[-1:]
            row["error"] = lines[0].strip() if lines else f"pip exited {done.returncode}"
            return row
        wheels = sorted(Path(folder).glob("*.whl"))
        download = sum(w.stat().st_size for w in wheels)
        unpacked = 0
        for w in wheels:
            with zipfile.ZipFile(w) as archive:
                unpacked += sum(info.file_size for info in archive.infolist())
        largest = sorted(wheels, key=lambda w: -w.stat().st_size)[:3]
        row.update({"wheels": len(wheels), "download_mb": round(download / 2**20, 1),
                    "unpacked_mb": round(unpacked / 2**20, 1),
                    "largest": [f"{w.name.split('-')[0]} {w.stat().st_size / 2**20:.1f} MB" for w in largest]})
        return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgefleet-wheel-") as out:
        wheel = build_wheel(Path(out))
        rows = [measure(target, wheel) for target in TARGETS]
    if args.json:
        print(json.dumps({"targets": rows}))
        return 0
    print("| target | extras | platform, Python | download | unpacked | largest wheels |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        where = f"{row['platform']}, {row['python']}"
        if "error" in row:
            print(f"| {row['target']} | `{row['extras']}` | {where} | does not resolve: {row['error']} | | |")
        else:
            print(f"| {row['target']} | `{row['extras']}` | {where} | {row['download_mb']} MB | "
                  f"{row['unpacked_mb']} MB | {', '.join(row['largest'])} |")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
