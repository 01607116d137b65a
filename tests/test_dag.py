"""DAG integrity: the file imports cleanly, with the expected task graph and settings."""

from __future__ import annotations

from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parent.parent / "dags"

EXPECTED_CHAIN = [
    "ingest",
    "validate",
    "build_features",
    "materialize",
    "build_training_set",
    "train",
    "evaluate",
    "monitor",
    "gate",
    "refit",
    "register",
    "infra_validate",
    "promote",
    "summarize",
]


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow")))
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"ranker_training"}


def test_task_graph_is_the_pipeline_chain(dagbag):
    dag = dagbag.dags["ranker_training"]
    assert [t.task_id for t in dag.topological_sort()] == EXPECTED_CHAIN
    for upstream, downstream in zip(EXPECTED_CHAIN, EXPECTED_CHAIN[1:], strict=False):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}


def test_schedule_and_retries(dagbag):
    dag = dagbag.dags["ranker_training"]
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.doc_md and "ranker_training" in dag.doc_md
    assert dag.get_task("train").retries == 2
    # A broken data contract is not retried: the partition is already quarantined.
    assert dag.get_task("validate").retries == 0


def test_dag_file_has_no_heavy_top_level_imports():
    source = (DAGS / "ranker_training.py").read_text()
    top_level = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    for heavy in ("pyspark", "xgboost", "feast", "great_expectations", "bentoml", "pipelines"):
        assert not any(heavy in line for line in top_level), heavy


def test_any_data_sets_dates_run(dagbag):
    """No task runs for a logical date before start_date: the epoch admits any data set."""
    import pendulum

    dag = dagbag.dags["ranker_training"]
    assert dag.start_date <= pendulum.datetime(1970, 1, 1, tz="UTC")
