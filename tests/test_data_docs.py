"""Data Docs as a person sees them: a failed validation rendered by headless Chromium.

Needs a ``chromium`` binary (CI: ``apt-get install -y chromium``); skipped without one.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from html import unescape
from pathlib import Path

import pandas as pd
import pytest

from pipelines.config import Settings
from pipelines.validation import validate_interactions

pytestmark = pytest.mark.integration

DAY = date(2025, 1, 2)
DAY_START = int(datetime(2025, 1, 2, tzinfo=UTC).timestamp())


def _partition_with_null_users(rows: int = 20) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "user_id": pd.Series([f"u{i % 5}" for i in range(rows)], dtype="string"),
            "item_id": pd.Series([f"i{i}" for i in range(rows)], dtype="string"),
            "rating": [0.5 + (i % 10) * 0.5 for i in range(rows)],
            "timestamp": [DAY_START + i * 3600 for i in range(rows)],
            "partition_date": DAY.isoformat(),
        }
    )
    frame.loc[:2, "user_id"] = pd.NA
    return frame


def visible_text(dom: str) -> str:
    """Text of ``dom`` without scripts, styles and tags, whitespace collapsed."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", dom))).strip()


def test_failed_validation_is_readable_in_data_docs(tmp_path: Path, chromium_dom) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    result = validate_interactions(
        _partition_with_null_users(), partition_dates=[DAY], settings=settings, run_name="docs"
    )
    assert result["passed"] is False

    # The site's index links the run's result page; it lives under local_site/validations/.
    site = settings.gx_dir / "uncommitted" / "data_docs" / "local_site"
    index = site / "index.html"
    assert Path(result["data_docs"]) == index.resolve()
    links = set(re.findall(r"validations/raw_interactions/docs/[^'\"\s]+\.html", index.read_text()))
    assert len(links) == 1
    page = (site / links.pop()).resolve()
    on_disk = list((site / "validations" / "raw_interactions" / "docs").rglob("*.html"))
    assert [p.resolve() for p in on_disk] == [page]
    assert Path(result["data_docs_page"]) == page

    dom = chromium_dom(page)
    text = visible_text(dom)

    assert "Expectation Suite: raw_interactions" in text
    assert "Status: Failed" in text
    # The failed expectation, in the user_id section: what it demands and what broke it.
    user_section = text[text.rindex("user_id Status Expectation") :]
    assert "values must never be null" in user_section
    assert "3 unexpected values found. 15% of 20 total rows." in user_section
    assert "fa-times text-danger" in dom  # the red cross marking a failed expectation
