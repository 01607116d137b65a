"""The Feast repo in features/ is the same in every environment: its objects do not depend on
the caller's settings, its offline sources resolve under the caller's data directory, and
the real ``feast`` CLI plans it on an environment's ``feature_store.yaml``."""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines import catalog, contracts
from pipelines.config import PROJECT_ROOT, Settings

pytestmark = pytest.mark.integration

FEAST = str(Path(sys.executable).with_name("feast"))  # the CLI of this venv

# Imports the repo as the pipelines do, then writes every object's serialized proto, less
# the ``meta`` messages (the time the object was built, and later registered).
DUMP = """
import json, sys

import features.repo as repo

config_read = "pipelines.config" in sys.modules
from feast import Entity, FeatureService, FeatureView, FileSource, OnDemandFeatureView

from pipelines.feature_store import repo_objects


def without_meta(message):
    for field, value in message.ListFields():
        if field.name == "meta":
            message.ClearField("meta")
        elif hasattr(value, "ListFields"):  # a message
            without_meta(value)
        elif field.message_type is not None:  # repeated messages, or a map
            for item in value.values() if hasattr(value, "values") else value:
                if hasattr(item, "ListFields"):
                    without_meta(item)
    return message


kinds = (Entity, FileSource, FeatureView, OnDemandFeatureView, FeatureService)
defined = [o for o in vars(repo).values() if isinstance(o, kinds)]
out = {
    "config_read": config_read,
    "repo_objects_are_the_module": {id(o) for o in repo_objects()} == {id(o) for o in defined},
    "protos": {
        f"{type(o).__name__}:{o.name}": without_meta(o.to_proto())
        .SerializeToString(deterministic=True)
        .hex()
        for o in defined
    },
}
with open(sys.argv[1], "w") as f:
    json.dump(out, f)
"""


def _env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CR_")}
    return env | overrides


def _dumps(tmp_path: Path, envs: dict[str, dict[str, str]]) -> dict[str, dict]:
    """The DUMP of the repo in one fresh process per environment (run side by side)."""
    runs = {
        name: subprocess.Popen(
            [sys.executable, "-c", DUMP, str(tmp_path / f"{name}.json")],
            cwd=PROJECT_ROOT,
            env=_env(**env),
        )
        for name, env in envs.items()
    }
    for name, run in runs.items():
        assert run.wait(timeout=300) == 0, name
    return {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in runs}


def test_the_repo_is_the_same_whatever_the_callers_settings(tmp_path):
    dumps = _dumps(
        tmp_path,
        {
            "local": {"CR_DATA_DIR": str(tmp_path / "a")},
            "cluster": {
                "CR_DATA_DIR": str(tmp_path / "b"),
                "CR_FEATURE_STORE_YAML": "infra/cluster/feature_store.yaml",
                "CR_FEATURE_REPO": str(tmp_path / "elsewhere"),
            },
        },
    )
    local, cluster = dumps["local"], dumps["cluster"]
    assert local["protos"] == cluster["protos"]
    assert set(local["protos"]) == {
        "Entity:user",
        "Entity:item",
        "FileSource:user_activity_source",
        "FileSource:item_stats_source",
        "FileSource:user_factors_source",
        "FileSource:item_factors_source",
        f"FeatureView:{contracts.USER_VIEW}",
        f"FeatureView:{contracts.ITEM_VIEW}",
        f"FeatureView:{contracts.USER_FACTOR_VIEW}",
        f"FeatureView:{contracts.ITEM_FACTOR_VIEW}",
        f"OnDemandFeatureView:{contracts.ODFV}",
        f"OnDemandFeatureView:{contracts.ALS_ODFV}",
        f"OnDemandFeatureView:{contracts.CONTENT_ODFV}",
        f"OnDemandFeatureView:{contracts.RECENT_ODFV}",
        f"FeatureService:{contracts.FEATURE_SERVICE}",
    }
    assert not local["config_read"]  # importing the repo reads no settings
    assert local["repo_objects_are_the_module"]  # what apply registers is all it defines


