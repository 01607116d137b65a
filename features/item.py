"""Item feature views."""

from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Float32, Int64

from features.data_sources import item_stats_source
from features.entities import item
from pipelines import contracts
from pipelines.config import get_settings

item_stats_fv = FeatureView(
    name=contracts.ITEM_VIEW,
    entities=[item],
    ttl=timedelta(days=get_settings().feature_ttl_days),
    schema=[Field(name="item_id", dtype=Int64)]
    + [Field(name=f, dtype=Float32) for f in contracts.ITEM_FEATURES],
    source=item_stats_source,
    online=True,
    description="Popularity over trailing windows, mean rating, age and genres.",
    owner="ranking@content-ranker",
    tags={"team": "ranking", "entity": "item"},
)
