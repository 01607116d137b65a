"""The contracts that training, the Feast repo and serving share.

Feature names, the order the model sees them in, and the on-demand
user x item transformation live here once, so the offline and online paths
cannot drift apart.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd

# The generic interaction format every data set is converted into.
INTERACTION_COLUMNS: dict[str, str] = {
    "user_id": "string",
    "item_id": "string",
    "rating": "float64",
    "timestamp": "int64",
}

# Genres are dataset-specific, so the Feast schema uses fixed slots; the
# slot -> genre name mapping is stored beside the data set (``genres.json``).
N_GENRE_SLOTS = 18
GENRE_SLOTS = [f"g{i:02d}" for i in range(N_GENRE_SLOTS)]

WINDOWS_DAYS = (7, 30)

USER_FEATURES: list[str] = [
    *(f"user_cnt_{w}d" for w in WINDOWS_DAYS),
    "user_cnt_all",
    "user_mean_rating",
    "user_days_since_last",
    *(f"user_aff_{g}" for g in GENRE_SLOTS),
]
ITEM_FEATURES: list[str] = [
    *(f"item_pop_{w}d" for w in WINDOWS_DAYS),
    "item_pop_all",
    "item_mean_rating",
    "item_age_years",
    *(f"item_genre_{g}" for g in GENRE_SLOTS),
]
ON_DEMAND_FEATURES: list[str] = ["genre_match"]
USER_AFFINITY = [f"user_aff_{g}" for g in GENRE_SLOTS]
ITEM_GENRES = [f"item_genre_{g}" for g in GENRE_SLOTS]

# Feast object names (features/ defines them; everything else refers to them by name).
USER_VIEW = "user_activity_fv"
ITEM_VIEW = "item_stats_fv"
ODFV = "user_item_match_odfv"
FEATURE_SERVICE = "ranker_v1"
# The TTL of both feature views: a snapshot older than this at the query time counts as
# missing. Part of the repo's definitions (the same in every environment); training,
# serving and the skew check read it from Feast's registry.
FEATURE_TTL = timedelta(days=365)

# The model's input columns, in order.
MODEL_FEATURES: list[str] = USER_FEATURES + ITEM_FEATURES + ON_DEMAND_FEATURES

# The score the popularity baseline and the cold-start path use.
POPULARITY_FEATURE = "item_pop_30d"


def feature_refs() -> list[str]:
    """Feast ``view:feature`` references for every model input."""
    return (
        [f"{USER_VIEW}:{f}" for f in USER_FEATURES]
        + [f"{ITEM_VIEW}:{f}" for f in ITEM_FEATURES]
        + [f"{ODFV}:{f}" for f in ON_DEMAND_FEATURES]
    )


def genre_match(features: pd.DataFrame) -> pd.DataFrame:
    """How much of the user's past genre mix the item's genres cover, in [0, 1].

    ``sum_g aff_g * genre_g``: the share of the user's history that falls in the
    item's genres. Missing inputs give NaN, which the model treats as missing.
    """
    aff = features[USER_AFFINITY].to_numpy(dtype="float64")
    gen = features[ITEM_GENRES].to_numpy(dtype="float64")
    out = pd.DataFrame(index=features.index)
    out["genre_match"] = genre_match_values(aff, gen)
    return out


def genre_match_values(affinity: np.ndarray, genres: np.ndarray) -> np.ndarray:
    """Row-wise ``sum_g affinity_g * genre_g``; ``affinity`` may be one row for all items."""
    aff = np.broadcast_to(np.asarray(affinity, dtype="float64"), np.shape(genres))
    return np.einsum("ij,ij->i", aff, np.asarray(genres, dtype="float64"))
