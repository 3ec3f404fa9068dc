"""Where a model file keeps its tensors: name, dtype, shape and the byte span of each tensor's data.

``read_layout(path)`` parses an ONNX model (initializers, Constant nodes, subgraphs, functions; data in
``raw_data``, packed ``float_data`` / ``double_data``, or external data files beside the model) or a TFLite
flatbuffer (its buffers table, named by the tensors that use them) without loading the weights: the
file is memory-mapped and only the structure is walked. Tensor deltas (server/tensordelta.py) match
the spans of two versions; everything outside the spans is the model's "skeleton".
"""

from __future__ import annotations

from edgefleet.server.tensors._layout import ModelLayout, NotParsable, TensorSpan, read_layout

__all__ = ["ModelLayout", "NotParsable", "TensorSpan", "read_layout"]
