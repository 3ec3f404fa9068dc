"""``python -m tests.reliability.fuzz_child DIR``: load and run every model file in DIR with the runtime layer.

What the agent does with a model after it passed the test-load, done here in a child process so a crash
(a signal in a native runtime) is seen as such. Prints one JSON line per file, as soon as it is done:
``{"file", "outcome": "ran" | "refused" | "other", "error"}``; "refused" means a ModelLoadError /
RuntimeUnavailable / InvalidInputError (the project's own errors, one line), "other" any other exception.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edgefleet.agent.errors import EdgefleetError
from edgefleet.agent.runtime import example_feeds, load_model


def main() -> int:
    for path in sorted(Path(sys.argv[1]).iterdir()):
        print("FUZZ " + json.dumps({"file": path.name, "outcome": "start"}), flush=True)
        outcome, error = "ran", None
        try:
            model = load_model(path, prefer="auto", autotune=False, threads=1)
            try:
                model.infer(example_feeds(model.inputs))
            finally:
                model.close()
        except EdgefleetError as exc:
            outcome, error = "refused", f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            outcome, error = "other", f"{type(exc).__name__}: {exc}"
        print("FUZZ " + json.dumps({"file": path.name, "outcome": outcome, "error": error}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
