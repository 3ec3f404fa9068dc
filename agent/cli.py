# PYTHON_ARGCOMPLETE_OK
"""edgefleet-agent: run the daemon, probe the hardware, benchmark a model, run one inference.

Every --json output is one JSON document on stdout. Errors are one line on stderr and a non-zero
exit code, never a traceback: 1 cannot start or run, 2 usage, config, bad input or bad model
(systemd does not restart on it), 3 no runtime can serve the model, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from edgefleet.agent.errors import EdgefleetError, InvalidInputError, ModelError, RuntimeUnavailable
from edgefleet.agent.version import version_line

RUNTIME_CHOICES = ("auto", "litert", "tflite", "onnxruntime", "torch", "executorch")


class CliError(Exception):
    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CliError(f"{self.prog}: {message}")


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Drop the runtimes' INFO chatter written by C++ straight to fd 2; keep every other line."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode("utf-8", "replace").splitlines():
                if line.strip() and not line.startswith("INFO: "):
                    print(line, file=sys.stderr)


def _load(path: str, *, runtime: str = "auto", delegate: str = "auto", threads: int = 0) -> Any:
    from edgefleet.agent.runtime import load_model

    with quiet_native_stderr():
        return load_model(Path(path), prefer=runtime, delegate=delegate, threads=threads)


def _spec_row(spec: Any) -> dict[str, Any]:
    return spec.model_dump(mode="json")


def _emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")


# --- probe -------------------------------------------------------------------------------------


def auto_picks(hw: dict[str, Any]) -> dict[str, str]:
    """What ``auto`` would try first for each model format here."""
    from edgefleet.agent.runtime.select import plan

    picks: dict[str, str] = {}
    for fmt in ("tflite", "onnx", "torchscript", "pte"):
        cands = plan(fmt, hw=hw)  # type: ignore[arg-type]
        first = next((c for c in cands if c.status == "untried"), None)
        picks[fmt] = f"{first.runtime}/{first.delegate}" if first else "none: " + "; ".join(
            f"{c.runtime}: {c.reason}" for c in cands)
    return picks


def cmd_probe(args: argparse.Namespace) -> int:
    from edgefleet.agent.runtime import device_class, hardware_fingerprint, probe_hardware
    from edgefleet.agent.runtime.probe import accelerators

    hw = probe_hardware()
    picks = auto_picks(hw)
    present, unusable = accelerators(hw)
    doc = {"device_class": device_class(hw), "fingerprint": hardware_fingerprint(hw), "hw": hw,
           "accelerators": present, "not_usable": unusable, "auto": picks}
    if args.json:
        _emit_json(doc)
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    cpu = hw["cpu"]
    console.print(f"[bold]{doc['device_class']}[/] ({hw['board']['model'] or cpu['model']}), "
                  f"{cpu['arch']}, {cpu['usable_cores']}/{cpu['cores']} cores, {hw['memory']['total_mb']} MB; "
                  f"int8 dot product: {'yes' if cpu['int8_dot_product'] else 'no'}; flags: {' '.join(cpu['flags'])}")
    console.print("accelerators: " + ("; ".join(doc["accelerators"]) or "none"))
    if doc["not_usable"]:
        console.print("not usable: " + "; ".join(doc["not_usable"]))
    if hw["thermal"]:
        console.print("thermal: " + ", ".join(f"{z['type'] or z['zone']} {z['temp_c']:.1f} °C" for z in hw["thermal"]))
    table = Table(title="runtimes, delegates and providers")
    for column in ("runtime", "delegate / provider", "usable", "why"):
        table.add_column(column)
    for name, info in hw["runtimes"].items():
        table.add_row(name, "", "yes" if info["available"] else "no",
                      f"{info['reason']}" + (f" ({info['version']})" if info.get("version") else ""))
        for sub, detail in (info.get("delegates") or info.get("providers") or {}).items():
            table.add_row("", sub, "yes" if detail["usable"] else "no", detail["reason"])
    console.print(table)
    chosen = Table(title="auto would pick")
    chosen.add_column("format")
    chosen.add_column("runtime/delegate")
    for fmt, pick in picks.items():
        chosen.add_row(fmt, pick)
    console.print(chosen)
    return 0


# --- bench -------------------------------------------------------------------------------------


def parse_input_shapes(values: Sequence[str]) -> dict[str, Sequence[int]]:
    shapes: dict[str, Sequence[int]] = {}
    for value in values:
        name, sep, dims = value.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = [int(d) for d in dims.split(",")] if dims else []
        except ValueError:
            raise CliError(f"--input-shape '{value}': expected NAME=D0,D1,... (integers)") from None
    return shapes


def percentile(sorted_ms: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted samples."""
    index = min(len(sorted_ms) - 1, max(0, int(np.ceil(q / 100.0 * len(sorted_ms))) - 1))
    return sorted_ms[index]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cmd_bench(args: argparse.Namespace) -> int:
    from edgefleet.agent.runtime import example_feeds

    if args.runs < 1 or args.warmup < 0:
        raise CliError("--runs must be at least 1 and --warmup at least 0")
    shapes = parse_input_shapes(args.input_shape or [])
    model = _load(args.model, runtime=args.runtime, delegate=args.delegate, threads=args.threads)
    try:
        feeds = example_feeds(model.inputs, shapes)
        for _ in range(args.warmup):
            model.infer(feeds)
        samples = []
        started = time.perf_counter()
        for _ in range(args.runs):
            t0 = time.perf_counter()
            model.infer(feeds)
            samples.append((time.perf_counter() - t0) * 1000.0)
        wall = time.perf_counter() - started
    finally:
        model.close()
    samples.sort()
    doc = {
        "model": str(args.model), "runtime": model.runtime, "delegate": model.delegate, "threads": model.threads,
        "runs": args.runs, "warmup": args.warmup,
        "inputs": {name: list(value.shape) for name, value in feeds.items()},
        "latency_ms": {"p50": round(percentile(samples, 50), 4), "p90": round(percentile(samples, 90), 4),
                       "p99": round(percentile(samples, 99), 4), "mean": round(float(np.mean(samples)), 4),
                       "min": round(samples[0], 4), "max": round(samples[-1], 4)},
        "throughput_per_s": round(args.runs / wall, 2) if wall > 0 else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "selection": getattr(model, "selection", []),
    }
    if args.json:
        _emit_json(doc)
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{Path(args.model).name}: {model.runtime} / {model.delegate}, {model.threads} threads")
    for column in ("runs", "p50 ms", "p90 ms", "p99 ms", "throughput /s", "peak RSS MB"):
        table.add_column(column, justify="right")
    lat = doc["latency_ms"]
    table.add_row(str(args.runs), f"{lat['p50']:.3f}", f"{lat['p90']:.3f}", f"{lat['p99']:.3f}",
                  f"{doc['throughput_per_s']}", f"{doc['peak_rss_mb']}")
    console.print(table)
    return 0