def test_features_import_nothing_from_the_settings():
    for path in sorted((PROJECT_ROOT / "features").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [f"{node.module}.{a.name}" for a in node.names] + [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any(n.startswith("pipelines.config") for n in names), (path, names)


def test_sources_resolve_under_the_data_directory(tmp_path):
    from features import repo
    from pipelines.feature_store import open_store, source_path

    settings = Settings(data_dir=tmp_path)
    store = open_store(settings)
    sources = (
        (catalog.FEATURE_TABLE, "user", repo.user_activity_source),
        (catalog.FEATURE_TABLE, "item", repo.item_stats_source),
        (catalog.FACTOR_TABLE, "user", repo.user_factors_source),
        (catalog.FACTOR_TABLE, "item", repo.item_factors_source),
    )
    for entry, kind, source in sources:
        assert not Path(source.path).is_absolute()
        assert source_path(store, source) == str(entry.path(settings, kind=kind))
    views = (repo.user_activity_fv, repo.item_stats_fv, repo.user_factors_fv, repo.item_factors_fv)
    assert {v.ttl for v in views} == {contracts.FEATURE_TTL}


def _feast(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [FEAST, "-c", "features", "-f", "features/feature_store.yaml", *args],
        cwd=PROJECT_ROOT,
        env=_env(CR_DATA_DIR=str(data_dir)),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_feast_plan_on_the_local_yaml_lists_the_repo(tmp_path):
    plan = _feast(tmp_path, "plan")
    assert plan.returncode == 0, plan.stderr
    for line in (
        f"Created feature view {contracts.USER_VIEW}",
        f"Created feature view {contracts.ITEM_VIEW}",
        f"Created feature view {contracts.USER_FACTOR_VIEW}",
        f"Created feature view {contracts.ITEM_FACTOR_VIEW}",
        f"Created on demand feature view {contracts.ODFV}",
        f"Created on demand feature view {contracts.ALS_ODFV}",
        f"Created feature service {contracts.FEATURE_SERVICE}",
    ):
        assert line in plan.stdout, plan.stdout


def test_feast_plan_after_the_pipelines_apply_has_no_changes(tmp_path):
    """The CLI (which imports the repo's file as a top-level module) and the pipelines'
    in-process apply register the same objects."""
    from pipelines import feature_store

    feature_store.apply(Settings(data_dir=tmp_path))
    plan = _feast(tmp_path, "plan", "--skip-source-validation")
    assert plan.returncode == 0, plan.stderr
    assert "No changes to registry" in plan.stdout, plan.stdout


def test_feast_ui_serves_the_registry_the_pipelines_applied(tmp_path):
    """``feast ui`` (``make feast ARGS=ui``) on the local yaml lists the applied views."""
    import httpx

    from pipelines import feature_store

    feature_store.apply(Settings(data_dir=tmp_path))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ui = subprocess.Popen(
        [FEAST, "-c", "features", "-f", "features/feature_store.yaml", "ui",
         "-h", "127.0.0.1", "-p", str(port)],
        cwd=PROJECT_ROOT, env=_env(CR_DATA_DIR=str(tmp_path)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        views = None
        for _ in range(240):
            try:
                resp = httpx.get(
                    f"http://127.0.0.1:{port}/api/v1/feature_views",
                    params={"project": "content_ranker"},
                    timeout=5,
                )
                if resp.status_code == 200:
                    views = resp.json()
                    break
            except httpx.TransportError:
                pass
            assert ui.poll() is None, "feast ui exited"
            time.sleep(0.5)
    finally:
        ui.terminate()
        ui.wait(timeout=30)
    assert views is not None, "feast ui never answered"
    names = {v["spec"]["name"] for v in views["featureViews"]}
    assert {contracts.USER_VIEW, contracts.ITEM_VIEW} <= names, views
