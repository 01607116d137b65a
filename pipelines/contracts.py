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
# Collaborative factors (pipelines.factors): fixed slots, as the Feast schema needs. Only
# their dot product (``als_score``) is a model input. 32, not 16: on ML-1M the model's
# three-order mean NDCG@10 went from 0.4883 to 0.4970, every order above every one at 16.
ALS_RANK = 32
USER_FACTORS = [f"als_u{k:02d}" for k in range(ALS_RANK)]
ITEM_FACTORS = [f"als_i{k:02d}" for k in range(ALS_RANK)]
# Content vectors (pipelines.factors): TF-IDF of an item's title words and topics, reduced by
# PCA; a user's is the recency-weighted mean of the items it engaged with. Only their cosine
# (``content_sim``) is a model input. They live in the factor views, beside the ALS factors.
CONTENT_DIM = 16
USER_CONTENT = [f"cv_u{k:02d}" for k in range(CONTENT_DIM)]
ITEM_CONTENT = [f"cv_i{k:02d}" for k in range(CONTENT_DIM)]
# A user's recent taste in the ALS item space: the mean ALS factors of the items of its
# latest RECENT_ITEMS engagements. Only its cosine with the item's factors (``recent_sim``)
# is a model input.
RECENT_ITEMS = 20
USER_RECENT = [f"rp_u{k:02d}" for k in range(ALS_RANK)]
USER_VECTORS = USER_FACTORS + USER_CONTENT + USER_RECENT  # the columns of the user factor view
ITEM_VECTORS = ITEM_FACTORS + ITEM_CONTENT


def column_span(columns: list[str], names: list[str]) -> slice:
    """Where the contiguous ``names`` sit in a row laid out as ``columns``: the vectors'
    positions by name, so that no reader assumes two of them have the same width."""
    start = columns.index(names[0])
    if columns[start : start + len(names)] != names:
        raise ValueError(f"{names[0]}..{names[-1]} are not contiguous in the row")
    return slice(start, start + len(names))


ON_DEMAND_FEATURES: list[str] = ["genre_match", "als_score", "content_sim", "recent_sim"]
USER_AFFINITY = [f"user_aff_{g}" for g in GENRE_SLOTS]
ITEM_GENRES = [f"item_genre_{g}" for g in GENRE_SLOTS]

# Feast object names (features/ defines them; everything else refers to them by name).
USER_VIEW = "user_activity_fv"
ITEM_VIEW = "item_stats_fv"
USER_FACTOR_VIEW = "user_factors_fv"
ITEM_FACTOR_VIEW = "item_factors_fv"
ODFV = "user_item_match_odfv"
ALS_ODFV = "user_item_als_odfv"
CONTENT_ODFV = "user_item_content_odfv"
RECENT_ODFV = "user_item_recent_odfv"
ONLINE_VIEWS = (USER_VIEW, ITEM_VIEW, USER_FACTOR_VIEW, ITEM_FACTOR_VIEW)
FEATURE_SERVICE = "ranker_v1"
# The TTL of both feature views: a snapshot older than this at the query time counts as
# missing. Part of the repo's definitions (the same in every environment); training,
# serving and the skew check read it from Feast's registry.
FEATURE_TTL = timedelta(days=365)

# The signals the run report ablates: each is retrained without these inputs (set missing)
# and scored on the same holdout, to show what it adds on its own.
SIGNALS: dict[str, list[str]] = {
    "collaborative": ["als_score", "recent_sim"],
    "content": ["content_sim"],
}

# The model's input columns, in order.
MODEL_FEATURES: list[str] = USER_FEATURES + ITEM_FEATURES + ON_DEMAND_FEATURES

# The score the popularity baseline and the cold-start path use.
POPULARITY_FEATURE = "item_pop_30d"


def feature_refs() -> list[str]:
    """Feast ``view:feature`` references for every model input."""
    return (
        [f"{USER_VIEW}:{f}" for f in USER_FEATURES]
        + [f"{ITEM_VIEW}:{f}" for f in ITEM_FEATURES]
        + [f"{ODFV}:genre_match", f"{ALS_ODFV}:als_score", f"{CONTENT_ODFV}:content_sim"]
        + [f"{RECENT_ODFV}:recent_sim"]
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


def _user_item(features: pd.DataFrame, name: str, values, user: list[str], item: list[str]):
    """One on-demand column: ``values`` of the user's and the item's columns, row-wise."""
    out = pd.DataFrame(index=features.index)
    out[name] = values(
        features[user].to_numpy(dtype="float64"), features[item].to_numpy(dtype="float64")
    )
    return out


def als_score(features: pd.DataFrame) -> pd.DataFrame:
    """The collaborative score: the dot product of the user's and the item's ALS factors.
    A cold user or item (no factors) gives NaN, which the model treats as missing."""
    return _user_item(features, "als_score", als_score_values, USER_FACTORS, ITEM_FACTORS)


def als_score_values(user: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Row-wise ``user . item``; ``user`` may be one row for all items."""
    return genre_match_values(user, items)


def content_sim(features: pd.DataFrame) -> pd.DataFrame:
    """The content signal: the cosine of the user's and the item's content vectors. A user
    with no engaged items, or an item without text or topics, gives NaN (missing)."""
    return _user_item(features, "content_sim", cosine_values, USER_CONTENT, ITEM_CONTENT)


def recent_sim(features: pd.DataFrame) -> pd.DataFrame:
    """The recent-taste score: the cosine of the user's recent profile (the mean ALS factors
    of its latest engaged items) and the item's ALS factors. NaN for a cold side."""
    return _user_item(features, "recent_sim", cosine_values, USER_RECENT, ITEM_FACTORS)


def cosine_values(user: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Row-wise cosine; ``user`` may be one row for all items. A zero vector gives NaN."""
    user = np.asarray(user, dtype="float64")
    items = np.asarray(items, dtype="float64")
    norms = np.linalg.norm(user, axis=-1) * np.linalg.norm(items, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norms > 0, genre_match_values(user, items) / norms, np.nan)
