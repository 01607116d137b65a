"""On-demand user x item features: the same pandas code runs offline and online."""

import pandas as pd
from feast import Field
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64

from features.item import item_stats_fv
from features.user import user_activity_fv


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