# --- infer -------------------------------------------------------------------------------------


def load_feeds(model: Any, path: Path) -> dict[str, np.ndarray]:
    """``.npy`` for a single-input model, ``.npz`` by input name, anything else as an image."""
    from edgefleet.agent.runtime.image import image_to_tensor, read_image

    if not path.is_file():
        raise CliError(f"{path}: no such input file")
    names = [s.name for s in model.inputs]
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            if len(names) != 1:
                raise CliError(f"{path}: a .npy feeds one input, the model takes {len(names)} "
                               f"({', '.join(names)}): use a .npz with arrays by input name")
            return {names[0]: np.load(path, allow_pickle=False)}
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as exc:
        raise CliError(f"{path}: not a readable numpy file ({str(exc).splitlines()[0]})") from exc
    image_inputs = [s for s in model.inputs if len(s.shape) in (3, 4)]
    if len(model.inputs) != 1 or not image_inputs:
        raise CliError(f"{path}: an image feeds a model with one 3-D/4-D input; this one takes "
                       f"{', '.join(names)}: use a .npz")
    return {image_inputs[0].name: image_to_tensor(read_image(path), image_inputs[0])}


def cmd_infer(args: argparse.Namespace) -> int:
    model = _load(args.model, runtime=args.runtime, delegate=args.delegate, threads=args.threads)
    try:
        feeds = load_feeds(model, Path(args.input))
        t0 = time.perf_counter()
        outputs = model.infer(feeds)
        latency_ms = (time.perf_counter() - t0) * 1000.0
    finally:
        model.close()
    specs = {s.name: s for s in model.outputs}
    doc = {"model": str(args.model), "runtime": model.runtime, "delegate": model.delegate,
           "latency_ms": round(latency_ms, 4),
           "outputs": {name: {"shape": list(value.shape), "dtype": value.dtype.name,
                              "scale": specs[name].scale if name in specs else None,
                              "zero_point": specs[name].zero_point if name in specs else None,
                              "data": value.tolist()}
                       for name, value in outputs.items()}}
    if args.json:
        _emit_json(doc)
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{Path(args.model).name} on {Path(args.input).name}: {model.runtime} / "
                        f"{model.delegate}, {latency_ms:.3f} ms")
    for column in ("output", "shape", "dtype", "values"):
        table.add_column(column)
    for name, value in outputs.items():
        flat = value.reshape(-1)
        shown = np.array2string(flat[:8], precision=4, separator=", ")
        if flat.size > 8:
            top = int(np.argmax(flat))
            shown += f" … ({flat.size} values, max {flat[top]} at {top})"
        table.add_row(name, str(list(value.shape)), value.dtype.name, shown)
    Console().print(table)
    return 0


