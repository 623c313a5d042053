"""The one module that imports MLflow: runs, metrics, artifacts, dataset inputs and registered versions."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import mlflow
from mlflow.tracking import MlflowClient

from tl_platform.data.schema import LabelledDataset

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value
Found = TypeVar("Found")


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    source: str
    tags: dict[str, str] | None = None


class MlflowRunTracker:
    """One active MLflow run; implements ``RunTracker`` plus the artifact and registry calls assets need."""

    def __init__(self, client: MlflowClient, run_id: str, ui_url: str | None) -> None:
        self._client = client
        self.run_id = run_id
        self.ui_url = ui_url

    def log_params(self, params: Mapping[str, object]) -> None:
        for key, value in params.items():
            mlflow.log_param(key, str(value)[:MAX_PARAM_LENGTH])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        finite = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}
        if finite:
            mlflow.log_metrics(finite, step=step)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        mlflow.set_tags(dict(tags))

    def log_artifacts(self, directory: Path, artifact_path: str) -> None:
        mlflow.log_artifacts(str(directory), artifact_path=artifact_path)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_dataset(self, dataset: LabelledDataset, name: str, context: str, digest: str) -> None:
        """Record a split as a run input, with its content hash as the digest MLflow shows."""
        import pandas as pd

        frame = pd.DataFrame(dataset.to_records())
        mlflow_dataset = mlflow.data.from_pandas(  # type: ignore[attr-defined]
            frame, source=dataset.source, name=name, targets="label", digest=digest[:36]
        )
        mlflow.log_input(mlflow_dataset, context=context)

    def log_bundle(self, directory: Path, artifact_path: str, model_name: str, tags: Mapping[str, str]) -> RegisteredVersion:
        """Log a sealed bundle directory as run artifacts and register it as a new model version."""
        self.log_artifacts(directory, artifact_path)
        return self.register_artifact_dir(artifact_path, model_name, tags)

    def register_artifact_dir(self, artifact_path: str, name: str, tags: Mapping[str, str]) -> RegisteredVersion:
        """Register a logged bundle directory as a new version of the model ``name``."""
        try:
            self._client.get_registered_model(name)
        except mlflow.exceptions.MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            self._client.create_registered_model(name)
        source = f"runs:/{self.run_id}/{artifact_path}"
        version = self._client.create_model_version(
            name=name, source=source, run_id=self.run_id, tags=dict(tags), run_link=self.ui_url
        )
        return RegisteredVersion(name=name, version=str(version.version), source=source, tags=dict(tags))


@dataclass(frozen=True)
class MlflowSettings:
    """Where runs go. ``artifact_location`` applies when the experiment is first created."""

    tracking_uri: str
    experiment_name: str
    artifact_location: str | None = None
    ui_base_url: str | None = None


@contextmanager
def start_tracked_run(
    settings: MlflowSettings, run_name: str, tags: Mapping[str, str], nested: bool = False
) -> Iterator[MlflowRunTracker]:
    """Open one MLflow run; it ends FINISHED on success and FAILED when the body raises.

    ``nested`` opens it as a child of the run active in this process (MLflow's UI shows it under its parent)."""
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.experiment_name)
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else client.create_experiment(settings.experiment_name, artifact_location=settings.artifact_location)
    )
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=dict(tags), nested=nested) as run:
        url = None
        if settings.ui_base_url:
            url = f"{settings.ui_base_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run.info.run_id}"
        yield MlflowRunTracker(client, run.info.run_id, url)


def search_runs(settings: MlflowSettings, filter_string: str = "") -> list[dict[str, object]]:
    """Runs of the experiment as plain dicts (id, name, status, params, metrics, tags), newest first."""
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.experiment_name)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], filter_string=filter_string, order_by=["start_time DESC"])
    return [
        {
            "run_id": r.info.run_id,
            "name": r.info.run_name,
            "status": r.info.status,
            "start_time": r.info.start_time,
            "end_time": r.info.end_time,
            "params": dict(r.data.params),
            "metrics": dict(r.data.metrics),
            "tags": dict(r.data.tags),
        }
        for r in runs
    ]


def runs_with_tag(settings: MlflowSettings, key: str, value: str) -> list[dict[str, object]]:
    """Runs of the experiment whose tag ``key`` equals ``value``, newest first (as ``search_runs``)."""
    if "`" in key or "'" in value:
        raise ValueError(f"run search needs a tag key without backticks and a value without quotes, got {key!r}={value!r}")
    return search_runs(settings, f"tags.`{key}` = '{value}'")


def set_run_tags(settings: MlflowSettings, run_id: str, tags: Mapping[str, str]) -> None:
    """Tag a run after it ended (an experiment's status, its daily verdicts)."""
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def metric_history(settings: MlflowSettings, run_id: str, key: str) -> list[tuple[int, float]]:
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def registered_versions(settings: MlflowSettings, name: str) -> list[RegisteredVersion]:
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    return [
        RegisteredVersion(name=v.name, version=str(v.version), source=str(v.source))
        for v in client.search_model_versions(f"name='{name}'")
    ]


