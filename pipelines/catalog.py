"""The data catalog: every dataset and artifact that one stage hands to another, named once.

An entry gives a path template, a format and, for a JSON artifact, its typed model
(pydantic). Templates are relative to a root: the data directory (``CR_DATA_DIR``) for the
platform's own datasets, or a data set folder for the generic input format. Task shells,
the report, the CLI, the server, the benchmarks and the tests find files here; no other
module spells a file name. Every artifact is written atomically by :func:`atomic_write`.

    path = catalog.EVALUATION.path(settings, date=logical_date)
    catalog.EVALUATION.save(settings, Evaluation(...), date=logical_date)
    evaluation = catalog.EVALUATION.load(settings, date=logical_date)  # an ``Evaluation``
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, RootModel

if TYPE_CHECKING:
    from pipelines.config import Settings

# --- one atomic writer ----------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer to fill; moved over ``path`` on success.

    A reader sees the old file or the new one, never half of one, and a killed writer
    leaves ``path`` as it was (the temporary file is removed on any exception).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not created here, so the writer creates it with the usual permissions (not mkstemp's 0600).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`), flushed to disk."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


# --- entries ----------------------------------------------------------------------------------


class Format(StrEnum):
    PARQUET = "parquet"  # one file, written by pandas or pyarrow (timestamps in microseconds)
    PARQUET_DIR = "parquet-dir"  # a folder of parquet parts, written by Spark
    JSON = "json"
    CSV = "csv"
    XGBOOST = "xgboost-ubj"  # a Booster saved with ``save_model``
    HTML = "html"


class Root(StrEnum):
    DATA = "data"  # the data directory, ``Settings.data_dir``
    DATASET = "dataset"  # a folder in the generic data set format


Model = TypeVar("Model", bound=BaseModel)


def as_date(value: date | datetime | str) -> date:
    """The logical date of a date, a datetime, or an ISO string of either."""
    if isinstance(value, datetime):
        return value.date()
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def _key(value: Any) -> str:
    return value.isoformat()[:10] if isinstance(value, date | datetime) else str(value)


def _between(path: str, template: str, key: str) -> str:
    """The text that fills ``key`` in ``path``, which matches ``template`` (one key)."""
    before, after = template.split(key, 1)
    return path[len(before) : len(path) - len(after)]


@dataclass(frozen=True)
class Entry(Generic[Model]):
    """One dataset: where it lives (``template`` under ``root``), in what format, with what
    columns (parquet) or model (JSON)."""

    template: str
    format: Format
    doc: str
    root: Root = Root.DATA
    model: type[Model] | None = None
    columns: tuple[str, ...] = ()

    def path(self, base: Settings | Path, **keys: Any) -> Path:
        """The path for ``keys`` (``date=`` a logical date, ...). ``base`` is the settings (the
        data directory) or, for a data set entry, the data set's folder."""
        if "date" in keys:  # a date, or a timestamp / ISO string of one
            keys["date"] = as_date(keys["date"])
        return self._folder(base) / self.template.format(**{k: _key(v) for k, v in keys.items()})

    def prefix(self, base: Settings | Path) -> Path:
        """The folder above the template's first keyed part: the root of a partitioned
        dataset (``lake/raw`` for ``lake/raw/date={date}/part.parquet``)."""
        return self._folder(base) / self.template.split("{", 1)[0].rsplit("/", 1)[0]

    def dates(self, base: Settings | Path) -> list[date]:
        """The logical dates for which this ``{date}``-keyed entry exists, oldest first."""
        pattern = self.template.replace("{date}", "*")
        found = []
        for path in self._folder(base).glob(pattern):
            rel = path.relative_to(self._folder(base)).as_posix()
            found.append(date.fromisoformat(_between(rel, self.template, "{date}")))
        return sorted(set(found))

    def _folder(self, base: Settings | Path) -> Path:
        if self.root is Root.DATA and hasattr(base, "data_dir"):
            return Path(base.data_dir)
        return Path(base)

    def exists(self, base: Settings | Path, **keys: Any) -> bool:
        return self.path(base, **keys).exists()

    def load(self, base: Settings | Path, **keys: Any) -> Model:
        """The JSON artifact, validated against its model; FileNotFoundError if absent."""
        if self.model is None:
            raise TypeError(f"{self.template} is {self.format}, not a JSON artifact")
        return self.model.model_validate_json(self.path(base, **keys).read_bytes())

    def load_or_none(self, base: Settings | Path, **keys: Any) -> Model | None:
        path = self.path(base, **keys)
        return self.load(base, **keys) if path.exists() else None

    def save(self, base: Settings | Path, value: Model | dict, **keys: Any) -> Path:
        """Validate ``value`` against the model and write it atomically."""
        if self.model is None:
            raise TypeError(f"{self.template} is {self.format}, not a JSON artifact")
        model = value if isinstance(value, self.model) else self.model.model_validate(value)
        return atomic_write(self.path(base, **keys), model.model_dump_json(indent=2))