# --- run ---------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    try:
        from edgefleet.agent.daemon.main import run_agent
    except ImportError as exc:
        raise CliError(f"the agent daemon is not available in this install ({exc})", code=1) from exc
    return int(run_agent(str(args.config)))


# --- entry point -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    parser = _Parser(prog="edgefleet-agent", description=doc.split("\n")[0], epilog=doc.split("\n", 2)[2],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version_line("edgefleet-agent"),
                        help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="log runtime selection at INFO")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", required=True, metavar="FILE",
                     help="agent YAML config (the unit uses /etc/edgefleet/agent.yaml)")
    run.set_defaults(func=cmd_run)
    probe = sub.add_parser("probe", help="hardware, runtimes and delegates, and what auto would pick")
    probe.add_argument("--json", action="store_true", help="print one JSON document")
    probe.set_defaults(func=cmd_probe)
    for name, func, help_text in (("bench", cmd_bench, "latency and throughput of a model"),
                                  ("infer", cmd_infer, "one inference on an image, .npy or .npz")):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("model", help="model file (.tflite, .onnx, .pt TorchScript, .pte ExecuTorch)")
        if name == "infer":
            cmd.add_argument("input", help="an image, a .npy (one input) or a .npz (inputs by name)")
        cmd.add_argument("--runtime", default="auto", choices=RUNTIME_CHOICES,
                         help="runtime to use (default: %(default)s, the best one installed)")
        cmd.add_argument("--delegate", default="auto",
                         help="auto | none | xnnpack | edgetpu | an onnxruntime provider (cuda, CPUExecutionProvider)")
        cmd.add_argument("--threads", type=int, default=0, help="0: one per usable core")
        cmd.add_argument("--json", action="store_true", help="print one JSON document")
        cmd.set_defaults(func=func)
        if name == "bench":
            cmd.add_argument("--runs", type=int, default=100, help="timed runs (default: %(default)s)")
            cmd.add_argument("--warmup", type=int, default=10, help="untimed runs first (default: %(default)s)")
            cmd.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,..",
                             help="concrete shape for an input with dynamic dims (repeatable)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        _complete(parser)
        args = parser.parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        return int(args.func(args))
    except CliError as exc:
        return _fail(str(exc), exc.code)
    except (InvalidInputError, ModelError) as exc:
        return _fail(str(exc), 2)
    except RuntimeUnavailable as exc:
        return _fail(str(exc), 3)
    except EdgefleetError as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as exc:  # the promise: one line, no traceback
        return _fail(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", 1)


def _complete(parser: argparse.ArgumentParser) -> None:
    """Shell completion (argcomplete): answers and exits only when the shell asks (_ARGCOMPLETE set)."""
    if "_ARGCOMPLETE" not in os.environ:  # every other start (the daemon's too) skips its import
        return
    try:
        import argcomplete
    except ImportError:
        return
    argcomplete.autocomplete(parser)


def _fail(message: str, code: int) -> int:
    print(f"error: {message.splitlines()[0] if message else 'failed'}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