def registered_versions_with_aliases(settings: MlflowSettings, name: str) -> list[tuple[str, list[str], dict[str, str]]]:
    """(version, its aliases, its tags) of every version of ``name``, newest first."""
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    found = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version), reverse=True)
    if not found:
        return []
    # a search leaves versions' aliases empty; the registered model holds the alias -> version map
    by_version: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    return [(str(v.version), sorted(by_version.get(str(v.version), [])), dict(v.tags)) for v in found]


def _names_something_absent(err: mlflow.exceptions.MlflowException) -> bool:
    """The registry's way of saying a model, version or alias does not exist (the stores differ in the code)."""
    return err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def _unless_absent(fetch: Callable[[], Found]) -> Found | None:
    """What ``fetch`` returns, or None when the registry says it does not exist; any other error is raised."""
    try:
        return fetch()
    except mlflow.exceptions.MlflowException as err:
        if _names_something_absent(err):
            return None
        raise


class MlflowRegistry:
    """The model registry of one tracking store, as promotion code sees it (``ModelRegistry``)."""

    def __init__(self, settings: MlflowSettings) -> None:
        self._settings = settings
        self._client = MlflowClient(tracking_uri=settings.tracking_uri)

    def alias_version(self, name: str, alias: str) -> str | None:
        return _unless_absent(lambda: str(self._client.get_model_version_by_alias(name, alias).version))

    def version_tags(self, name: str, version: str) -> dict[str, str] | None:
        return _unless_absent(lambda: dict(self._client.get_model_version(name, version).tags))

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._client.set_registered_model_alias(name, alias, version)

    def delete_alias(self, name: str, alias: str) -> None:
        self._client.delete_registered_model_alias(name, alias)

    def set_version_tags(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self._client.set_model_version_tag(name, version, key, value)

    def model_tag(self, name: str, key: str) -> str | None:
        """A tag of the registered model itself (not of a version), or None when the model or the tag is absent."""
        found = _unless_absent(lambda: self._client.get_registered_model(name))
        return None if found is None else found.tags.get(key)

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        self._client.set_registered_model_tag(name, key, value)

    def download_version(self, name: str, version: str, destination: Path) -> Path:
        """Copy a registered version's artifacts from the tracking server into ``destination``; return the
        downloaded directory."""
        found = self._client.get_model_version(name, version)
        registered = RegisteredVersion(name=found.name, version=str(found.version), source=str(found.source))
        return download_version(self._settings, registered, destination)


_UNAVAILABLE_MARKERS = (
    "max retries exceeded", "connection refused", "connection reset", "read timed out", "temporarily unavailable",
    "database is locked", "status code 502", "status code 503", "status code 504",
)


def is_tracking_unavailable(err: BaseException) -> bool:
    """True when the tracking store could not be reached or was busy: a later attempt may well succeed.

    MLflow reports an unreachable server as an MlflowException whose message carries the HTTP library's
    error, so the message is read as well as the exception chain.
    """
    seen: BaseException | None = err
    for _ in range(16):  # the chain of causes; bounded against a cycle
        if seen is None:
            return False
        if isinstance(seen, ConnectionError | TimeoutError):
            return True
        reported_by_client = isinstance(seen, mlflow.exceptions.MlflowException | OSError) or type(
            seen
        ).__module__.startswith(("requests", "urllib3", "sqlalchemy"))
        if reported_by_client and any(marker in str(seen).lower() for marker in _UNAVAILABLE_MARKERS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def version_by_alias(settings: MlflowSettings, name: str, alias: str) -> RegisteredVersion | None:
    """The version an alias points at, or None when the model or the alias does not exist."""
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    found = _unless_absent(lambda: client.get_model_version_by_alias(name, alias))
    if found is None:
        return None
    return RegisteredVersion(name=found.name, version=str(found.version), source=str(found.source), tags=dict(found.tags))


def version_by_tag(settings: MlflowSettings, name: str, key: str, value: str) -> RegisteredVersion | None:
    """The newest version of ``name`` whose tag ``key`` equals ``value`` (a bundle digest, say), or None."""
    if not key.replace("_", "").replace(".", "").isalnum() or "'" in value:
        raise ValueError(f"tag search needs a plain key and a value without quotes, got {key!r}={value!r}")
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    found = _unless_absent(lambda: client.search_model_versions(f"name='{name}' and tags.`{key}`='{value}'"))
    if not found:
        return None
    newest = max(found, key=lambda v: int(v.version))
    return RegisteredVersion(name=newest.name, version=str(newest.version), source=str(newest.source), tags=dict(newest.tags))


def download_version(settings: MlflowSettings, version: RegisteredVersion, destination: Path) -> Path:
    """Copy a registered version's artifacts from the tracking server's store into ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=version.source, dst_path=str(destination), tracking_uri=settings.tracking_uri
    )
    return Path(local)