# --- JSON models ------------------------------------------------------------------------------


class Artifact(BaseModel):
    """A JSON artifact: a field it does not declare is an error, so writer and readers agree."""

    model_config = ConfigDict(extra="forbid")


class SuiteResult(BaseModel):
    """One Great Expectations suite's verdict."""

    model_config = ConfigDict(extra="forbid")
    success: bool
    evaluated: int
    successful: int
    failed_expectations: list[dict[str, Any]]


class ValidationPart(Artifact):
    partitions: list[str]
    rows: int
    passed: bool
    data_docs_page: str | None = None


class ValidationResult(Artifact):
    """A GE validation of raw partitions, a feature table or the training set."""

    passed: bool
    suites: dict[str, SuiteResult]
    rows: int = 0
    validated_rows: int | None = None
    partitions: list[str] = []
    parts: list[ValidationPart] | None = None
    data_docs: str | None = None
    data_docs_page: str | None = None
    # the training set's: null share per model feature, and rows with no history yet
    null_shares: dict[str, float] | None = None
    user_without_history_share: float | None = None
    item_without_history_share: float | None = None


class Ingest(Artifact):
    partitions: list[date]


class FactorSnapshots(BaseModel):
    """The ALS snapshot grid after a ``features`` run (``factors.update_factors``)."""

    every_days: int | None = None  # the grid's step (None: written before it was recorded)
    days: list[int] = []  # snapshot days kept
    fitted: list[int] = []  # of them, fit by this run


class FeatureTables(Artifact):
    """What ``features`` wrote: rows per table (snapshots from ``since``, or all)."""

    user_rows: int
    item_rows: int
    events_read: int
    through: date
    since: datetime | None
    factors: FactorSnapshots = FactorSnapshots()


class FeaturesValidation(RootModel[dict[str, ValidationResult]]):
    """``{"user": ..., "item": ...}``: one validation per feature table."""


class MaterializeWindow(BaseModel):
    """``start`` is None, and ``skipped`` says why, when the online store was already newer."""

    model_config = ConfigDict(extra="forbid")
    start: datetime | None
    end: datetime
    rows: dict[str, int] = {}
    skipped: str | None = None


class Materialize(Artifact):
    applied: list[str]
    window: MaterializeWindow


class TrainingSetFacts(Artifact):
    train_rows: int
    train_queries: int
    holdout_rows: int
    holdout_queries: int
    unpairable_queries_dropped: int
    negatives: str  # "impressions" (shown and skipped) or "sampled"
    training_set_hash: str
    bounds: dict[str, int]
    # lineage: the lake partitions read (range, count, sha256) and the Feast registry's hash
    partitions: dict[str, Any] | None = None
    registry_sha256: str | None = None
    # the ALS snapshots its rows could join (day number -> fingerprint of their events)
    factor_snapshots: dict[str, str] | None = None


class RefitFit(Artifact):
    """What a refit was fit on: every query through the logical date."""

    rows: int
    queries: int
    first_day: date
    last_day: date
    trees: int


class Training(Artifact):
    params: dict[str, Any]
    partitions: int
    shuffled_labels: bool
    trees: int
    ablated: dict[str, list[str]] = {}  # signal -> the inputs its ablation model trained without
    # the refit, fit by train beside the candidate when the slots had room for it, before
    # the gate decided (``REFIT_AHEAD``); refit keeps it only if the gate passes
    refit_ahead: RefitFit | None = None


class Ablation(BaseModel):
    """One signal's ablation: the same configuration retrained without its inputs."""

    model_config = ConfigDict(extra="forbid")
    features: list[str]
    ndcg_at_10: float  # of the model trained without them, on the same holdout
    lift: float  # the candidate's NDCG@10 minus that


