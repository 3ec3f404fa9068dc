from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.errors import InvalidInputError, RuntimeUnavailable
from edgefleet.agent.runtime import load_model
from tests.support.models import reference_torchscript

pytestmark = pytest.mark.torch


def test_torchscript_with_signature_exact(models: dict[str, Path]) -> None:
    model = load_model(models["torchscript"], threads=1)
    assert (model.runtime, model.delegate) == ("torch", "cpu")
    assert [(s.name, s.shape) for s in model.inputs] == [("x", [None, 3])]
    x = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]], dtype=np.float32)
    out = model.infer({"x": x})
    ref = reference_torchscript(x)
    assert list(out) == ["proj", "total"]
    for name in ref:
        np.testing.assert_array_equal(out[name], ref[name])
    with pytest.raises(InvalidInputError, match=r"input 'x': expected shape \[\?,3\], got \[2,2\]"):
        model.infer({"x": np.zeros((2, 2), np.float32)})


def test_torchscript_without_signature_uses_forward_arguments(models: dict[str, Path]) -> None:
    model = load_model(models["torchscript_bare"])
    assert [s.name for s in model.inputs] == ["x"]
    assert [s.name for s in model.outputs] == ["output_0", "output_1"]
    x = np.ones((4, 3), dtype=np.float32)
    out = model.infer({"x": x})
    np.testing.assert_array_equal(out["output_0"], reference_torchscript(x)["proj"])
    assert float(out["output_1"]) == 12.0


def test_lite_interpreter_file(tmp_path: Path) -> None:
    import torch

    from tests.support.models import TORCH_WEIGHT

    class Lin(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("weight", torch.from_numpy(TORCH_WEIGHT.copy()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.weight  # type: ignore[operator]

    path = tmp_path / "m.ptl"
    torch.jit.script(Lin())._save_for_lite_interpreter(str(path))
    model = load_model(path)
    x = np.eye(3, dtype=np.float32)
    np.testing.assert_array_equal(model.infer({"x": x})["output"], TORCH_WEIGHT)


def test_pte_without_executorch_is_runtime_unavailable(tmp_path: Path) -> None:
    pte = tmp_path / "m.pte"
    pte.write_bytes((16).to_bytes(4, "little") + b"ET12" + bytes(64))
    try:
        import executorch.runtime  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeUnavailable, match="executorch"):
            load_model(pte)
    else:
        pytest.skip("executorch is installed here")


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def test_cuda_delegate_falls_back_to_the_cpu_without_a_gpu(models: dict[str, Path]) -> None:
    from edgefleet.agent.runtime.torch import cuda_status

    if _cuda():
        pytest.skip("a GPU is present: test_cuda_delegate_on_the_gpu covers it")
    usable, why = cuda_status()
    assert not usable and ("without CUDA" in why or "is_available() is False" in why)
    model = load_model(models["torchscript"], delegate="cuda", threads=1,
                       provider_options={"cuda": {"fp16": "true"}})
    assert (model.runtime, model.delegate) == ("torch", "cpu")
    first, second = model.selection[0], model.selection[1]  # type: ignore[attr-defined]
    assert (first["delegate"], first["status"]) == ("cuda", "failed") and why in first["reason"]
    assert (second["delegate"], second["status"]) == ("cpu", "chosen")
    x = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    np.testing.assert_array_equal(model.infer({"x": x})["proj"], reference_torchscript(x)["proj"])
    auto = load_model(models["torchscript"])  # auto: cuda skipped with the probe's reason, cpu chosen
    assert auto.delegate == "cpu"
    assert auto.selection[0] == {"runtime": "torch", "delegate": "cuda", "threads": auto.threads,  # type: ignore[attr-defined]
                                 "status": "skipped", "reason": why, "latency_ms": None}


def test_cuda_delegate_on_the_gpu(models: dict[str, Path]) -> None:
    if not _cuda():
        pytest.skip("no CUDA GPU for torch here")
    x = np.random.default_rng(0).standard_normal((64, 3)).astype(np.float32)
    model = load_model(models["torchscript"], threads=1)  # auto ranks cuda first
    assert model.delegate == "cuda"
    out = model.infer({"x": x})
    np.testing.assert_allclose(out["proj"], reference_torchscript(x)["proj"], rtol=1e-5, atol=1e-5)
    assert out["proj"].dtype == np.float32
    half = load_model(models["torchscript"], delegate="cuda", provider_options={"cuda": {"fp16": True}})
    assert half.delegate == "cuda" and half.fp16  # type: ignore[attr-defined]
    out16 = half.infer({"x": x})
    assert out16["proj"].dtype == np.float32
    np.testing.assert_allclose(out16["proj"], reference_torchscript(x)["proj"], rtol=2e-2, atol=2e-2)
