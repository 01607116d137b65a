"""The synthetic impression feed: determinism, format, label, planted signal, chunking, memory."""

from __future__ import annotations

import filecmp
import tracemalloc
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines import catalog
from pipelines.config import Settings
from pipelines.data import bootstrap, read_generic, with_dataset_rating_range
from pipelines.evaluation import per_query_metrics, summarise
from pipelines.synth import (
    DAY,
    INTERACTIONS_SCHEMA,
    TOPICS,
    SynthConfig,
    engagement_label,
    expected_gain,
    generate,
)

EVENTS = 30_000
FRAMES = (catalog.INTERACTIONS, catalog.ITEMS, catalog.USERS)
FILES = (*FRAMES, catalog.SYNTH_FACTS)


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("feed")
    generate(SynthConfig(events=EVENTS, seed=7), out)
    return out


@pytest.fixture(scope="module")
def impressions(feed: Path) -> pd.DataFrame:
    frame = pd.read_parquet(catalog.INTERACTIONS.path(feed))
    frame["day"] = frame["timestamp"] // DAY
    frame["query_id"] = frame["user_id"] + "@" + frame["day"].astype(str)
    return frame


def test_same_seed_gives_the_same_bytes(feed: Path, tmp_path: Path) -> None:
    generate(SynthConfig(events=EVENTS, seed=7), tmp_path)
    # no temp file left
    assert sorted(tmp_path.iterdir()) == sorted(entry.path(tmp_path) for entry in FILES)
    for entry in FILES:
        assert filecmp.cmp(entry.path(feed), entry.path(tmp_path), shallow=False), entry.template


def test_another_seed_gives_another_feed(feed: Path, tmp_path: Path) -> None:
    generate(SynthConfig(events=EVENTS, seed=8), tmp_path)
    for entry in FRAMES:
        assert not filecmp.cmp(entry.path(feed), entry.path(tmp_path), shallow=False), (
            entry.template
        )


def test_generic_format_and_schema(feed: Path, impressions: pd.DataFrame) -> None:
    frames = read_generic(feed)
    inter = frames["interactions"]
    assert set(frames) == {"interactions", "items", "users"}
    schema = pq.read_schema(catalog.INTERACTIONS.path(feed)).remove_metadata()
    assert schema == INTERACTIONS_SCHEMA
    assert inter["user_id"].dtype == "string" and inter["item_id"].dtype == "string"
    assert inter["timestamp"].dtype == "int64" and inter["rating"].dtype == "float64"
    assert EVENTS * 0.98 <= len(inter) <= EVENTS  # short only where a session ran out of items
    assert set(inter["rating"].unique()) == {0.0, 1.0, 2.0, 3.0}
    assert (np.diff(inter["timestamp"].to_numpy()) >= 0).all()  # sorted through the file

    items, users = frames["items"], frames["users"]
    assert list(items.columns) == [
        "item_id", "title", "genres", "year", "creator_id", "duration_s", "upload_ts",
    ]  # fmt: skip
    assert list(users.columns) == ["user_id", "signup_ts", "region"]
    assert items["item_id"].is_unique and users["user_id"].is_unique
    assert set(items["genres"].str.split("|").explode()) <= set(TOPICS)
    upload_year = pd.to_datetime(items["upload_ts"], unit="s", utc=True).dt.year
    assert (items["year"] == upload_year).all()

    facts = catalog.SYNTH_FACTS.load(feed)
    assert facts.first_date == date(2026, 1, 2) and facts.last_date == date(2026, 6, 30)
    days = pd.to_datetime(inter["timestamp"], unit="s", utc=True).dt.date
    assert days.min() == facts.first_date and days.max() == facts.last_date


def test_nobody_sees_an_item_before_its_upload_or_their_signup(
    feed: Path, impressions: pd.DataFrame
) -> None:
    items = pd.read_parquet(catalog.ITEMS.path(feed)).set_index("item_id")
    users = pd.read_parquet(catalog.USERS.path(feed)).set_index("user_id")
    ts = impressions["timestamp"].to_numpy()
    assert (ts > items.loc[impressions["item_id"], "upload_ts"].to_numpy()).all()
    assert (ts > users.loc[impressions["user_id"], "signup_ts"].to_numpy()).all()
    # Uploads and signups happen through the window, not all before it.
    start = ts.min() // DAY * DAY
    assert (items["upload_ts"] >= start).mean() > 0.5 and (users["signup_ts"] >= start).mean() > 0.5