class Evaluation(Artifact):
    """NDCG and friends per ranker (model, random, popularity, production, oracle).
    ``production_scored_tag`` is the model scored as production: production's evaluated
    twin when production is a refit (trained into this holdout), else production."""

    metrics: dict[str, dict[str, int | float] | None]
    production_tag: str | None
    slices: list[str]
    production_scored_tag: str | None = None
    ablation: dict[str, Ablation] = {}


class Refit(Artifact):
    """The candidate's configuration fit again on every query through the logical date
    (training window and holdout), when the gate passed; ``refit`` False says why not."""

    refit: bool
    reason: str
    candidate_sha256: str  # the evaluated candidate this decision is about
    rows: int = 0
    queries: int = 0
    first_day: date | None = None
    last_day: date | None = None
    trees: int = 0


class Monitoring(Artifact):
    skew: dict[str, Any] | None
    drift_psi: dict[str, float]
    drift_rows: dict[str, int]


class GateDecision(Artifact):
    passed: bool
    reason: str
    checks: list[dict[str, Any]]
    significance: dict[str, Any] | None = None
    slices: list[dict[str, Any]] | None = None


class Registration(Artifact):
    """``model_tag`` is the model to validate and promote: the refit, when there is one.
    ``evaluated_tag`` is the model the gate evaluated (the same tag without a refit)."""

    model_tag: str
    evaluated_tag: str | None = None


class InfraValidation(Artifact):
    passed: bool | None
    reason: str | None = None
    skipped: bool = False
    tag: str | None = None
    requests: int = 0
    latency_ms_p50: float | None = None
    latency_ms_max: float | None = None
    errors: list[str] = []


class Promotion(Artifact):
    promoted: bool
    reason: str
    model_tag: str
    production_tag: str | None


class Timings(RootModel[dict[str, float]]):
    """Wall seconds per stage."""


class StageCost(BaseModel):
    model_config = ConfigDict(extra="forbid")
    driver_peak_pss_mb: int
    spark_peak_pss_mb: int
    driver_cpu_s: float
    spark_cpu_s: float


class Resources(RootModel[dict[str, StageCost]]):
    """Peak PSS and CPU time per stage (:mod:`pipelines.resources`)."""


class SummaryValidation(Artifact):
    passed: bool | None
    suites: dict[str, SuiteResult]
    data_docs: str | None


class SummaryGate(Artifact):
    passed: bool | None
    reason: str | None
    significance: dict[str, Any] | None
    slices: list[dict[str, Any]] | None


class Summary(Artifact):
    """What ``make run`` prints: one run, from what each task left."""

    run_id: str
    logical_date: date
    dataset: dict[str, Any]
    validation: SummaryValidation
    metrics: dict[str, dict[str, int | float] | None] | None
    gate: SummaryGate
    model_tag: str | None
    promoted: bool
    promotion_reason: str | None
    infra_validation: InfraValidation | None
    training_set: TrainingSetFacts | None
    refit: Refit | None = None
    monitoring: Monitoring | None
    timings_s: dict[str, float]
    resources: dict[str, StageCost]
    report: str


class DatasetFacts(Artifact):
    """What bootstrap found in the active data set."""

    name: str
    rows: int
    users: int
    items: int
    first_date: date
    last_date: date
    partitions: int
    genres: list[str]
    rating_min: float
    rating_max: float


class SynthFacts(Artifact):
    """What ``synth`` generated: its configuration and counts (:mod:`pipelines.synth`)."""

    config: dict[str, Any]
    events: int
    positive_share: float
    users: int
    items: int
    creators: int
    first_date: date
    last_date: date


class ProductionPointer(Artifact):
    tag: str
    previous: list[str]
    promoted_at: datetime
    reason: str
    rolled_back_from: str | None = None


class FactorManifest(RootModel[dict[str, str]]):
    """Per factor snapshot day (a day number), the count and hash of the events before it."""


class Watermarks(RootModel[dict[str, datetime]]):
    """Per feature view, the end of the last materialization into the online store."""


# --- the catalog ------------------------------------------------------------------------------


def run_dir(settings: Settings, logical_date: date | str) -> Path:
    """Every output of a DAG run lives here, keyed by its logical date (a re-run overwrites)."""
    return Path(settings.data_dir) / RUN.format(date=_key(as_date(logical_date)))


