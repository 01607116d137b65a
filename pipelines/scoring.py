"""Turn feature frames into model input and scores: shared by evaluation and serving."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines import contracts


def to_matrix(features: pd.DataFrame, columns: list[str] | None = None) -> np.ndarray:
    """The model's input matrix (float32, NaN = missing) in ``MODEL_FEATURES`` order."""
    columns = columns or contracts.MODEL_FEATURES
    frame = features.reindex(columns=columns)
    return frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float32, na_value=np.nan)


def score(booster, matrix: np.ndarray) -> np.ndarray:
    """Ranking scores for the rows of ``matrix`` (higher = rank first)."""
    if len(matrix) == 0:
        return np.empty(0, dtype=np.float32)
    return np.asarray(booster.inplace_predict(matrix), dtype=np.float32)
