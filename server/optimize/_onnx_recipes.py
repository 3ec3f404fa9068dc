"""ONNX-to-ONNX recipes: each writes one candidate file and says what it did.

A recipe raises :class:`RecipeNotApplicable` when the model gives it nothing to do (no MatMul for
dynamic int8, no large weights to prune); the pipeline turns that into a rejection with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.server.optimize._ortlog import route_onnxruntime_logs

STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}
DYNAMIC_OPS = ["MatMul", "Gemm", "Attention", "LSTM", "GRU"]
QUANT_OPS = {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear", "ConvInteger", "QuantizeLinear",
             "DequantizeLinear", "DynamicQuantizeLSTM", "QAttention", "QGemm", "MatMulIntegerToFloat"}


class RecipeNotApplicable(Exception):
    """The recipe has nothing to do on this model; the message says why."""


def _load(path: Path) -> Any:
    import onnx

    return onnx.load(str(path))


def _save(model: Any, path: Path) -> None:
    import onnx

    onnx.save(model, str(path))


def _node_domains(graph: Any) -> set[str]:
    from onnx import AttributeProto

    found = set()
    for node in graph.node:
        found.add(node.domain or "")
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                found |= _node_domains(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    found |= _node_domains(sub)
    return found


def custom_domains(path: Path) -> list[str]:
    """Operator domains its nodes use beyond the ONNX standard (e.g. com.microsoft): only ONNX Runtime
    loads those."""
    return sorted(d for d in _node_domains(_load(path).graph) if d not in STANDARD_DOMAINS)


def _drop_unused_opsets(path: Path) -> None:
    """ONNX Runtime declares every domain it knows; keep only those the nodes use."""
    model = _load(path)
    used = _node_domains(model.graph) | {f.domain for f in model.functions}
    keep = [o for o in model.opset_import if (o.domain or "") in used or (o.domain or "") == ""]
    if len(keep) != len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(keep)
        _save(model, path)


def graph_optimize(src: Path, dst: Path, level: str = "ORT_ENABLE_BASIC") -> dict[str, Any]:
    """ONNX Runtime offline optimization: the session writes its optimized graph to ``dst``.

    BASIC keeps standard ONNX ops only (constant folding, redundant-node removal), so any
    CPU ONNX Runtime loads the result; EXTENDED adds com.microsoft fused ops; ALL adds layout
    rewrites tied to this server's CPU, which is why it is never used for artifacts.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    opts.optimized_model_filepath = str(dst)
    opts.log_severity_level = 3
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    _drop_unused_opsets(dst)
    before, after = len(_load(src).graph.node), len(_load(dst).graph.node)
    domains = custom_domains(dst)
    return {"params": {"graph_optimization_level": level, "nodes_before": before, "nodes_after": after},
            "portable": not domains, "custom_domains": domains,
            "notes": ([f"uses {', '.join(domains)} ops: loads in ONNX Runtime {ort.__version__} or newer on CPU, "
                       "not in other ONNX runtimes"] if domains else
                      ["standard ONNX ops only: loads in any ONNX Runtime"])}


def _count_quant_nodes(path: Path) -> int:
    return sum(1 for n in _load(path).graph.node if n.op_type in QUANT_OPS)


def constants_as_initializers(src: Path, dst: Path) -> int:
    """Rewrite ``Constant`` nodes as initializers (some exporters, e.g. Paddle's, keep every weight in a
    Constant node, where ONNX Runtime's quantizers do not see it). Returns how many were moved."""
    from onnx import numpy_helper

    model = _load(src)
    moved = 0
    for node in list(model.graph.node):
        value = [a.t for a in node.attribute if a.name == "value"]
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and value:
            model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(value[0]), node.output[0]))
            model.graph.node.remove(node)
            moved += 1
    _save(model, dst)
    return moved


def int8_dynamic(src: Path, dst: Path) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _quiet()
    staged = dst.with_name(dst.stem + ".init.onnx")
    try:
        moved = constants_as_initializers(src, staged)
        quantize_dynamic(str(staged), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=DYNAMIC_OPS)
    finally:
        staged.unlink(missing_ok=True)
    nodes = _count_quant_nodes(dst)
    if not nodes:
        raise RecipeNotApplicable("no MatMul/Gemm/Attention/LSTM/GRU weights to quantize: dynamic int8 is for "
                                  "MatMul-heavy models (conv models: use cpu-int8-static)")
    return {"params": {"weight_type": "int8", "op_types": DYNAMIC_OPS, "quantized_nodes": nodes,
                       "constants_moved_to_initializers": moved}}


