"""The command line for what a person does by hand: bootstrap, demo, report, promote, rollback."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipelines import catalog
from pipelines.config import get_settings

app = typer.Typer(add_completion=False, help="content-ranker: daily-retrained feed ranker.")
console = Console()


@app.command()
def bootstrap() -> None:
    """Fetch and convert the configured data set, and land it as daily partitions."""
    from pipelines.data import bootstrap as run

    settings = get_settings()
    with console.status(f"bootstrapping {settings.dataset} ..."):
        facts = catalog.DatasetFacts.model_validate(run(settings))
    console.print(
        f"[bold]{facts.name}[/]: {facts.rows:,} interactions, {facts.users:,} users, "
        f"{facts.items:,} items, {facts.partitions} daily partitions "
        f"{facts.first_date} .. {facts.last_date}"
    )


@app.command("last-date")
def last_date() -> None:
    """Print the last landed day: the logical date of the first DAG run."""
    from pipelines.data import dataset_facts

    print(dataset_facts(get_settings()).last_date)


# The ``@stage`` names in pipelines/tasks.py: a completed run records a timing for each.
RUN_STAGES = (
    "ingest",
    "validate",
    "features",
    "materialize",
    "training_set",
    "train",
    "evaluate",
    "monitor",
    "gate",
    "refit",
    "register",
    "infra_validate",
    "promote",
)


@app.command("check-run")
def check_run(
    day: str = typer.Argument(..., help="The run's logical date, YYYY-MM-DD."),
    since: float = typer.Option(
        ..., help="Unix time the run started: older artifacts are from an earlier run."
    ),
    run_id: str | None = typer.Option(None, help="Also require the summary to name this run."),
) -> None:
    """Fail unless the run of DAY wrote its summary after SINCE and timed every stage.

    Airflow reports a run that executed no task (a logical date before the DAG's
    start_date) as successful; this turns that, and a stale summary left by an
    earlier run of the same date, into a non-zero exit.
    """
    settings, logical_date = get_settings(), catalog.as_date(day)
    problems = []
    summary_path = catalog.SUMMARY.path(settings, date=logical_date)
    timings_path = catalog.TIMINGS.path(settings, date=logical_date)
    summary = None
    if not summary_path.exists():
        problems.append(f"no summary at {summary_path}: no task of the run got that far")
    elif summary_path.stat().st_mtime < since:
        problems.append(f"{summary_path} is older than the run: an earlier run wrote it")
    else:
        summary = catalog.SUMMARY.load(settings, date=logical_date)
        if run_id is not None and summary.run_id != run_id:
            problems.append(f"{summary_path} is from run {summary.run_id!r}, not {run_id!r}")
    # Every stage rewrites the timings: an old file says nothing of this run.
    fresh = timings_path.exists() and timings_path.stat().st_mtime >= since
    timings = catalog.TIMINGS.load(settings, date=logical_date).root if fresh else {}
    missing = [s for s in RUN_STAGES if s not in timings]
    if missing:
        problems.append(f"stages without a timing from this run: {', '.join(missing)}")
    if problems:
        console.print(f"[bold red]run {day} did not do its work[/]")
        for problem in problems:
            console.print(f"  - {problem}")
        raise typer.Exit(1)
    ran = ", ".join(f"{s} {timings[s]:.0f}s" for s in timings)
    run_name = summary.run_id if summary is not None else None
    console.print(f"run {day} ({run_name}) ran {len(timings)} stages: {ran}")


@app.command("trigger-run")
def trigger_run(
    day: str = typer.Argument(..., help="The run's logical date, YYYY-MM-DD."),
    run_id: str = typer.Option(..., help="The DAG run's id."),
    api: str = typer.Option("http://127.0.0.1:8080", envvar="CR_AIRFLOW_API"),
    timeout_s: float = typer.Option(3600, help="Give up after this long."),
) -> None:
    """Have Airflow's scheduler run ``ranker_training`` for DAY (its executor runs the
    tasks), through the api-server's REST API, and wait for the run to end."""
    import time

    import httpx

    dag = f"{api}/api/v2/dags/ranker_training"
    with httpx.Client(timeout=30) as http:
        http.patch(dag, json={"is_paused": False}).raise_for_status()
        created = http.post(
            f"{dag}/dagRuns",
            json={"dag_run_id": run_id, "logical_date": f"{catalog.as_date(day)}T00:00:00Z"},
        )
        if created.status_code >= 400:
            console.print(f"[bold red]Airflow refused the run[/]: {created.text}")
            raise typer.Exit(1)
        deadline, state = time.monotonic() + timeout_s, "queued"
        with console.status(f"run {run_id} ...") as status:
            while state not in ("success", "failed") and time.monotonic() < deadline:
                time.sleep(5)
                state = http.get(f"{dag}/dagRuns/{run_id}").json()["state"]
                tasks = http.get(f"{dag}/dagRuns/{run_id}/taskInstances").json()
                done = sum(t["state"] == "success" for t in tasks["task_instances"])
                status.update(f"run {run_id}: {state}, {done}/{tasks['total_entries']} tasks")
        tasks = http.get(f"{dag}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
    for task in sorted(tasks, key=lambda t: t["start_date"] or ""):
        console.print(f"  {task['task_id']}: {task['state']} (try {task['try_number']})")
    if state != "success":
        console.print(f"[bold red]run {run_id} ended {state}[/]")
        raise typer.Exit(1)


def metrics_table(
    logical_date: date | str, metrics: dict[str, dict[str, float] | None] | None
) -> Table:
    """The holdout metrics per ranker (``Summary.metrics``) of the run of ``logical_date``."""
    table = Table(title=f"holdout evaluation, run {logical_date}")
    table.add_column("ranker")
    for col in ("ndcg@10", "map@10", "recall@10", "queries"):
        table.add_column(col, justify="right")
    for name, values in (metrics or {}).items():
        if values is None:
            table.add_row(name, "-", "-", "-", "-")
            continue
        table.add_row(
            name,
            *(f"{values[c]:.4f}" for c in ("ndcg@10", "map@10", "recall@10")),
            f"{values['queries']:.0f}",  # a count
        )
    return table


def latest_summary() -> Path:
    """The summary of the latest run that wrote one."""
    settings = get_settings()
    days = catalog.SUMMARY.dates(settings)
    if not days:
        raise typer.BadParameter("no run has written a summary yet: run `make run` first")
    return catalog.SUMMARY.path(settings, date=days[-1])


@app.command()
def report(summary_path: Path | None = None) -> None:
    """Print the evaluation table, the gate decision and the timings of a run."""
    path = summary_path or latest_summary()
    summary = catalog.Summary.model_validate_json(path.read_bytes())
    console.print(metrics_table(summary.logical_date, summary.metrics))
    gate = summary.gate
    console.print(f"gate passed: {gate.passed} ({gate.reason})")
    console.print(f"model: {summary.model_tag}  promoted: {summary.promoted}")
    if summary.refit is not None and summary.refit.refit:
        refit = summary.refit
        console.print(
            f"served model refit on {refit.queries} queries, {refit.first_day} .. {refit.last_day}"
        )
    timings = ", ".join(f"{k} {v:.0f}s" for k, v in summary.timings_s.items())
    console.print(f"timings: {timings}")
    console.print(f"summary: {path}")


@app.command()
def demo(summary_path: Path | None = None) -> None:
    """Start the server on the production model, rank one real user's candidates, stop it."""
    import httpx
    import pandas as pd

    from pipelines.infra_validation import serve
    from pipelines.tasks import sample_requests

    settings = get_settings()
    path = summary_path or latest_summary()
    summary = catalog.Summary.model_validate_json(path.read_bytes())
    holdout = pd.read_parquet(catalog.HOLDOUT.path(settings, date=summary.logical_date))
    body = sample_requests(holdout, 1, settings.seed)[0]
    items_path = catalog.ITEMS.path(catalog.dataset_dir(settings))
    items = pd.read_parquet(items_path) if items_path.exists() else None
    titles = dict(zip(items["item_id"], items["title"], strict=False)) if items is not None else {}
    with console.status("starting the BentoML server ..."), serve(settings) as base:
        answer = httpx.post(f"{base}/rank", json=body, timeout=30).json()
    table = Table(
        title=f"/rank for user {body['user_id']} ({len(body['item_ids'])} candidates, "
        f"model {answer['model_version']}, fallback={answer['fallback']})"
    )
    table.add_column("#", justify="right")
    table.add_column("item")
    table.add_column("score", justify="right")
    for i, item in enumerate(answer["items"], 1):
        table.add_row(str(i), titles.get(item["item_id"], item["item_id"]), f"{item['score']:.3f}")
    console.print(table)
    report(path)


@app.command()
def promote(tag: str, reason: str = "manual promotion") -> None:
    """Point production at TAG (a running server switches on its next request). Refused
    for a model whose lineage does not record a passed gate."""
    from pipelines import registry
    from pipelines.lineage import NotServable

    try:
        console.print(registry.promote(tag, get_settings(), reason=reason))
    except NotServable as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None


@app.command()
def rollback() -> None:
    """Move production back to the previously promoted model."""
    from pipelines import registry

    console.print(f"production is now {registry.rollback(get_settings())}")


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Directory to write the data set into.")],
    events: Annotated[int, typer.Option(min=1, help="Impressions to generate.")] = 1_000_000,
    seed: Annotated[int, typer.Option(help="The same seed gives the same bytes.")] = 42,
    days: Annotated[int, typer.Option(min=1, help="Days of history, ending 2026-06-30.")] = 180,
) -> None:
    """Write a synthetic short-video impression feed with a planted ground truth to OUT."""
    import time

    from rich.progress import MofNCompleteColumn, Progress, TimeElapsedColumn

    from pipelines.synth import SynthConfig, generate

    cfg = SynthConfig(events=events, seed=seed, days=days)
    started = time.perf_counter()
    columns = (*Progress.get_default_columns(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("impressions", total=events)
        written = generate(cfg, out, progress=lambda n: bar.update(task, completed=n))
        facts = catalog.SynthFacts.model_validate(written)
        bar.update(task, total=facts.events)  # a few fewer when a session ran out of items
    elapsed = time.perf_counter() - started
    console.print(
        f"[bold]{out}[/]: {facts.events:,} impressions ({facts.positive_share:.1%} with "
        f"rating > 0), {facts.users:,} users, {facts.items:,} items, "
        f"{facts.first_date} .. {facts.last_date}; "
        f"{elapsed:.1f} s, {facts.events / elapsed:,.0f} events/s"
    )


if __name__ == "__main__":
    app()