def dataset_dir(settings: Settings) -> Path:
    """The active data set, converted by bootstrap to the generic format."""
    return Path(settings.data_dir) / DATASET_DIR


RUN = "runs/{date}"  # every output of a DAG run, keyed by its logical date

# The generic data set format (the input of ``make run DATASET=DIR``; ``synth`` writes it).
INTERACTIONS = Entry(
    "interactions.parquet",
    Format.PARQUET,
    "events: user_id, item_id, rating, timestamp (unix s), optional engagement columns",
    Root.DATASET,
    columns=("user_id", "item_id", "rating", "timestamp"),
)
INTERACTIONS_CSV = Entry(
    "interactions.csv",
    Format.CSV,
    "the same events as CSV",
    Root.DATASET,
    columns=INTERACTIONS.columns,
)
ITEMS = Entry(
    "items.parquet",
    Format.PARQUET,
    "item metadata (title, genres, ...)",
    Root.DATASET,
    columns=("item_id",),
)
ITEMS_CSV = Entry(
    "items.csv", Format.CSV, "the same items as CSV", Root.DATASET, columns=ITEMS.columns
)
USERS = Entry("users.parquet", Format.PARQUET, "user metadata", Root.DATASET, columns=("user_id",))
USERS_CSV = Entry(
    "users.csv", Format.CSV, "the same users as CSV", Root.DATASET, columns=USERS.columns
)
TRUTH = Entry(
    "truth.parquet",
    Format.PARQUET,
    "planted engagement probabilities per (user, item, day), when the data set has them",
    Root.DATASET,
    columns=("user_id", "item_id", "day", "p_engage"),
)
SYNTH_FACTS = Entry("synth.json", Format.JSON, "what synth generated", Root.DATASET, SynthFacts)

# The active data set, converted by bootstrap, and its daily partitions.
DATASET_DIR = "dataset"
DATASET_FACTS = Entry("dataset/dataset.json", Format.JSON, "bootstrap's facts", model=DatasetFacts)
LANDING = Entry(
    "landing/date={date}/part.parquet",
    Format.PARQUET,
    "a day's events as they arrive from upstream",
)
LAKE = Entry(
    "lake/raw/date={date}/part.parquet", Format.PARQUET, "an ingested (and validated) day of events"
)
QUARANTINE = Entry(
    "lake/quarantine/date={date}/part.parquet", Format.PARQUET, "a day that broke the raw contract"
)
QUARANTINE_VALIDATION = Entry(
    "lake/quarantine/date={date}/validation.json",
    Format.JSON,
    "why that day was quarantined",
    model=ValidationResult,
)
USER_IDS = Entry(
    "lake/ids/users.parquet",
    Format.PARQUET,
    "external -> internal user ids",
    columns=("external_id", "internal_id"),
)
ITEM_IDS = Entry(
    "lake/ids/items.parquet",
    Format.PARQUET,
    "external -> internal item ids",
    columns=("external_id", "internal_id"),
)

# Feature tables (Feast's offline sources) and the state an incremental run starts from.
FEATURE_TABLE = Entry(
    "offline/{kind}_features",
    Format.PARQUET_DIR,
    "daily snapshots of the user or item features, partitioned by snapshot month",
)
FEATURE_STATE = Entry(
    "offline/feature_state/{kind}/through={date}",
    Format.PARQUET_DIR,
    "per-entity running state through a day (exact all-time sums, last active day)",
)
FACTOR_TABLE = Entry(
    "offline/{kind}_factors",
    Format.PARQUET_DIR,
    "ALS factor snapshots of users or items, partitioned by snapshot day (pipelines.factors)",
)
FACTOR_MANIFEST = Entry(
    "offline/factor_manifest.json",
    Format.JSON,
    "per factor snapshot day, a fingerprint of the events it was fit on",
    model=FactorManifest,
)
ONLINE_STAGING = Entry(
    "feast/staging/{view}", Format.PARQUET_DIR, "the newest row per entity, on its way online"
)
WATERMARKS = Entry(
    "feast/watermarks.json",
    Format.JSON,
    "end of the last materialization per view",
    model=Watermarks,
)
PRODUCTION = Entry(
    "registry/production.json",
    Format.JSON,
    "the model tag serving loads, and the previous ones",
    model=ProductionPointer,
)

