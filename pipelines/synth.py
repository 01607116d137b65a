"""A synthetic short-video impression feed with a planted ground truth (``content-ranker synth``).

It writes the generic data-set format (see :mod:`pipelines.data`), so ``make run DATASET=DIR``
runs on it:

- interactions (``catalog.INTERACTIONS``): one row per impression (an item shown to a user),
  mostly shown and skipped. ``user_id``, ``item_id`` (str), ``rating`` (float:
  :func:`engagement_label`), ``timestamp`` (int64 unix s), plus ``watch_fraction`` (float32),
  ``completed``, ``liked``, ``shared``, ``skipped`` (bool) and ``p_engage`` (float32: the planted
  engagement probability, so evaluation can rank by the truth and report an oracle NDCG);
- items (``catalog.ITEMS``): ``item_id``, ``title``, ``genres`` (``|``-separated topics),
  ``year`` (of the upload), ``creator_id``, ``duration_s``, ``upload_ts``;
- users (``catalog.USERS``): ``user_id``, ``signup_ts``, ``region``;
- ``catalog.SYNTH_FACTS``: the configuration and the counts.

The planted model. Users have a topic mix (Dirichlet) and a taste vector near it; items have
1-3 topics (the first usually their creator's) and a taste vector near their topics and their
creator's. The engagement probability of an impression is

    p_engage = sigmoid(b + w_taste * cos(user, item) + w_topic * log(0.2 + topic affinity)
                       + w_pop * zipf popularity (z) + creator quality
                       + w_fresh * exp(-age / tau) + user bias)

The feed that chose what to show mixes popular-and-fresh items with items from the user's
topics, so counts, popularity and genre affinity carry part of the signal. Given ``p_engage``,
the watch, completion, like and share are drawn so that ``P(rating >= 1) = p_engage`` and the
expected gain ``E[2^rating - 1]`` (:func:`expected_gain`) grows with it: ranking by ``p_engage``
is the oracle ranking.

Time: ``days`` days ending on ``end`` (default 2026-06-30, never the wall clock). Users sign up
and items are uploaded over time; a user is shown items only after signing up, and an item only
after its upload. Each active (user, day) is one session of several impressions: one ranking
query. Events per day follow the activity of the users signed up by then.

Memory and determinism. Each day is generated in blocks of ``BLOCK_SESSIONS`` sessions, each
with its own random stream keyed by (seed, day, block), and written in row groups of
``chunk_rows`` rows. So the content does not depend on ``chunk_rows``, the same seed gives the
same bytes, and memory is bounded by the chunk and the block plus the user and item tables
(about 150 bytes per user and item, N/200 users and N/400 items), whatever N is. Rows are
sorted by timestamp through the whole file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import catalog

DAY = 86_400
END_DATE = date(2026, 6, 30)
TOPICS = (
    "comedy", "dance", "music", "food", "travel", "sports", "gaming", "pets", "fashion",
    "beauty", "diy", "education", "science", "news", "fitness", "art", "tech", "cars",
)  # fmt: skip
ADJECTIVES = ("quick", "epic", "daily", "tiny", "late-night", "first", "honest", "wild")
FORMATS = ("clip", "tutorial", "challenge", "vlog", "review", "story", "remix", "tips")
REGIONS = ("na", "eu", "latam", "apac", "mea", "oceania")
REGION_SHARES = (0.3, 0.25, 0.15, 0.2, 0.06, 0.04)

DIM = 16  # taste vectors
BLOCK_SESSIONS = 128  # sessions per random stream: fixed, so chunk size cannot change content
MIN_SESSION, MEAN_SESSION = 4, 15  # impressions per (user, day) session
OVERSAMPLE = 1.0  # extra candidates drawn per session, for items shown twice (dropped)
USERS_BEFORE, USERS_LEAD_DAYS = 0.3, 365  # share signed up before the window, over how long
ITEMS_BEFORE, ITEMS_LEAD_DAYS = 0.15, 60
ZIPF_EXPONENT = 1.0
PERSONAL_SHARE = 0.5  # impressions the feed draws from the user's topics, not popular-fresh
FRESH_TAU_DAYS, FRESH_BOOST = 7.0, 4.0  # feed exposure weight: zipf * (1 + boost * e^-age/tau)

# The planted engagement model (see the module docstring).
BIAS, W_TASTE, W_TOPIC, W_POP, W_FRESH = -2.3, 2.5, 0.9, 0.15, 0.8
USER_BIAS_SD, CREATOR_SD = 0.4, 0.2

# Engagement given p_engage (every probability grows with p, so the expected gain does).
SKIP_SHARE = 0.75  # of non-engaged impressions, those swiped away before 20 %
COMPLETE = (0.25, 0.5)  # P(completed | engaged) = a + b * p
LIKE = (0.10, 0.40)  # P(liked | engaged) = a + b * p
SHARE = (0.03, 0.12)  # P(shared | engaged) = a + b * p

SKIP_BELOW, ENGAGED_FROM = 0.2, 0.5  # watch-fraction thresholds of the label


def engagement_label(watch_fraction, completed, liked, shared) -> np.ndarray:
    """The graded label (``rating``) of an impression, from what the user did with it.

    3 = liked or shared (explicit signals win); 2 = completed; 1 = watched at least half;
    0 = otherwise: skipped (swiped away before 20 %) or watched less than half. A watch of
    20-50 % is 0, because on an autoplaying feed a partial watch is not yet interest.
    """
    wf = np.asarray(watch_fraction, dtype=np.float64)
    explicit = np.asarray(liked, dtype=bool) | np.asarray(shared, dtype=bool)
    return np.select(
        [explicit, np.asarray(completed, dtype=bool), wf >= ENGAGED_FROM],
        [3.0, 2.0, 1.0],
        default=0.0,
    )


def expected_gain(p_engage) -> np.ndarray:
    """``E[2^rating - 1]`` under the planted model for an impression with this ``p_engage``.

    Increasing in ``p_engage``, so ranking by ``p_engage`` ranks by expected gain (the oracle).
    """
    p = np.asarray(p_engage, dtype=np.float64)
    like, share, complete = (a + b * p for a, b in (LIKE, SHARE, COMPLETE))
    explicit = 1.0 - (1.0 - like) * (1.0 - share)
    return p * (7.0 * explicit + (1.0 - explicit) * (3.0 * complete + 1.0 - complete))


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. Users and items scale with ``events`` unless given."""

    events: int
    seed: int = 42
    days: int = 180
    end: date = END_DATE
    chunk_rows: int = 65_536
    users: int | None = None
    items: int | None = None

    @property
    def n_users(self) -> int:
        return self.users or max(200, self.events // 200)

    @property
    def n_items(self) -> int:
        return self.items or max(100, self.events // 400)

    @property
    def n_creators(self) -> int:
        return max(20, self.n_items // 10)

    @property
    def start_ts(self) -> int:
        """Unix seconds of the window's first day, 00:00 UTC."""
        end = datetime(self.end.year, self.end.month, self.end.day, tzinfo=UTC)
        return int(end.timestamp()) - (self.days - 1) * DAY


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _uniform_ts(
    rng: np.random.Generator, n: int, lead_share: float, lead_days: int, cfg
) -> np.ndarray:
    """Sorted unix seconds: ``lead_share`` before the window (``lead_days``), the rest inside."""
    before = rng.random(n) < lead_share
    start, span = cfg.start_ts, (cfg.days - 1) * DAY
    ts = np.where(
        before,
        start - rng.integers(1, lead_days * DAY, n),
        start + rng.integers(0, max(span, 1), n),
    )
    ts = np.sort(ts.astype(np.int64))
    ts[0] = min(ts[0], start - DAY)  # someone is there on the first day
    return ts


@dataclass
class World:
    """The planted ground truth and the feed's sampling tables (users by signup, items by upload)."""

    signup: np.ndarray
    region: np.ndarray
    activity: np.ndarray
    user_bias: np.ndarray
    theta: np.ndarray  # users x topics, rows sum to 1
    theta_cum: np.ndarray
    taste: np.ndarray  # users x DIM, unit
    upload: np.ndarray
    duration: np.ndarray
    creator: np.ndarray
    topics: np.ndarray  # items x 3, -1 = none
    vec: np.ndarray  # items x DIM, unit
    appeal: np.ndarray  # static logit part: popularity + creator quality
    cw_all: np.ndarray  # [0, cumsum(zipf)] over items by upload
    cw_fresh: np.ndarray  # [0, cumsum(zipf * e^((upload - ref) / tau))]
    fresh_ref: int
    topic_keys: np.ndarray  # topic * 2^40 + upload, sorted
    topic_items: np.ndarray
    topic_cw: np.ndarray  # [0, cumsum(zipf)] over topic_items
    topic_start: np.ndarray  # first position of each topic in topic_items (T + 1)


TOPIC_KEY = 1 << 40


def build_world(cfg: SynthConfig) -> World:
    """Draw users, creators, items and the planted tastes from the seed."""
    rng = np.random.default_rng([cfg.seed, 0])
    n_users, n_items, n_topics = cfg.n_users, cfg.n_items, len(TOPICS)
    centroids = _normalise(rng.standard_normal((n_topics, DIM)))

    signup = _uniform_ts(rng, n_users, USERS_BEFORE, USERS_LEAD_DAYS, cfg)
    region = rng.choice(len(REGIONS), size=n_users, p=REGION_SHARES).astype(np.int8)
    activity = rng.lognormal(0.0, 1.0, n_users)
    user_bias = rng.normal(0.0, USER_BIAS_SD, n_users).astype(np.float32)
    theta = rng.dirichlet(np.full(n_topics, 0.3), size=n_users).astype(np.float32)
    noise = rng.standard_normal((n_users, DIM)) * 0.5 / np.sqrt(DIM)
    taste = _normalise(theta @ centroids + noise)

    n_creators = cfg.n_creators
    creator_home = rng.integers(0, n_topics, n_creators)
    creator_vec = _normalise(rng.standard_normal((n_creators, DIM)))
    creator_quality = rng.normal(0.0, CREATOR_SD, n_creators)
    creator_weight = 1.0 / np.arange(1, n_creators + 1) ** 0.8
    creator = rng.choice(n_creators, size=n_items, p=creator_weight / creator_weight.sum())

    upload = _uniform_ts(rng, n_items, ITEMS_BEFORE, ITEMS_LEAD_DAYS, cfg)
    duration = np.clip(rng.lognormal(np.log(30.0), 0.7, n_items), 5, 180).astype(np.int32)
    topics = np.full((n_items, 3), -1, dtype=np.int8)
    own = rng.random(n_items) < 0.7
    topics[:, 0] = np.where(own, creator_home[creator], rng.integers(0, n_topics, n_items))
    extra = rng.integers(0, n_topics, (n_items, 2))
    has_extra = rng.random((n_items, 2)) < 0.35
    extra[:, 1] = np.where(extra[:, 1] == extra[:, 0], -1, extra[:, 1])
    extra = np.where(has_extra & (extra != topics[:, :1]), extra, -1)
    topics[:, 1:] = extra
    mask = topics >= 0
    topic_mix = (centroids[np.maximum(topics, 0)] * mask[..., None]).sum(axis=1)
    item_noise = rng.standard_normal((n_items, DIM)) * 0.3 / np.sqrt(DIM)
    vec = _normalise(
        topic_mix / mask.sum(axis=1, keepdims=True) + 0.5 * creator_vec[creator] + item_noise
    )

    zipf = 1.0 / rng.permutation(np.arange(1, n_items + 1)) ** ZIPF_EXPONENT
    log_pop = np.log(zipf)
    pop_z = (log_pop - log_pop.mean()) / log_pop.std()
    appeal = (W_POP * pop_z + creator_quality[creator]).astype(np.float32)

    fresh_ref = cfg.start_ts + cfg.days * DAY
    fresh = zipf * np.exp((upload - fresh_ref) / (FRESH_TAU_DAYS * DAY))
    item_of_entry, slot = np.nonzero(mask)
    entry_topic = topics[item_of_entry, slot].astype(np.int64)
    keys = entry_topic * TOPIC_KEY + upload[item_of_entry]
    order = np.lexsort((item_of_entry, keys))
    topic_items = item_of_entry[order].astype(np.int32)
    return World(
        signup=signup,
        region=region,
        activity=activity,
        user_bias=user_bias,
        theta=theta,
        theta_cum=np.cumsum(theta, axis=1),
        taste=taste,
        upload=upload,
        duration=duration,
        creator=creator.astype(np.int32),
        topics=topics,
        vec=vec,
        appeal=appeal,
        cw_all=np.concatenate([[0.0], np.cumsum(zipf)]),
        cw_fresh=np.concatenate([[0.0], np.cumsum(fresh)]),
        fresh_ref=fresh_ref,
        topic_keys=keys[order],
        topic_items=topic_items,
        topic_cw=np.concatenate([[0.0], np.cumsum(zipf[topic_items])]),
        topic_start=np.searchsorted(keys[order], np.arange(n_topics + 1) * TOPIC_KEY),
    )


def daily_events(cfg: SynthConfig, world: World) -> np.ndarray:
    """Events per day, summing to ``cfg.events``, in proportion to the signed-up users' activity."""
    day_starts = cfg.start_ts + np.arange(cfg.days) * DAY
    active = np.concatenate([[0.0], np.cumsum(world.activity)])
    mass = active[np.searchsorted(world.signup, day_starts)]
    quota = cfg.events * mass / mass.sum()
    counts = np.floor(quota).astype(np.int64)
    remainder = cfg.events - counts.sum()
    counts[np.argsort(-(quota - counts), kind="stable")[:remainder]] += 1
    return counts


def _sessions(cfg: SynthConfig, world: World, day: int, events: int):
    """Users, start times and lengths of one day's sessions, ordered by start time."""
    rng = np.random.default_rng([cfg.seed, 1, day])
    day_start = cfg.start_ts + day * DAY
    eligible = int(np.searchsorted(world.signup, day_start))
    n = min(max(1, round(events / MEAN_SESSION)), eligible, max(1, events // MIN_SESSION))
    if events == 0 or eligible == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    keys = np.log(world.activity[:eligible]) + rng.gumbel(size=eligible)
    users = np.sort(np.argpartition(-keys, n - 1)[:n]) if n < eligible else np.arange(eligible)
    starts = day_start + rng.integers(0, 20 * 3600, n)
    share = np.sqrt(world.activity[users])
    base = min(MIN_SESSION, events // n)
    lengths = base + rng.multinomial(events - base * n, share / share.sum())
    order = np.lexsort((users, starts))
    return users[order], starts[order], lengths[order]


def _first_distinct(sess: np.ndarray, item: np.ndarray, lengths: np.ndarray, n_items: int):
    """Positions of each session's first ``length`` distinct items (``sess`` sorted)."""
    _, first = np.unique(sess * n_items + item, return_index=True)
    kept = np.sort(first)
    sess_k = sess[kept]
    rank = np.arange(len(kept)) - np.searchsorted(sess_k, sess_k)
    return kept[rank < lengths[sess_k]]


def _block(cfg: SynthConfig, world: World, day: int, index: int, users, starts, lengths) -> dict:
    """The impressions of one block of sessions (columns of equal length, by session then time)."""
    rng = np.random.default_rng([cfg.seed, 2, day, index])
    n_sessions = len(users)
    candidates = lengths + (lengths * OVERSAMPLE).astype(np.int64) + 4
    sess = np.repeat(np.arange(n_sessions), candidates)
    rows = len(sess)
    user, t = users[sess], starts[sess]

    # What the feed shows: popular-and-fresh items, or popular items of the user's topics.
    n_up = np.searchsorted(world.upload, t)  # items uploaded strictly before the session
    m_all = world.cw_all[n_up]
    scale = FRESH_BOOST * np.exp((world.fresh_ref - t) / (FRESH_TAU_DAYS * DAY))
    m_fresh = world.cw_fresh[n_up] * scale
    r = rng.random(rows) * (m_all + m_fresh)
    from_all = r < m_all
    pos = np.where(
        from_all,
        np.searchsorted(world.cw_all, r, side="right"),
        np.searchsorted(world.cw_fresh, (r - m_all) / scale, side="right"),
    )
    item = np.clip(pos - 1, 0, n_up - 1)

    topic = (world.theta_cum[user] < rng.random(rows)[:, None]).sum(axis=1)
    topic = np.minimum(topic, len(TOPICS) - 1)
    lo = world.topic_start[topic]
    hi = np.searchsorted(world.topic_keys, topic * TOPIC_KEY + t)
    r_topic = world.topic_cw[lo] + rng.random(rows) * (world.topic_cw[hi] - world.topic_cw[lo])
    entry = np.clip(np.searchsorted(world.topic_cw, r_topic, side="right") - 1, lo, hi - 1)
    personal = (rng.random(rows) < PERSONAL_SHARE) & (hi > lo)
    item = np.where(personal, world.topic_items[np.maximum(entry, 0)], item)

    # An item at most once per session, and the session's first ``length`` of them. A session
    # that ran out of distinct items (a small catalogue early on) is topped up with items drawn
    # uniformly from everything uploaded so far.
    kept = _first_distinct(sess, item, lengths, len(world.upload))
    short = lengths - np.bincount(sess[kept], minlength=n_sessions)
    if short.any():
        extra_sess = np.repeat(np.arange(n_sessions), 3 * short)
        n_up_extra = np.searchsorted(world.upload, starts[extra_sess])
        extra_item = (rng.random(len(extra_sess)) * n_up_extra).astype(np.int64)
        sess = np.concatenate([sess[kept], extra_sess])
        item = np.concatenate([item[kept], extra_item])
        order = np.argsort(sess, kind="stable")  # first-round items stay first
        sess, item = sess[order], item[order]
        kept = _first_distinct(sess, item, lengths, len(world.upload))
    sess, item = sess[kept], item[kept]
    user, t = users[sess], starts[sess]
    rows = len(kept)

    # The planted engagement probability.
    taste = np.einsum("ij,ij->i", world.taste[user], world.vec[item])
    item_topics = world.topics[item]
    has = item_topics >= 0
    aff = (world.theta[user[:, None], np.maximum(item_topics, 0)] * has).sum(axis=1)
    aff = aff / has.sum(axis=1) * len(TOPICS)
    age_days = (t - world.upload[item]) / DAY
    logit = (
        BIAS
        + W_TASTE * taste
        + W_TOPIC * np.log(0.2 + aff)
        + world.appeal[item]
        + W_FRESH * np.exp(-age_days / FRESH_TAU_DAYS)
        + world.user_bias[user]
    )
    p = 1.0 / (1.0 + np.exp(-logit))

    # What the user did, given p.
    engaged = rng.random(rows) < p
    completed = engaged & (rng.random(rows) < COMPLETE[0] + COMPLETE[1] * p)
    liked = engaged & (rng.random(rows) < LIKE[0] + LIKE[1] * p)
    shared = engaged & (rng.random(rows) < SHARE[0] + SHARE[1] * p)
    u = rng.random(rows)
    swiped = rng.random(rows) < SKIP_SHARE
    watch = np.where(
        engaged,
        np.where(completed, 1.0, ENGAGED_FROM + u * (1.0 - ENGAGED_FROM)),
        np.where(swiped, u * SKIP_BELOW, SKIP_BELOW + u * (ENGAGED_FROM - SKIP_BELOW)),
    )

    # Timestamps: the session's start plus the time spent on the items before (>= 1 s each).
    spent = np.ceil(watch * world.duration[item]).astype(np.int64) + 1
    before = np.cumsum(spent) - spent
    session_first = np.searchsorted(sess, sess)
    ts = np.minimum(t + before - before[session_first], cfg.start_ts + (day + 1) * DAY - 1)
    return {
        "user": user.astype(np.int32),
        "item": item.astype(np.int32),
        "timestamp": ts,
        "rating": engagement_label(watch, completed, liked, shared),
        "watch_fraction": watch.astype(np.float32),
        "completed": completed,
        "liked": liked,
        "shared": shared,
        "skipped": watch < SKIP_BELOW,
        "p_engage": p.astype(np.float32),
    }


def _take(columns: dict, index: np.ndarray) -> dict:
    return {k: v[index] for k, v in columns.items()}


def _concat(parts: list[dict]) -> dict:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def day_blocks(cfg: SynthConfig, world: World, day: int, events: int) -> Iterator[dict]:
    """One day's impressions as column blocks, sorted by timestamp across the blocks."""
    users, starts, lengths = _sessions(cfg, world, day, events)
    carry: dict | None = None
    for index, lo in enumerate(range(0, len(users), BLOCK_SESSIONS)):
        sl = slice(lo, lo + BLOCK_SESSIONS)
        block = _block(cfg, world, day, index, users[sl], starts[sl], lengths[sl])
        if carry is not None:
            block = _concat([carry, block])
        block = _take(block, np.argsort(block["timestamp"], kind="stable"))
        # Rows at or after the next block's first start may interleave with it: carry them.
        cut = lo + BLOCK_SESSIONS
        split = (
            np.searchsorted(block["timestamp"], starts[cut])
            if cut < len(users)
            else len(block["timestamp"])
        )
        carry = _take(block, np.arange(split, len(block["timestamp"])))
        yield _take(block, np.arange(split))


def _id_strings(prefix: str, n: int) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(np.arange(n)), pa.string()), "")


INTERACTIONS_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("rating", pa.float64()),
        ("timestamp", pa.int64()),
        ("watch_fraction", pa.float32()),
        ("completed", pa.bool_()),
        ("liked", pa.bool_()),
        ("shared", pa.bool_()),
        ("skipped", pa.bool_()),
        ("p_engage", pa.float32()),
    ]
)


def _interactions_table(columns: dict, user_ids: pa.Array, item_ids: pa.Array) -> pa.Table:
    arrays = {
        "user_id": user_ids.take(pa.array(columns["user"])),
        "item_id": item_ids.take(pa.array(columns["item"])),
        **{k: pa.array(columns[k]) for k in INTERACTIONS_SCHEMA.names[2:]},
    }
    return pa.table(arrays, schema=INTERACTIONS_SCHEMA)


def items_table(world: World, item_ids: pa.Array) -> pa.Table:
    topic_names = np.array(TOPICS, dtype=object)
    genres = [
        "|".join(topic_names[row[row >= 0]]) for row in world.topics
    ]  # one string per item, not per event
    first = world.topics[:, 0].astype(np.int64)
    idx = np.arange(len(first))
    title = [
        f"{ADJECTIVES[i % len(ADJECTIVES)]} {TOPICS[t]} {FORMATS[(i // 7) % len(FORMATS)]}"
        for i, t in zip(idx, first, strict=True)
    ]
    years = world.upload.astype("datetime64[s]").astype("datetime64[Y]").astype(np.int64) + 1970
    return pa.table(
        {
            "item_id": item_ids,
            "title": pa.array(title, pa.string()),
            "genres": pa.array(genres, pa.string()),
            "year": pa.array(years, pa.int64()),
            "creator_id": _id_strings("c", int(world.creator.max()) + 1).take(
                pa.array(world.creator)
            ),
            "duration_s": pa.array(world.duration, pa.int32()),
            "upload_ts": pa.array(world.upload, pa.int64()),
        }
    )


def users_table(world: World, user_ids: pa.Array) -> pa.Table:
    return pa.table(
        {
            "user_id": user_ids,
            "signup_ts": pa.array(world.signup, pa.int64()),
            "region": pa.array(np.array(REGIONS)[world.region], pa.string()),
        }
    )


def generate(
    cfg: SynthConfig, out: Path, progress: Callable[[int], None] | None = None
) -> catalog.SynthFacts:
    """Write the feed into ``out`` (atomically, file by file) and return its facts.

    ``progress`` is called with the number of events written, after each chunk.
    """
    out.mkdir(parents=True, exist_ok=True)
    world = build_world(cfg)
    user_ids = _id_strings("u", cfg.n_users)
    item_ids = _id_strings("v", cfg.n_items)
    for entry, table in (
        (catalog.USERS, users_table(world, user_ids)),
        (catalog.ITEMS, items_table(world, item_ids)),
    ):
        with catalog.atomic_path(entry.path(out)) as tmp:
            pq.write_table(table, tmp)

    written, positives = 0, 0
    buffer: list[dict] = []
    buffered = 0

    def flush(writer: pq.ParquetWriter) -> None:
        nonlocal written, positives, buffered
        if not buffer:
            return
        columns = _concat(buffer)
        writer.write_table(
            _interactions_table(columns, user_ids, item_ids), row_group_size=cfg.chunk_rows
        )
        written += len(columns["user"])
        positives += int((columns["rating"] > 0).sum())
        buffer.clear()
        buffered = 0
        if progress is not None:
            progress(written)

    with (
        catalog.atomic_path(catalog.INTERACTIONS.path(out)) as tmp,
        pq.ParquetWriter(tmp, INTERACTIONS_SCHEMA) as writer,
    ):
        for day, events in enumerate(daily_events(cfg, world)):
            for block in day_blocks(cfg, world, day, int(events)):
                buffer.append(block)
                buffered += len(block["user"])
                if buffered >= cfg.chunk_rows:
                    flush(writer)
        flush(writer)

    facts = catalog.SynthFacts(
        config={**asdict(cfg), "end": cfg.end.isoformat()},
        events=written,
        positive_share=round(positives / max(written, 1), 4),
        users=cfg.n_users,
        items=cfg.n_items,
        creators=cfg.n_creators,
        first_date=datetime.fromtimestamp(cfg.start_ts, UTC).date(),
        last_date=cfg.end,
    )
    catalog.SYNTH_FACTS.save(out, facts)
    return facts
