"""Tensor deltas on generated models: exact round trips (ONNX, ONNX with external data, TFLite), the delta-q8
rebuild, and every way a delta can be refused (corrupt, truncated, another format version, another base)."""

from __future__ import annotations

import hashlib
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.errors import UpdateRejected
from edgefleet.agent.ota.tensordelta import PREAMBLE, UnsupportedDelta, apply_files, apply_tensor_delta
from edgefleet.server.tensordelta import build_tensor_delta
from edgefleet.server.tensors import NotParsable, read_layout
from tests.ota.tensormodels import fine_tuned, make_onnx_mlp, make_tflite_mlp, mlp_reference, mlp_weights

X = np.random.default_rng(7).standard_normal((16, 32)).astype(np.float32)


def _ort(path: Path) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["scores"], {"x": X})[0])


def _litert(path: Path) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    rows = []
    for row in X:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], row[None])
        interpreter.invoke()
        rows.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0].copy())
    return np.stack(rows)


def _round_trip(base: Path, target: Path, tmp: Path) -> tuple[Path, object]:
    delta = tmp / "delta.eftd"
    stats = build_tensor_delta(read_layout(base), read_layout(target), delta)
    out = tmp / f"rebuilt{target.suffix}"
    apply_tensor_delta(base, delta, out)
    assert out.read_bytes() == target.read_bytes()
    return delta, stats


@pytest.mark.parametrize("constants", [False, True])
def test_onnx_fine_tune_round_trip_is_exact_and_smaller_than_the_model(tmp_path: Path, constants: bool) -> None:
    weights = mlp_weights(1)
    tuned = fine_tuned(weights, 2)
    base = make_onnx_mlp(tmp_path / "v1.onnx", weights, constants=constants)
    target = make_onnx_mlp(tmp_path / "v2.onnx", tuned, constants=constants)
    delta, stats = _round_trip(base, target, tmp_path)
    assert stats.changed == 3 and stats.tensors == 3  # w1, w2, b1 (b2 is 32 bytes: in the skeleton)
    assert delta.stat().st_size < 0.75 * target.stat().st_size
    np.testing.assert_allclose(_ort(tmp_path / "rebuilt.onnx"), mlp_reference(tuned, X), rtol=1e-4, atol=1e-5)


def test_onnx_last_layer_retrained_sends_only_that_layer(tmp_path: Path) -> None:
    weights = mlp_weights(1, hidden=256)
    retrained = dict(weights, w2=mlp_weights(9, hidden=256)["w2"])
    base = make_onnx_mlp(tmp_path / "v1.onnx", weights)
    target = make_onnx_mlp(tmp_path / "v2.onnx", retrained)
    delta, stats = _round_trip(base, target, tmp_path)
    assert (stats.changed, stats.unchanged) == (1, 2)
    assert stats.changed_bytes == retrained["w2"].nbytes
    assert delta.stat().st_size <= 1.1 * retrained["w2"].nbytes


def test_onnx_with_external_data_rebuilds_the_model_and_its_data_file(tmp_path: Path) -> None:
    weights = mlp_weights(3)
    tuned = fine_tuned(weights, 4)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "out").mkdir()
    base = make_onnx_mlp(tmp_path / "a/model.onnx", weights, external="model.weights")
    target = make_onnx_mlp(tmp_path / "b/model.onnx", tuned, external="model.weights")
    base_layout, target_layout = read_layout(base), read_layout(target)
    assert [p.name for p in target_layout.files] == ["model.onnx", "model.weights"]
    assert {t.file for t in target_layout.tensors} == {1}  # every tensor's data is in the external file
    delta = tmp_path / "delta.eftd"
    build_tensor_delta(base_layout, target_layout, delta)
    outputs = [tmp_path / "out/model.onnx", tmp_path / "out/model.weights"]
    apply_files(base_layout.files, delta, outputs)
    for rebuilt, wanted in zip(outputs, target_layout.files, strict=True):
        assert rebuilt.read_bytes() == wanted.read_bytes()
    np.testing.assert_allclose(_ort(outputs[0]), mlp_reference(tuned, X), rtol=1e-4, atol=1e-5)


def test_onnx_renamed_and_reshaped_tensors_travel_as_literals(tmp_path: Path) -> None:
    weights = mlp_weights(5)
    bigger = mlp_weights(6, hidden=80)  # every shape changes: nothing matches
    base = make_onnx_mlp(tmp_path / "v1.onnx", weights)
    target = make_onnx_mlp(tmp_path / "v2.onnx", bigger)
    _, stats = _round_trip(base, target, tmp_path)
    assert stats.new == 3 and stats.unchanged == stats.changed == 0


def test_tflite_round_trip_is_exact_and_runs(tmp_path: Path) -> None:
    weights = mlp_weights(11)
    tuned = fine_tuned(weights, 12)
    base = make_tflite_mlp(tmp_path / "v1.tflite", weights)
    target = make_tflite_mlp(tmp_path / "v2.tflite", tuned)
    layout = read_layout(target)
    assert {t.key for t in layout.tensors} == {"0:dense1/kernel", "0:dense1/bias", "0:dense2/kernel"}
    _, stats = _round_trip(base, target, tmp_path)
    assert stats.changed == 3
    np.testing.assert_allclose(_litert(tmp_path / "rebuilt.tflite"), mlp_reference(tuned, X), rtol=1e-4, atol=1e-5)


