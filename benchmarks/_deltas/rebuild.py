"""The agent's rebuild in a child process of its own, so its peak memory is its own:

    python -m benchmarks._deltas.rebuild BASE DELTA OUT      -> {"seconds", "peak_rss_mb", "traced_peak_mb", "sha256"}
    python -m benchmarks._deltas.rebuild --baseline          -> the same process with nothing rebuilt

``traced_peak_mb`` is tracemalloc's peak over the rebuild (Python and numpy allocations).
"""

from __future__ import annotations

import json
import resource
import sys
import time
import tracemalloc
from pathlib import Path

from edgefleet.agent.ota.fsutil import sha256_file
from edgefleet.agent.ota.tensordelta import apply_tensor_delta


def _high_water_mb() -> float:
    """VmHWM: this process image's peak RSS (ru_maxrss would count the parent's pages from before exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main() -> int:
    doc: dict[str, object] = {}
    import bsdiff4  # noqa: F401 - what a rebuild imports, in the baseline too
    import zstandard  # noqa: F401

    if sys.argv[1:] != ["--baseline"]:
        base, delta, out = (Path(a) for a in sys.argv[1:4])
        tracemalloc.start()
        start = time.perf_counter()
        apply_tensor_delta(base, delta, out)
        doc["seconds"] = round(time.perf_counter() - start, 4)
        doc["traced_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 2)
        tracemalloc.stop()
        doc["sha256"] = sha256_file(out)
    doc["peak_rss_mb"] = _high_water_mb()
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
