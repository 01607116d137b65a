"""The data catalog: one name per dataset, typed JSON artifacts, one atomic writer."""

from __future__ import annotations

from datetime import date

import pytest
from pydantic import ValidationError

from pipelines import catalog


def test_every_entry_has_its_own_path_and_a_model_if_json():
    entries = catalog.entries()
    templates = [(e.root, e.template) for e in entries.values()]
    assert len(templates) == len(set(templates))
    for name, entry in entries.items():
        assert (entry.model is not None) == (entry.format is catalog.Format.JSON), name
        assert entry.doc, name


def test_paths_are_keyed_by_logical_date(tmp_path):
    day = date(2003, 2, 28)
    assert catalog.EVALUATION.path(tmp_path, date=day) == (
        tmp_path / "runs" / "2003-02-28" / "evaluation.json"
    )
    assert catalog.run_dir(type("S", (), {"data_dir": tmp_path})(), "2003-02-28T00:00:00") == (
        tmp_path / "runs" / "2003-02-28"
    )
    assert catalog.LAKE.prefix(tmp_path) == tmp_path / "lake" / "raw"
    assert catalog.FEATURE_TABLE.path(tmp_path, kind="user") == tmp_path / "offline/user_features"


def test_dates_lists_the_partitions_that_exist(tmp_path):
    for day in ("2000-05-01", "1999-12-31"):
        catalog.atomic_write(catalog.LAKE.path(tmp_path, date=day), b"x")
    (catalog.LAKE.prefix(tmp_path) / "date=2000-06-01").mkdir()  # no part file: not a partition
    assert catalog.LAKE.dates(tmp_path) == [date(1999, 12, 31), date(2000, 5, 1)]
    assert catalog.QUARANTINE.dates(tmp_path) == []


def test_save_validates_against_the_model_and_load_returns_it(tmp_path):
    path = catalog.PROMOTION.save(
        tmp_path,
        {"promoted": True, "reason": "ok", "model_tag": "m:1", "production_tag": "m:1"},
        date="2001-01-01",
    )
    assert path == catalog.PROMOTION.path(tmp_path, date="2001-01-01")
    loaded = catalog.PROMOTION.load(tmp_path, date="2001-01-01")
    assert isinstance(loaded, catalog.Promotion) and loaded.promoted and loaded.model_tag == "m:1"
    with pytest.raises(ValidationError, match="unexpected"):  # a field nobody declared
        catalog.PROMOTION.save(
            tmp_path,
            {
                "promoted": True,
                "reason": "ok",
                "model_tag": "m",
                "production_tag": None,
                "unexpected": 1,
            },
            date="2001-01-01",
        )
    with pytest.raises(ValidationError, match="promoted"):  # a missing field
        catalog.PROMOTION.save(tmp_path, {"reason": "ok"}, date="2001-01-01")
    assert catalog.PROMOTION.load(tmp_path, date="2001-01-01").model_tag == "m:1"  # untouched
    assert catalog.PROMOTION.load_or_none(tmp_path, date="2001-01-02") is None
    with pytest.raises(FileNotFoundError):
        catalog.PROMOTION.load(tmp_path, date="2001-01-02")


def test_root_models_round_trip(tmp_path):
    catalog.TIMINGS.save(tmp_path, {"ingest": 0.5, "train": 12.0}, date="2001-01-01")
    assert catalog.TIMINGS.load(tmp_path, date="2001-01-01").root == {"ingest": 0.5, "train": 12.0}


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "a" / "file.bin"
    catalog.atomic_write(target, "old")
    with pytest.raises(RuntimeError), catalog.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]  # no temporary left
    with catalog.atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_load_of_a_non_json_entry_is_an_error(tmp_path):
    with pytest.raises(TypeError, match="not a JSON artifact"):
        catalog.CANDIDATE.load(tmp_path, date="2001-01-01")