def _reader(samples: Mapping[str, np.ndarray]) -> Any:
    """An onnxruntime CalibrationDataReader over sample rows (one row per call, batch axis kept)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            count = len(next(iter(samples.values())))
            self._all = [{k: v[i:i + 1] for k, v in samples.items()} for i in range(count)]
            self._rows: Iterator[dict[str, np.ndarray]] = iter(self._all)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._rows, None)

        def rewind(self) -> None:
            self._rows = iter(self._all)

    return Reader()


def int8_static(src: Path, dst: Path, samples: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """QDQ int8 calibrated on ``samples``. Quantizer settings are tried in order (pre-processed graph with
    per-channel weights first); the first whose output loads in ONNX Runtime is kept."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    _quiet()
    notes: list[str] = []
    prepared = dst.with_name(dst.stem + ".pre.onnx")
    sources = [src]
    try:
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        sources.insert(0, prepared)
    except Exception as exc:  # pre-processing is an optimisation only; quantize the original instead
        notes.append(f"quantization pre-processing skipped: {str(exc).splitlines()[0][:200]}")
    attempts = [(s, pc) for s in sources for pc in (True, False)]
    chosen: tuple[Path, bool] | None = None
    try:
        for source, per_channel in attempts:
            try:
                quantize_static(str(source), str(dst), _reader(samples), quant_format=QuantFormat.QDQ,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                per_channel=per_channel)
                ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
            except Exception as exc:  # this quantizer setting failed on this graph: try the next
                notes.append(f"{'pre-processed' if source == prepared else 'original'} graph, "
                             f"{'per-channel' if per_channel else 'per-tensor'}: {str(exc).splitlines()[0][:160]}")
                continue
            chosen = (source, per_channel)
            break
    finally:
        prepared.unlink(missing_ok=True)
    if chosen is None:
        raise RuntimeError("no quantizer setting produced a model ONNX Runtime loads: " + " | ".join(notes))
    nodes = _count_quant_nodes(dst)
    if not nodes:
        raise RecipeNotApplicable("static quantization found no operator to quantize")
    return {"params": {"format": "QDQ", "activations": "uint8",
                       "weights": "int8 " + ("per-channel" if chosen[1] else "per-tensor"),
                       "pre_processed": chosen[0] == prepared,
                       "calibration_rows": len(next(iter(samples.values()))), "qdq_nodes": nodes},
            "notes": notes}


def fp16(src: Path, dst: Path) -> dict[str, Any]:
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(_isolate_outputs(_load(src)), keep_io_types=True)
    _save(model, dst)
    return {"params": {"keep_io_types": True},
            "notes": ["fp16 is for GPU classes; latency on the server CPU is reported, not judged"]}


def _isolate_outputs(model: Any) -> Any:
    """Give every graph output its own Identity node, so a value that is both an output and an input
    of another node (logits → Softmax) does not trip the converter's output casts."""
    from onnx import helper

    for out in model.graph.output:
        inner = f"{out.name}__fp16_inner"
        for node in model.graph.node:
            node.output[:] = [inner if o == out.name else o for o in node.output]
            node.input[:] = [inner if i == out.name else i for i in node.input]
        model.graph.node.append(helper.make_node("Identity", [inner], [out.name]))
    return model


def _weights(model: Any, min_size: int) -> Iterator[tuple[Any, np.ndarray]]:
    """Large float weight tensors: initializers and ``Constant`` node values (as some exporters write)."""
    from onnx import numpy_helper

    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            tensors += [a.t for a in node.attribute if a.name == "value"]
    for tensor in tensors:
        arr = numpy_helper.to_array(tensor)
        if arr.dtype == np.float32 and arr.ndim >= 2 and arr.size >= min_size:
            yield tensor, arr


def _rewrite(src: Path, dst: Path, fn: Callable[[np.ndarray], np.ndarray], min_size: int) -> int:
    from onnx import numpy_helper

    model = _load(src)
    touched = 0
    for tensor, arr in list(_weights(model, min_size)):
        tensor.CopyFrom(numpy_helper.from_array(fn(arr).astype(np.float32), tensor.name))
        touched += int(arr.size)
    if not touched:
        raise RecipeNotApplicable(f"no float weight tensor with >= {min_size} values to compress")
    _save(model, dst)
    return touched


def prune(src: Path, dst: Path, sparsity: float, min_size: int = 256) -> dict[str, Any]:
    """Zero the smallest-magnitude ``sparsity`` fraction of each large weight tensor."""

    def cut(w: np.ndarray) -> np.ndarray:
        limit = np.quantile(np.abs(w), sparsity)
        return np.where(np.abs(w) <= limit, np.float32(0), w)

    touched = _rewrite(src, dst, cut, min_size)
    return {"params": {"sparsity": sparsity, "weights_touched": touched, "min_tensor_size": min_size}}


def kmeans_1d(values: np.ndarray, k: int, iters: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """Centroids and assignment of a 1-D k-means with linear initialisation (as TF-MOT does)."""
    flat = values.ravel().astype(np.float64)
    centroids = np.linspace(flat.min(), flat.max(), k)
    for _ in range(iters):
        edges = (centroids[1:] + centroids[:-1]) / 2
        labels = np.searchsorted(edges, flat)
        sums = np.bincount(labels, weights=flat, minlength=k)
        counts = np.bincount(labels, minlength=k)
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
    labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, flat)
    return centroids, labels


def cluster(src: Path, dst: Path, clusters: int, min_size: int = 256) -> dict[str, Any]:
    """Weight sharing: every value of each large weight tensor becomes one of ``clusters`` centroids."""

    def share(w: np.ndarray) -> np.ndarray:
        centroids, labels = kmeans_1d(w, clusters)
        return centroids[labels].reshape(w.shape)

    touched = _rewrite(src, dst, share, min_size)
    return {"params": {"clusters": clusters, "weights_touched": touched, "min_tensor_size": min_size}}


def _quiet() -> None:
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    route_onnxruntime_logs()