def test_impressions_form_sessions_and_users_come_back(impressions: pd.DataFrame) -> None:
    sessions = impressions.groupby("query_id")
    assert sessions.size().median() >= 10
    assert (sessions["rating"].apply(lambda r: (r > 0).sum())).median() >= 2
    assert not impressions.duplicated(["query_id", "item_id"]).any()  # an item once per session
    assert impressions.groupby("user_id")["day"].nunique().median() >= 5
    assert 0.5 < (impressions["rating"] == 0).mean() < 0.9  # mostly shown and skipped


def test_rating_is_the_label_of_the_engagement_columns(impressions: pd.DataFrame) -> None:
    label = engagement_label(
        impressions["watch_fraction"],
        impressions["completed"],
        impressions["liked"],
        impressions["shared"],
    )
    assert (label == impressions["rating"].to_numpy()).all()
    assert (impressions["skipped"] == (impressions["watch_fraction"] < 0.2)).all()
    assert (impressions.loc[impressions["completed"], "watch_fraction"] == 1.0).all()


@pytest.mark.parametrize(
    ("watch", "completed", "liked", "shared", "label"),
    [
        (0.05, False, False, False, 0.0),  # skipped
        (0.19, False, False, False, 0.0),
        (0.35, False, False, False, 0.0),  # 20-50 %: watched, but less than half
        (0.5, False, False, False, 1.0),
        (0.9, False, False, False, 1.0),
        (1.0, True, False, False, 2.0),
        (1.0, True, True, False, 3.0),
        (0.6, False, False, True, 3.0),
        (0.1, False, True, False, 3.0),  # an explicit like wins over a short watch
    ],
)
def test_engagement_label(
    watch: float, completed: bool, liked: bool, shared: bool, label: float
) -> None:
    assert engagement_label([watch], [completed], [liked], [shared]).tolist() == [label]


def test_p_engage_is_calibrated_and_orders_the_expected_gain(impressions: pd.DataFrame) -> None:
    assert (np.diff(expected_gain(np.linspace(0, 1, 101))) > 0).all()
    deciles = pd.qcut(impressions["p_engage"], 10, labels=False)
    by_decile = impressions.groupby(deciles)
    mean_rating = by_decile["rating"].mean().to_numpy()
    assert (np.diff(mean_rating) > 0).all()
    engaged = by_decile["rating"].apply(lambda r: (r > 0).mean())
    assert np.abs(engaged - by_decile["p_engage"].mean()).max() < 0.03  # P(rating > 0) = p


def _ndcg(frame: pd.DataFrame, score: str) -> float:
    return summarise(per_query_metrics(frame.assign(label=frame["rating"]), score, seed=0))[
        "ndcg@10"
    ]


def test_the_planted_signal_is_real_and_partly_learnable(
    feed: Path, impressions: pd.DataFrame
) -> None:
    """Ranking each (user, day) by p_engage beats random clearly; history-based scores beat it too."""
    last = impressions["day"].max()
    past = impressions[impressions["day"] <= last - 30]
    holdout = impressions[impressions["day"] > last - 30].copy()
    holdout["random"] = np.random.default_rng(0).random(len(holdout))
    # The user's share of past impressions in the item's topics (the genre-affinity feature).
    items = pd.read_parquet(catalog.ITEMS.path(feed)).set_index("item_id")
    topics = items["genres"].str.get_dummies("|").reindex(columns=list(TOPICS), fill_value=0)
    topics = topics.div(topics.sum(axis=1), axis=0)
    affinity = topics.loc[past["item_id"]].groupby(past["user_id"].to_numpy()).sum()
    affinity = affinity.div(affinity.sum(axis=1), axis=0)
    user_aff = affinity.reindex(holdout["user_id"]).fillna(0.0).to_numpy()
    holdout["genre_match"] = (user_aff * topics.loc[holdout["item_id"]].to_numpy()).sum(axis=1)

    oracle, random = _ndcg(holdout, "p_engage"), _ndcg(holdout, "random")
    assert oracle > random + 0.15
    assert _ndcg(holdout, "genre_match") > random + 0.05


def test_chunk_size_changes_row_groups_not_content(feed: Path, tmp_path: Path) -> None:
    generate(SynthConfig(events=EVENTS, seed=7, chunk_rows=100), tmp_path)
    small, big = (
        pq.ParquetFile(catalog.INTERACTIONS.path(tmp_path)),
        pq.ParquetFile(catalog.INTERACTIONS.path(feed)),
    )
    assert small.metadata.num_row_groups > 100 > big.metadata.num_row_groups
    assert small.read().equals(big.read())


