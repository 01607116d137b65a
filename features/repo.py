"""The Feast repo: the ranker's entities, offline sources, feature views, on-demand view and
feature service.

Definitions only: nothing here reads settings or the environment, so every caller (the
pipelines in-process, ``feast plan`` / ``apply`` / ``ui`` on any environment's yaml)
registers the same objects. The offline sources' paths are the catalog's templates,
relative to the data directory: ``pipelines.feature_store.open_store`` gives Feast the data
directory as its repo path, where Feast's file store resolves them, and our Spark readers
resolve them the same way (``feature_store.source_path``).

One module, because the ``feast`` CLI imports each file of a repo as a top-level module
(``user``, not ``features.user``): a sibling import (``from features.user import ...``)
would load a second copy of the objects it names, and Feast rejects the duplicate names.
"""

import pandas as pd
from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float32, Float64, Int64

from pipelines import catalog, contracts

# --- entities: internal integer ids (external string ids are mapped in pipelines.ids) ---

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.INT64,
    description="A feed user, by internal integer id.",
)

item = Entity(
    name="item",
    join_keys=["item_id"],
    value_type=ValueType.INT64,
    description="A content item, by internal integer id.",
)

# --- offline sources: parquet snapshots written by pipelines.features (Spark) ---

user_activity_source = FileSource(
    name="user_activity_source",
    path=catalog.FEATURE_TABLE.template.format(kind="user"),  # relative to the data directory
    timestamp_field="event_timestamp",
    description="Per-user snapshots; a row at day d uses only events strictly before d.",
)

item_stats_source = FileSource(
    name="item_stats_source",
    path=catalog.FEATURE_TABLE.template.format(kind="item"),  # relative to the data directory
    timestamp_field="event_timestamp",
    description="Per-item snapshots; a row at day d uses only events strictly before d.",
)

user_factors_source = FileSource(
    name="user_factors_source",
    path=catalog.FACTOR_TABLE.template.format(kind="user"),  # relative to the data directory
    timestamp_field="event_timestamp",
    description="ALS factors and content vectors of users; a snapshot at day d uses only events "
    "strictly before d.",
)

item_factors_source = FileSource(
    name="item_factors_source",
    path=catalog.FACTOR_TABLE.template.format(kind="item"),  # relative to the data directory
    timestamp_field="event_timestamp",
    description="ALS factors and content vectors of items; a snapshot at day d uses only events "
    "strictly before d.",
)

# --- feature views ---

user_activity_fv = FeatureView(
    name=contracts.USER_VIEW,
    entities=[user],
    ttl=contracts.FEATURE_TTL,
    schema=[Field(name="user_id", dtype=Int64)]
    + [Field(name=f, dtype=Float32) for f in contracts.USER_FEATURES],
    source=user_activity_source,
    online=True,
    description="Activity counts over trailing windows, mean rating and genre affinity.",
    owner="ranking@content-ranker",
    tags={"team": "ranking", "entity": "user"},
)

item_stats_fv = FeatureView(
    name=contracts.ITEM_VIEW,
    entities=[item],
    ttl=contracts.FEATURE_TTL,
    schema=[Field(name="item_id", dtype=Int64)]
    + [Field(name=f, dtype=Float32) for f in contracts.ITEM_FEATURES],
    source=item_stats_source,
    online=True,
    description="Popularity over trailing windows, mean rating, age and genres.",
    owner="ranking@content-ranker",
    tags={"team": "ranking", "entity": "item"},
)

user_factors_fv = FeatureView(
    name=contracts.USER_FACTOR_VIEW,
    entities=[user],
    ttl=contracts.FEATURE_TTL,
    schema=[Field(name="user_id", dtype=Int64)]
    + [Field(name=f, dtype=Float32) for f in contracts.USER_VECTORS],
    source=user_factors_source,
    online=True,
    description="ALS (implicit) factors, content vector and recent profile of a user; the model "
    "uses only als_score, content_sim and recent_sim.",
    owner="ranking@content-ranker",
    tags={"team": "ranking", "entity": "user", "model": "als"},
)

item_factors_fv = FeatureView(
    name=contracts.ITEM_FACTOR_VIEW,
    entities=[item],
    ttl=contracts.FEATURE_TTL,
    schema=[Field(name="item_id", dtype=Int64)]
    + [Field(name=f, dtype=Float32) for f in contracts.ITEM_VECTORS],
    source=item_factors_source,
    online=True,
    description="ALS (implicit) factors and the content vector (title and topics) of an item; "
    "the model uses only als_score and content_sim.",
    owner="ranking@content-ranker",
    tags={"team": "ranking", "entity": "item", "model": "als"},
)

# --- on-demand user x item features: the same pandas code runs offline and online ---


@on_demand_feature_view(
    sources=[user_activity_fv, item_stats_fv],
    schema=[Field(name="genre_match", dtype=Float64)],
    mode="pandas",
    description="Share of the user's genre history covered by the item's genres.",
    owner="ranking@content-ranker",
    tags={"team": "ranking"},
)
def user_item_match_odfv(inputs: pd.DataFrame) -> pd.DataFrame:
    # Feast rebuilds this function from its source text, so it imports what it uses.
    from pipelines.contracts import genre_match

    return genre_match(inputs)


@on_demand_feature_view(
    sources=[user_factors_fv, item_factors_fv],
    schema=[Field(name="als_score", dtype=Float64)],
    mode="pandas",
    description="User . item of the ALS factors: the collaborative score.",
    owner="ranking@content-ranker",
    tags={"team": "ranking", "model": "als"},
)
def user_item_als_odfv(inputs: pd.DataFrame) -> pd.DataFrame:
    # Feast rebuilds this function from its source text, so it imports what it uses.
    from pipelines.contracts import als_score

    return als_score(inputs)


@on_demand_feature_view(
    sources=[user_factors_fv, item_factors_fv],
    schema=[Field(name="content_sim", dtype=Float64)],
    mode="pandas",
    description="Cosine of the user's and the item's content vectors: the content score.",
    owner="ranking@content-ranker",
    tags={"team": "ranking", "model": "content"},
)
def user_item_content_odfv(inputs: pd.DataFrame) -> pd.DataFrame:
    # Feast rebuilds this function from its source text, so it imports what it uses.
    from pipelines.contracts import content_sim

    return content_sim(inputs)


@on_demand_feature_view(
    sources=[user_factors_fv, item_factors_fv],
    schema=[Field(name="recent_sim", dtype=Float64)],
    mode="pandas",
    description="Cosine of the user's recent profile (mean ALS factors of its latest engaged "
    "items) and the item's ALS factors: what the user is into now.",
    owner="ranking@content-ranker",
    tags={"team": "ranking", "model": "als"},
)
def user_item_recent_odfv(inputs: pd.DataFrame) -> pd.DataFrame:
    # Feast rebuilds this function from its source text, so it imports what it uses.
    from pipelines.contracts import recent_sim

    return recent_sim(inputs)


# --- feature services: one per model version ---

ranker_v1 = FeatureService(
    name=contracts.FEATURE_SERVICE,
    features=[
        user_activity_fv,
        item_stats_fv,
        user_factors_fv,
        item_factors_fv,
        user_item_match_odfv,
        user_item_als_odfv,
        user_item_content_odfv,
        user_item_recent_odfv,
    ],
    description="Inputs of the XGBoost ranker: activity, content and collaborative features.",
    owner="ranking@content-ranker",
)
