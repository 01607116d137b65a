"""User feature views."""

from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Float32, Int64

from features.data_sources import user_activity_source
from features.entities import user
from pipelines import contracts
from pipelines.config import get_settings

user_activity_fv = FeatureView(
    name=contracts.USER_VIEW,
    entities=[user],
    ttl=timedelta(days=get_settings().feature_ttl_days),
    schema=[Field(name="user_id", dtype=Int64)]
    + [Field(name=f, dtype=Float32) for f in contracts.USER_FEATURES],
    source=user_activity_source,
    online=True,
    description="Activity counts over trailing windows, mean rating and genre affinity.",
    owner="ranking@content-ranker",
    tags={"team": "ranking", "entity": "user"},
)
