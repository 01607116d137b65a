"""Feature services: one per model version."""

from feast import FeatureService

from features.item import item_stats_fv
from features.on_demand import user_item_match_odfv
from features.user import user_activity_fv
from pipelines import contracts

ranker_v1 = FeatureService(
    name=contracts.FEATURE_SERVICE,
    features=[user_activity_fv, item_stats_fv, user_item_match_odfv],
    description="Inputs of the XGBoost ranker, v1.",
    owner="ranking@content-ranker",
)