# A DAG run's outputs.
INGEST = Entry(f"{RUN}/ingest.json", Format.JSON, "the partitions this run ingested", model=Ingest)
VALIDATION = Entry(
    f"{RUN}/validation.json", Format.JSON, "the raw contract's verdict", model=ValidationResult
)
FEATURES = Entry(
    f"{RUN}/features.json", Format.JSON, "what the features stage wrote", model=FeatureTables
)
FEATURES_VALIDATION = Entry(
    f"{RUN}/features_validation.json",
    Format.JSON,
    "the feature tables' contract verdicts",
    model=FeaturesValidation,
)
MATERIALIZE = Entry(
    f"{RUN}/materialize.json", Format.JSON, "what went to the online store", model=Materialize
)
ENTITY_ROWS = Entry(
    f"{RUN}/entity_rows.parquet",
    Format.PARQUET_DIR,
    "the training and holdout queries' candidates (``split``), before their features",
)
TRAINING_SET = Entry(
    f"{RUN}/training_set.parquet",
    Format.PARQUET_DIR,
    "training queries joined point in time to the features, sorted by query",
)
HOLDOUT = Entry(
    f"{RUN}/holdout.parquet",
    Format.PARQUET_DIR,
    "holdout queries joined point in time to the features",
)
TRAINING_SET_FACTS = Entry(
    f"{RUN}/training_set.json",
    Format.JSON,
    "sizes, bounds and hash of the training set",
    model=TrainingSetFacts,
)
TRAINING_SET_VALIDATION = Entry(
    f"{RUN}/training_set_validation.json",
    Format.JSON,
    "the training set's contract verdict",
    model=ValidationResult,
)
CANDIDATE = Entry(f"{RUN}/candidate.ubj", Format.XGBOOST, "the model trained by this run")
TRAINING = Entry(
    f"{RUN}/training.json", Format.JSON, "how the candidate was trained", model=Training
)
EVALUATION = Entry(
    f"{RUN}/evaluation.json", Format.JSON, "holdout metrics per ranker", model=Evaluation
)
PER_QUERY = Entry(
    f"{RUN}/per_query_ndcg.parquet",
    Format.PARQUET,
    "NDCG@10 per holdout query and ranker (and per ablation model), with the query's slices",
    columns=("query_id",),
)
MONITORING = Entry(
    f"{RUN}/monitoring.json",
    Format.JSON,
    "training-serving skew and feature drift",
    model=Monitoring,
)
GATE = Entry(f"{RUN}/gate.json", Format.JSON, "the promotion gate's decision", model=GateDecision)
ABLATION_MODEL = Entry(
    f"{RUN}/ablation_{{signal}}.ubj",
    Format.XGBOOST,
    "the candidate's configuration trained without one signal's inputs (report only)",
)
REFIT_CANDIDATE = Entry(
    f"{RUN}/refit.ubj", Format.XGBOOST, "the candidate refit through the logical date"
)
REFIT_AHEAD = Entry(
    f"{RUN}/refit_ahead.ubj",
    Format.XGBOOST,
    "the candidate's refit, fit by train ahead of the gate; refit keeps or deletes it",
)
REFIT = Entry(
    f"{RUN}/refit.json", Format.JSON, "whether and on what the candidate was refit", model=Refit
)
REGISTRATION = Entry(
    f"{RUN}/register.json",
    Format.JSON,
    "the candidate's tag in the model store",
    model=Registration,
)
INFRA_VALIDATION = Entry(
    f"{RUN}/infra_validation.json",
    Format.JSON,
    "the candidate served for real and sent real requests",
    model=InfraValidation,
)
PROMOTION = Entry(
    f"{RUN}/promotion.json",
    Format.JSON,
    "whether production moved to the candidate",
    model=Promotion,
)
TIMINGS = Entry(f"{RUN}/timings.json", Format.JSON, "wall seconds per stage", model=Timings)
RESOURCES = Entry(
    f"{RUN}/resources.json", Format.JSON, "peak PSS and CPU per stage", model=Resources
)
SUMMARY = Entry(f"{RUN}/summary.json", Format.JSON, "the run in one file", model=Summary)
REPORT = Entry(f"{RUN}/report.html", Format.HTML, "the run report")


def entries() -> dict[str, Entry]:
    """Every entry of the catalog by its name here (``EVALUATION``, ...)."""
    return {name: value for name, value in globals().items() if isinstance(value, Entry)}
