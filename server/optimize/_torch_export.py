"""TorchScript → ONNX on the server, so PyTorch models reach every device class."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

OPSET = 17


def export_torchscript(src: Path, dst: Path, samples: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """``torch.onnx.export`` of the ``torch.jit.load``-ed module, traced on sample rows, batch axis dynamic.

    Inputs keep the sample names (the module's positional order is the samples' order); outputs
    are ``output_0..`` as the TorchScript runner names them.
    """
    import torch

    module = torch.jit.load(str(src), map_location="cpu").eval()
    rows = min(2, len(next(iter(samples.values()))))
    args = tuple(torch.from_numpy(np.ascontiguousarray(v[:rows])) for v in samples.values())
    with torch.inference_mode():
        out = module(*args)
    count = len(out) if isinstance(out, (tuple, list)) else 1
    inputs, outputs = list(samples), [f"output_{i}" for i in range(count)]
    axes = {n: {0: "batch"} for n in inputs + outputs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(dst), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    return {"params": {"exporter": f"torch.onnx.export (TorchScript), torch {torch.__version__}",
                       "opset": OPSET, "inputs": inputs, "outputs": outputs, "dynamic_axes": "batch (axis 0)"}}