def _peak_bytes(events: int, out: Path) -> int:
    tracemalloc.start()
    try:
        generate(SynthConfig(events=events, seed=3, days=20, chunk_rows=4096), out)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_does_not_grow_with_events(tmp_path: Path) -> None:
    """20 days, so both sizes fill whole blocks of sessions each day; 4x the events, same peak."""
    _peak_bytes(5_000, tmp_path / "warm")  # imports and caches out of the measurement
    small = _peak_bytes(40_000, tmp_path / "small")
    large = _peak_bytes(160_000, tmp_path / "large")
    assert large < 1.5 * small, (small, large)


def test_bootstrap_lands_daily_partitions_and_records_the_label_range(
    feed: Path, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, dataset=str(feed))
    facts = bootstrap(settings)
    assert facts.rating_min == 0.0 and facts.rating_max == 3.0
    assert facts.partitions == 180 and facts.last_date == date(2026, 6, 30)
    assert len(catalog.LANDING.dates(settings)) == 180
    assert facts.genres and set(facts.genres) <= set(TOPICS)

    widened = with_dataset_rating_range(settings)
    assert (widened.rating_min, widened.rating_max) == (0.0, 5.0)


def test_a_movielens_range_keeps_the_configured_bounds(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert with_dataset_rating_range(settings) is settings  # no dataset facts yet
    catalog.DATASET_FACTS.save(
        settings,
        catalog.DatasetFacts(
            name="ml-1m-like",
            rows=3,
            users=2,
            items=2,
            first_date=date(2000, 4, 25),
            last_date=date(2000, 4, 26),
            partitions=2,
            genres=["Drama"],
            rating_min=1.0,
            rating_max=5.0,
        ),
    )
    kept = with_dataset_rating_range(settings)
    assert (kept.rating_min, kept.rating_max) == (0.5, 5.0)


@pytest.mark.integration
def test_a_landed_synth_partition_passes_the_raw_contract(feed: Path, tmp_path: Path) -> None:
    """Labels 0..3 fail the configured 0.5..5 range, and pass once widened by the facts."""
    from pipelines.validation import validate_interactions

    settings = Settings(data_dir=tmp_path, dataset=str(feed))
    day = bootstrap(settings).last_date
    part = pd.read_parquet(catalog.LANDING.path(settings, date=day))
    part = part.assign(partition_date=day.isoformat())

    def check(config: Settings) -> dict:
        return validate_interactions(part, partition_dates=[day], settings=config, run_name="synth")

    assert check(with_dataset_rating_range(settings))["passed"] is True
    assert check(settings)["passed"] is False


def test_bootstrap_writes_the_truth_of_the_sampled_users_and_only_with_p_engage(
    feed: Path, impressions: pd.DataFrame, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, dataset=str(feed), sample_users=40)
    bootstrap(settings)
    dataset = catalog.dataset_dir(settings)
    truth = pd.read_parquet(catalog.TRUTH.path(dataset))
    sampled = pd.read_parquet(catalog.INTERACTIONS.path(dataset))

    assert truth.columns.tolist() == ["user_id", "item_id", "day", "p_engage"]
    assert tuple(truth.columns) == catalog.TRUTH.columns
    assert set(truth["user_id"]) == set(sampled["user_id"]) and sampled["user_id"].nunique() == 40
    keys = sampled.assign(day=sampled["timestamp"] // DAY)[["user_id", "item_id", "day"]]
    assert len(truth) == len(keys.drop_duplicates())
    expected = impressions[impressions["user_id"].isin(set(sampled["user_id"]))]
    expected = expected.drop_duplicates(["user_id", "item_id", "day"], keep="last")
    merged = truth.merge(expected, on=["user_id", "item_id", "day"], suffixes=("", "_src"))
    assert len(merged) == len(truth)
    np.testing.assert_allclose(merged["p_engage"], merged["p_engage_src"], rtol=1e-6)

    # An ML-1M-style data set (the four standard columns) has no truth: none is written, and
    # the earlier data set's is gone.
    source = tmp_path / "ratings"
    source.mkdir()
    impressions[["user_id", "item_id", "rating", "timestamp"]].to_parquet(
        catalog.INTERACTIONS.path(source)
    )
    bootstrap(Settings(data_dir=tmp_path, dataset=str(source), sample_users=40))
    assert catalog.INTERACTIONS.exists(dataset)
    assert not catalog.TRUTH.exists(dataset)
