"""The API's contract: the request and response models of the routes, and their limits.

Apart from the service so that it can be imported without BentoML (the benchmarks' floor
server, the tests of the lean route): importing ``serving.service`` registers its metrics.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from pydantic import BaseModel, ConfigDict, Field

MAX_ITEMS = 1000
# The largest request body the API routes read (serving.guard answers 413 past it): 1000
# item ids of up to a few hundred characters fit with room to spare.
MAX_BODY_BYTES = 1 << 20


class RankRequest(BaseModel):
    """Rank ``item_ids`` for ``user_id``; return the best ``k`` (all if omitted)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    user_id: str = Field(min_length=1, description="External user id.")
    item_ids: list[str] = Field(
        min_length=1, max_length=MAX_ITEMS, description="External item ids to rank."
    )
    k: int | None = Field(default=None, ge=1, description="How many items to return.")


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RankResponse(BaseModel):
    model_version: str = Field(description="The BentoML tag of the model that scored.")
    items: list[ScoredItem] = Field(description="Known items, best first, at most k.")
    unknown_item_ids: list[str] = Field(description="Requested items with no internal id.")
    fallback: bool = Field(
        description="True when the user is unknown, or the online store could not be read: "
        "scored by popularity."
    )
    online_store_unavailable: bool = Field(
        default=False,
        description="The online store did not answer: popularity from the item features "
        "held in memory, no user features.",
    )
    stale_user: bool = Field(
        default=False,
        description="The user's features were older than their TTL: scored as missing.",
    )
    stale_item_ids: list[str] = Field(
        default_factory=list, description="Items whose features were older than their TTL."
    )


class ModelVersionResponse(BaseModel):
    model_version: str
    metadata: dict[str, Any]


class LeanRankRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``RankRequest`` for ``serving.lean``'s route: msgspec's strict decoding takes a
    subset of the bodies ``RankRequest`` takes (``tests/test_lean.py``), and hands every
    other body to BentoML's route, which words its 4xx."""

    user_id: Annotated[str, msgspec.Meta(min_length=1)]
    item_ids: Annotated[list[str], msgspec.Meta(min_length=1, max_length=MAX_ITEMS)]
    k: Annotated[int, msgspec.Meta(ge=1)] | None = None