def test_q8_delta_rebuilds_the_variant_it_wrote(tmp_path: Path) -> None:
    weights = mlp_weights(21)
    tuned = fine_tuned(weights, 22, relative=1e-2)
    base = make_onnx_mlp(tmp_path / "v1.onnx", weights)
    target = make_onnx_mlp(tmp_path / "v2.onnx", tuned)
    delta, variant = tmp_path / "q8.eftd", tmp_path / "variant.onnx"
    stats = build_tensor_delta(read_layout(base), read_layout(target), delta, q8=True, variant_out=[variant])
    assert stats.quantized == 3
    exact = tmp_path / "exact.eftd"
    build_tensor_delta(read_layout(base), read_layout(target), exact)
    assert delta.stat().st_size < 0.6 * exact.stat().st_size
    apply_tensor_delta(base, delta, tmp_path / "rebuilt.onnx")
    assert (tmp_path / "rebuilt.onnx").read_bytes() == variant.read_bytes() != target.read_bytes()
    np.testing.assert_allclose(_ort(variant), mlp_reference(tuned, X), rtol=0, atol=2e-3)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    weights = mlp_weights(31)
    base = make_onnx_mlp(tmp_path / "v1.onnx", weights)
    target = make_onnx_mlp(tmp_path / "v2.onnx", fine_tuned(weights, 32))
    delta = tmp_path / "delta.eftd"
    build_tensor_delta(read_layout(base), read_layout(target), delta)
    return base, target, delta


def _refused(base: Path, delta: Path, out: Path, match: str, error: type[Exception] = UpdateRejected) -> str:
    with pytest.raises(error, match=match) as info:
        apply_tensor_delta(base, delta, out)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_corrupt_payload_is_refused(pair: tuple[Path, Path, Path], tmp_path: Path) -> None:
    base, _target, delta = pair
    data = bytearray(delta.read_bytes())
    data[-40] ^= 0x55  # inside the last tensor's zstd frame
    (tmp_path / "bad").write_bytes(bytes(data))
    _refused(base, tmp_path / "bad", tmp_path / "out", "tensor delta refused")


def test_a_corrupt_or_truncated_header_is_refused(pair: tuple[Path, Path, Path], tmp_path: Path) -> None:
    base, _target, delta = pair
    data = delta.read_bytes()
    (tmp_path / "short").write_bytes(data[: len(data) - 7])
    _refused(base, tmp_path / "short", tmp_path / "out", "the patch and payload need")
    garbled = bytearray(data)
    garbled[PREAMBLE.size + 3] ^= 0xFF
    (tmp_path / "garbled").write_bytes(bytes(garbled))
    _refused(base, tmp_path / "garbled", tmp_path / "out", "tensor delta refused")
    (tmp_path / "magic").write_bytes(b"BSDIFF40" + data[8:])
    _refused(base, tmp_path / "magic", tmp_path / "out", "not a tensor delta")


def test_an_unknown_format_version_is_refused_in_one_line(pair: tuple[Path, Path, Path], tmp_path: Path) -> None:
    base, _target, delta = pair
    data = bytearray(delta.read_bytes())
    struct.pack_into("<H", data, 4, 2)
    (tmp_path / "v2").write_bytes(bytes(data))
    message = _refused(base, tmp_path / "v2", tmp_path / "out", "format version 2 is not supported",
                       UnsupportedDelta)
    assert message == "tensor delta format version 2 is not supported (this agent reads version 1)"


def test_another_base_is_refused(pair: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _base, _target, delta = pair
    other = make_onnx_mlp(tmp_path / "other.onnx", mlp_weights(99))
    _refused(other, delta, tmp_path / "out", "does not match its sha256")
    make_onnx_mlp(tmp_path / "bigger.onnx", mlp_weights(99, hidden=65))
    _refused(tmp_path / "bigger.onnx", delta, tmp_path / "out", "the delta expects")


def test_not_a_model_is_not_parsable(tmp_path: Path) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"\x08" + bytes(range(200)))
    with pytest.raises(NotParsable):
        read_layout(tmp_path / "junk.onnx")
    (tmp_path / "text").write_bytes(b"hello")
    with pytest.raises(NotParsable, match="neither ONNX nor TFLite"):
        read_layout(tmp_path / "text")


def test_rebuild_memory_is_bounded_by_chunks_not_by_the_model(tmp_path: Path) -> None:
    """A 48 MB model rebuilt with Python-level allocations (numpy included) a fraction of its size."""
    weights = mlp_weights(41, inputs=1024, hidden=12288)
    base = make_onnx_mlp(tmp_path / "v1.onnx", weights)
    target = make_onnx_mlp(tmp_path / "v2.onnx", fine_tuned(weights, 42))
    delta = tmp_path / "delta.eftd"
    build_tensor_delta(read_layout(base), read_layout(target), delta, level=3)
    tracemalloc.start()
    try:
        apply_tensor_delta(base, delta, tmp_path / "out.onnx")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = target.stat().st_size
    assert size > 48e6
    assert peak < 12e6, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.0f} MB model"
    assert hashlib.sha256((tmp_path / "out.onnx").read_bytes()).digest() == hashlib.sha256(target.read_bytes()).digest()


def test_a_payload_asking_for_a_larger_zstd_window_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decoder's memory is bounded too: a frame declaring a 32 MiB window is refused, not allocated."""
    import edgefleet.server.tensordelta as server_tensordelta

    weights = mlp_weights(51)
    base = make_onnx_mlp(tmp_path / "v1.onnx", weights)
    target = make_onnx_mlp(tmp_path / "v2.onnx", fine_tuned(weights, 52))
    monkeypatch.setattr(server_tensordelta, "WINDOW_LOG", 25)
    build_tensor_delta(read_layout(base), read_layout(target), tmp_path / "wide.eftd")
    _refused(base, tmp_path / "wide.eftd", tmp_path / "out", "does not decompress")
