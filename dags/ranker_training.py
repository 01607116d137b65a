"""
### ranker_training

Retrains the content-feed ranker for one day of interactions:

ingest → validate (Great Expectations) → features (Spark) → materialize (Feast) →
training set (Spark, point in time over Feast's views) → train (SparkXGBRanker) → evaluate →
monitor (skew, drift) → gate → refit (through the logical date, if the gate passed) →
register (BentoML) → infra-validate → promote → summary.

Every task is one call into `pipelines.tasks` with the logical date; data moves
through storage keyed by that date, so a re-run overwrites and never duplicates.
A run whose raw data breaks its contract quarantines the partition and fails at
`validate`; a candidate that loses a gate ends the run successfully with
`promoted: false`, and the production model keeps serving.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

# The delay between retries is configuration, not code: Airflow's
# `AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY` (seconds; infra/*/settings.env).
default_args = {
    "owner": "ranking",
    "retries": 2,
}


def _without_retry(name: str, ds: str | None, run_id: str | None) -> dict:
    """Run a task; a broken data contract fails it at once (retrying cannot fix the
    data), after writing the run's summary."""
    from airflow.sdk.exceptions import AirflowFailException

    from pipelines import tasks

    try:
        return getattr(tasks, name)(ds)
    except tasks.ValidationFailed as failed:
        tasks.summarize(ds, run_id)
        raise AirflowFailException(str(failed)) from failed


@dag(
    dag_id="ranker_training",
    schedule="@daily",
    # No task runs for a logical date before start_date, yet the run still "succeeds":
    # the epoch lets any data set's dates run. catchup=False, and locally the scheduler
    # creates no runs by itself, so this backfills nothing.
    start_date=pendulum.datetime(1970, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    doc_md=__doc__,
    tags=["ranking", "training"],
    params={
        "backfill_from": Param(
            None,
            type=["null", "string"],
            format="date",
            description="Also ingest landed partitions from this date (YYYY-MM-DD) on.",
        )
    },
)
def ranker_training():
    @task
    def ingest(ds: str | None = None, params: dict | None = None) -> dict:
        from pipelines import tasks

        return tasks.ingest(ds, backfill_from=(params or {}).get("backfill_from"))

    @task(retries=0)
    def validate(ds: str | None = None, run_id: str | None = None) -> dict:
        return _without_retry("validate", ds, run_id)

    @task
    def build_features(ds: str | None = None, run_id: str | None = None) -> dict:
        return _without_retry("build_features", ds, run_id)

    @task
    def materialize(ds: str | None = None) -> dict:
        from pipelines import tasks

        return tasks.materialize(ds)

    @task
    def build_training_set(ds: str | None = None, run_id: str | None = None) -> dict:
        return _without_retry("build_training_set", ds, run_id)

    @task
    def train(ds: str | None = None) -> dict:
        from pipelines import tasks

        return tasks.train(ds)

    @task
    def evaluate(ds: str | None = None) -> dict:
        from pipelines import tasks

        return tasks.evaluate(ds)

    @task
    def monitor(ds: str | None = None) -> dict:
        from pipelines import tasks

        return tasks.monitor(ds)

    @task
    def gate(ds: str | None = None) -> dict:
        from pipelines import tasks

        return tasks.gate(ds)

    @task
    def refit(ds: str | None = None) -> dict:
        from pipelines import tasks

        return tasks.refit(ds)

    @task
    def register(ds: str | None = None) -> dict:
        from pipelines import tasks

        return tasks.register(ds)

    @task
    def infra_validate(ds: str | None = None) -> dict:
        from pipelines import tasks

        return tasks.infra_validate(ds)

    @task
    def promote(ds: str | None = None) -> dict:
        from pipelines import tasks

        return tasks.promote(ds)

    @task
    def summarize(ds: str | None = None, run_id: str | None = None) -> str:
        from pipelines import tasks

        return tasks.summarize(ds, run_id)

    (
        ingest()
        >> validate()
        >> build_features()
        >> materialize()
        >> build_training_set()
        >> train()
        >> evaluate()
        >> monitor()
        >> gate()
        >> refit()
        >> register()
        >> infra_validate()
        >> promote()
        >> summarize()
    )


dag = ranker_training()

if __name__ == "__main__":
    dag.test()
