"""Entities: internal integer ids (external string ids are mapped in pipelines.ids)."""

from feast import Entity, ValueType

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
