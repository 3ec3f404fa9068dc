from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest

from tests.quality.support import classifier

Infer = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("quality-models")


@pytest.fixture(scope="session")
def serving(models_dir: Path) -> Infer:
    return classifier(models_dir, seed=0)


@pytest.fixture(scope="session")
def twin(models_dir: Path) -> Infer:
    """The same weights as ``serving``, in its own session (a re-exported candidate)."""
    return classifier(models_dir / "twin", seed=0)


@pytest.fixture(scope="session")
def rival(models_dir: Path) -> Infer:
    """Different weights: agrees with ``serving`` on 37 of the first 100 reference scenes."""
    return classifier(models_dir, seed=1)
