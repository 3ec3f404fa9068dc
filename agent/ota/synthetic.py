"""Synthetic inputs that match a model's signature: for test-loading, warm-up and baselines."""

from __future__ import annotations

import numpy as np

from edgefleet.agent.wire import TensorSpec


def synthetic_feeds(specs: list[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = tuple(1 if dim is None or dim < 0 else dim for dim in spec.shape)
        dtype = np.dtype(spec.dtype)
        if np.issubdtype(dtype, np.floating):
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[spec.name] = np.zeros(shape, dtype=dtype)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=dtype)
    return feeds
