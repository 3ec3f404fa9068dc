"""Choosing a (runtime, delegate, threads) for a model: plan the candidates in preference order,
try them, fall back with a logged warning, and (``autotune``) time the viable ones and cache the
fastest by (model sha256, hardware fingerprint).

Every candidate ends with a status and a reason; ``model.selection`` carries them as dicts:
``{"runtime", "delegate", "threads", "status": chosen|failed|skipped|viable, "reason", "latency_ms"}``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.agent.errors import ModelLoadError, RuntimeUnavailable
from edgefleet.agent.runtime._common import default_threads, first_line
from edgefleet.agent.runtime.base import LoadOptions, Model
from edgefleet.agent.runtime.formats import Format, detect_format
from edgefleet.agent.runtime.inventory import TFLITE_RUNTIMES, runtime_status
from edgefleet.agent.runtime.synthetic import example_feeds

log = logging.getLogger("agent.runtime")

PREFER_VALUES = ("auto", "litert", "tflite", "onnxruntime", "torch", "executorch")
_FAMILY = {"tflite": TFLITE_RUNTIMES, "onnx": ("onnxruntime",), "torchscript": ("torch",), "pte": ("executorch",)}


@dataclass
class Candidate:
    runtime: str
    delegate: str
    threads: int
    status: str = "untried"
    reason: str = ""
    latency_ms: float | None = None
    library: str | None = field(default=None, repr=False)
    delegate_options: dict[str, str] = field(default_factory=dict, repr=False)
    providers: tuple[str, ...] = field(default=(), repr=False)

    @property
    def key(self) -> tuple[str, str, int]:
        return self.runtime, self.delegate, self.threads

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for private in ("library", "delegate_options", "providers"):
            data.pop(private)
        return data


@dataclass(frozen=True)
class _External:
    name: str
    library: str
    options: dict[str, str]


def _externals(specs: Iterable[Any]) -> list[_External]:
    out = []
    for spec in specs:
        get = spec.get if isinstance(spec, Mapping) else lambda k, d=None, s=spec: getattr(s, k, d)
        options = {k: str(v) for k, v in (get("options") or {}).items()}
        out.append(_External(str(get("name")), str(get("library")), options))
    return out


def _tflite_runtime_order(prefer: str) -> list[str]:
    if prefer == "tflite":
        return ["tflite_runtime", "litert", "tensorflow"]
    return list(TFLITE_RUNTIMES)


def plan(fmt: Format, *, prefer: str = "auto", delegate: str = "auto", threads: int = 0,
         external_delegates: Sequence[Any] = (), hw: Mapping[str, Any] | None = None) -> list[Candidate]:
    """Candidates in preference order; those that cannot apply here are already ``skipped`` with a reason."""
    if prefer not in PREFER_VALUES:
        raise RuntimeUnavailable(f"runtime.prefer '{prefer}' is not one of {', '.join(PREFER_VALUES)}")
    n = threads or default_threads()
    notes: list[Candidate] = []
    family = _FAMILY[fmt]
    if prefer not in ("auto", "tflite") and prefer not in family:
        notes.append(Candidate(prefer, "-", n, "skipped", f"prefer={prefer} cannot run a {fmt} model"))
    if fmt == "tflite":
        runtime = None
        for name in _tflite_runtime_order(prefer):
            ok, reason, _version = runtime_status(name)
            if ok and runtime is None:
                runtime = name
            elif ok:
                notes.append(Candidate(name, "-", n, "skipped", f"{runtime} comes first"))
            else:
                notes.append(Candidate(name, "-", n, "skipped", reason))
        if runtime is None:
            return notes
        return _tflite_candidates(runtime, delegate, n, _externals(external_delegates), hw) + notes
    if fmt == "onnx":
        ok, reason, _version = runtime_status("onnxruntime")
        if not ok:
            return [*notes, Candidate("onnxruntime", "-", n, "skipped", reason)]
        return _onnx_candidates(delegate, n) + notes
    runtime = family[0]
    ok, reason, _version = runtime_status(runtime)
    if not ok:
        return [Candidate(runtime, "cpu", n, "skipped", reason), *notes]
    if fmt == "torchscript":
        return _torch_candidates(delegate, n) + notes
    return [Candidate(runtime, "cpu", n), *notes]


def _tflite_candidates(runtime: str, delegate: str, n: int, externals: list[_External],
                       hw: Mapping[str, Any] | None) -> list[Candidate]:
    by_name = {e.name: e for e in externals}
    out: list[Candidate] = []
    if delegate == "auto":
        coral = bool((hw or {}).get("coral"))
        out.append(Candidate(runtime, "edgetpu", n, "untried" if coral else "skipped",
                             "" if coral else "no Coral found (USB 1a6e:089a / 18d1:9302, /dev/apex_*)"))
        out += [Candidate(runtime, e.name, n, library=e.library, delegate_options=e.options) for e in externals]
        out += [Candidate(runtime, "xnnpack", n), Candidate(runtime, "cpu", n)]
        return out
    wanted = "cpu" if delegate == "none" else delegate
    if wanted in ("edgetpu", "xnnpack", "cpu"):
        out.append(Candidate(runtime, wanted, n))
    elif wanted in by_name:
        e = by_name[wanted]
        out.append(Candidate(runtime, e.name, n, library=e.library, delegate_options=e.options))
    else:
        out.append(Candidate(runtime, wanted, n, "failed", f"delegate '{wanted}' is neither xnnpack, edgetpu, "
                             "none nor a runtime.external_delegates name"))
    for fallback in ("xnnpack", "cpu"):
        if fallback != wanted:
            out.append(Candidate(runtime, fallback, n))
    return out


def _onnx_candidates(delegate: str, n: int) -> list[Candidate]:
    import onnxruntime as ort

    from edgefleet.agent.runtime.onnx import RANKED_PROVIDERS, provider_name

    available = ort.get_available_providers()
    out: list[Candidate] = []
    if delegate not in ("auto", "none"):
        wanted = provider_name(delegate)
        if wanted is None:
            out.append(Candidate("onnxruntime", delegate, n, "failed",
                                 f"'{delegate}' is not an onnxruntime execution provider"))
        else:  # tried even when not listed, so the session's own answer is what counts
            out.append(Candidate("onnxruntime", wanted, n, providers=_with_cpu(wanted)))
    for provider in RANKED_PROVIDERS:
        if any(c.delegate == provider for c in out):
            continue
        if delegate == "none" and provider != "CPUExecutionProvider":
            out.append(Candidate("onnxruntime", provider, n, "skipped", "delegate: none asks for the CPU"))
        elif provider in available:
            out.append(Candidate("onnxruntime", provider, n, providers=_with_cpu(provider)))
        else:
            out.append(Candidate("onnxruntime", provider, n, "skipped",
                                 "not in onnxruntime.get_available_providers()"))
    return out


def _torch_candidates(delegate: str, n: int) -> list[Candidate]:
    """cuda (when this torch has a GPU it can use), then cpu; a named delegate first, cpu as its fallback."""
    from edgefleet.agent.runtime.torch import DELEGATES, cuda_status

    if delegate in ("none", "cpu"):
        return [Candidate("torch", "cpu", n)]
    if delegate not in ("auto", *DELEGATES):
        return [Candidate("torch", delegate, n, "failed", f"torch has no delegate '{delegate}' (cuda or cpu)"),
                Candidate("torch", "cpu", n)]
    usable, why = cuda_status()
    if delegate == "cuda" or usable:  # named: tried even when the probe says no, so its own error is what counts
        return [Candidate("torch", "cuda", n), Candidate("torch", "cpu", n)]
    return [Candidate("torch", "cuda", n, "skipped", why), Candidate("torch", "cpu", n)]


def _with_cpu(provider: str) -> tuple[str, ...]:
    return (provider,) if provider == "CPUExecutionProvider" else (provider, "CPUExecutionProvider")


def open_candidate(path: Path, fmt: Format, cand: Candidate, *, provider_options: Mapping[str, Mapping[str, Any]],
                   dequantize: bool = False) -> Model:
    """Load ``path`` with exactly this candidate (no fallback)."""
    options = LoadOptions(threads=cand.threads, delegate=None if cand.delegate == "cpu" else cand.delegate,
                          delegate_library=cand.library, delegate_options=cand.delegate_options,
                          providers=cand.providers, provider_options=provider_options, dequantize=dequantize)
    if fmt == "tflite":
        from edgefleet.agent.runtime import tflite

        return tflite.load(path, options, runtime=cand.runtime)
    if fmt == "onnx":
        from edgefleet.agent.runtime import onnx

        return onnx.load(path, options)
    from edgefleet.agent.runtime import torch as torch_backend

    if fmt == "pte":
        return torch_backend.load_pte(path, options)
    return torch_backend.load(path, options)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _time_model(model: Model, budget_s: float = 0.3, max_runs: int = 30) -> float:
    feeds = example_feeds(model.inputs)
    for _ in range(2):
        model.infer(feeds)
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < 3 or (len(samples) < max_runs and time.perf_counter() < deadline):
        start = time.perf_counter()
        model.infer(feeds)
        samples.append(time.perf_counter() - start)
    samples.sort()
    return samples[len(samples) // 2] * 1000.0


def _thread_options(threads: int) -> list[int]:
    if threads:
        return [threads]
    n = default_threads()
    return sorted({1, max(1, n // 2), n})


def load_model(path: str | Path, *, prefer: str = "auto", delegate: str = "auto", threads: int = 0,
               autotune: bool = False, cache_dir: Path | None = None, external_delegates: Sequence[Any] = (),
               provider_options: Mapping[str, Mapping[str, Any]] | None = None, dequantize: bool = False) -> Model:
    path = Path(path)
    fmt = detect_format(path)
    hw: dict[str, Any] = {}
    if fmt == "tflite" and delegate == "auto":
        from edgefleet.agent.runtime.probe import probe_hardware

        hw = probe_hardware(runtimes=False)
    cands = plan(fmt, prefer=prefer, delegate=delegate, threads=threads,
                 external_delegates=external_delegates, hw=hw)
    opener: Callable[[Candidate], Model] = lambda c: open_candidate(  # noqa: E731
        path, fmt, c, provider_options=provider_options or {}, dequantize=dequantize)
    model = _autotuned(path, cands, opener, threads, cache_dir) if autotune else _first_viable(path, cands, opener)
    return model


def _attach(model: Model, cands: list[Candidate]) -> Model:
    model.selection = [c.to_dict() for c in cands]  # type: ignore[attr-defined]
    return model


def _try(cand: Candidate, opener: Callable[[Candidate], Model], errors: list[Exception]) -> Model | None:
    try:
        model = opener(cand)
    except ModelLoadError:
        raise  # the file itself is bad: no other runtime or delegate will read it either
    except RuntimeUnavailable as exc:
        cand.status, cand.reason = "failed", first_line(exc)
        errors.append(exc)
        log.warning("runtime fallback: %s/%s failed: %s", cand.runtime, cand.delegate, cand.reason)
        return None
    if model.delegate != cand.delegate:
        cand.reason = f"{cand.delegate} loaded, but {model.delegate} runs the model"
    return model


def _nothing_worked(path: Path, cands: list[Candidate], errors: list[Exception]) -> Exception:
    why = "; ".join(f"{c.runtime}/{c.delegate}: {c.reason}" for c in cands if c.status in ("failed", "skipped"))
    return RuntimeUnavailable(f"{path.name}: no runtime can serve this model here ({why or 'none installed'})")


def _first_viable(path: Path, cands: list[Candidate], opener: Callable[[Candidate], Model]) -> Model:
    errors: list[Exception] = []
    chosen: Model | None = None
    for cand in cands:
        if cand.status != "untried":
            continue
        if chosen is not None:
            cand.status, cand.reason = "skipped", "an earlier candidate was chosen"
            continue
        chosen = _try(cand, opener, errors)
        if chosen is not None:
            cand.status = "chosen"
            cand.reason = cand.reason or ("first viable candidate" if not errors else "fallback after failures")
    if chosen is None:
        raise _nothing_worked(path, cands, errors)
    return _attach(chosen, cands)


def _cache_file(cache_dir: Path, sha: str, fingerprint: str) -> Path:
    return cache_dir / "autotune" / f"{sha[:32]}-{fingerprint}.json"


def _autotuned(path: Path, cands: list[Candidate], opener: Callable[[Candidate], Model], threads: int,
               cache_dir: Path | None) -> Model:
    from edgefleet.agent.runtime.probe import hardware_fingerprint, probe_hardware

    cache: Path | None = None
    if cache_dir is not None:
        cache = _cache_file(Path(cache_dir), file_sha256(path), hardware_fingerprint(probe_hardware()))
        cached = _from_cache(cache, cands, opener)
        if cached is not None:
            return cached
    errors: list[Exception] = []
    timed: list[tuple[float, Candidate]] = []
    expanded: list[Candidate] = []
    for cand in cands:
        if cand.status != "untried":
            expanded.append(cand)
            continue
        for n in _thread_options(threads):
            variant = Candidate(cand.runtime, cand.delegate, n, library=cand.library,
                                delegate_options=cand.delegate_options, providers=cand.providers)
            expanded.append(variant)
            model = _try(variant, opener, errors)
            if model is None:
                break  # the same delegate with other thread counts fails the same way
            try:
                variant.latency_ms = round(_time_model(model), 4)
            finally:
                model.close()
            variant.status = "viable"
            timed.append((variant.latency_ms, variant))
    if not timed:
        raise _nothing_worked(path, expanded, errors)
    timed.sort(key=lambda item: item[0])
    best = timed[0][1]
    model = opener(best)
    best.status, best.reason = "chosen", f"fastest of {len(timed)} timed ({best.latency_ms:.3f} ms p50)"
    for _ms, cand in timed[1:]:
        cand.reason = f"slower: {cand.latency_ms:.3f} ms p50"
    if cache is not None:
        _write_cache(cache, best, expanded)
    return _attach(model, expanded)


def _from_cache(cache: Path, cands: list[Candidate], opener: Callable[[Candidate], Model]) -> Model | None:
    try:
        data = json.loads(cache.read_text())
        runtime, delegate, threads = data["runtime"], data["delegate"], int(data["threads"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    match = next((c for c in cands if (c.runtime, c.delegate) == (runtime, delegate) and c.status == "untried"), None)
    if match is None:
        return None  # the cached choice is no longer a candidate here (config or install changed)
    match.threads = threads
    try:
        model = opener(match)
    except (RuntimeUnavailable, ModelLoadError) as exc:
        log.warning("autotune cache %s: cached choice %s/%s no longer loads (%s); re-tuning",
                    cache.name, runtime, delegate, first_line(exc))
        return None
    match.status, match.latency_ms = "chosen", data.get("latency_ms")
    match.reason = f"autotune cache hit ({cache.name})"
    for cand in cands:
        if cand is not match and cand.status == "untried":
            cand.status, cand.reason = "skipped", "autotune cache chose another candidate"
    return _attach(model, cands)


def _write_cache(cache: Path, best: Candidate, expanded: list[Candidate]) -> None:
    record = {"runtime": best.runtime, "delegate": best.delegate, "threads": best.threads,
              "latency_ms": best.latency_ms, "timed": [c.to_dict() for c in expanded], "at": time.time()}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(cache)
    except OSError as exc:
        log.warning("autotune result not cached (%s): %s", cache, exc)
