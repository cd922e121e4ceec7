"""Every training run an MLflow run, and its model a new version in the registry.

While ``tierflow train`` (or ``jobs/train.py`` under ``ray job submit``) runs, the
driver records it in MLflow (:class:`RunRecorder`): the training config as params
(flattened, ``model.params.hidden``), the workers' losses live as they report them, and
when the run ends every step's loss and every epoch's validation loss as metric
histories, the evaluation next to the baseline, the curves image, the snapshot it read as
the run's dataset input (path, Delta version and, for a point-in-time training set, its
recipe), and the model with its fitted preprocessing as one MLflow model (``pyfunc``,
:mod:`tierflow.train.mlflow_model`) registered under the config's name. A tierflow run
maps to one MLflow run (tag ``tierflow.run_id``; a resumed run continues the MLflow run
of the interrupted one, and each step's loss is logged once).

Where: ``MLFLOW_TRACKING_URI`` if set, else ``tracking.uri`` in ``conf/tierflow.yaml``,
else an embedded SQLite store in the data folder (``<data>/mlflow/mlflow.db``, artifacts
beside it), which ``mlflow ui --backend-store-uri sqlite:///<data>/mlflow/mlflow.db``
shows (the UI comes with the full ``mlflow`` package, not with the light client tierflow
uses). MLflow's usage telemetry is off unless ``MLFLOW_DISABLE_TELEMETRY=false``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tierflow.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from tierflow.config.training import TrainingConfig


def _working_directory() -> None:
    """Make sure the process has a working directory before MLflow runs.

    MLflow resolves its default artifact root against it, and a ``ray job submit``
    driver's directory (Ray's copy of the job's files) can be gone by the time the run
    ends; then the system's temporary folder stands in.
    """
    try:
        Path.cwd()
    except FileNotFoundError:
        import tempfile

        os.chdir(tempfile.gettempdir())


def no_telemetry() -> None:
    """Keep MLflow from sending usage events to its makers.

    ``MLFLOW_DISABLE_TELEMETRY=false`` in the environment lets it.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


#: The tag that ties an MLflow run (and a model version) to tierflow's run id.
RUN_TAG = "tierflow.run_id"
#: MLflow's limits: a batch call takes at most 1,000 metrics and 100 params.
_METRICS_PER_CALL = 1000
_PARAMS_PER_CALL = 100
_PARAM_VALUE_MAX = 6000


@dataclass(frozen=True)
class Tracking:
    """Where runs and models are recorded.

    Attributes:
        uri: The tracking (and registry) URI.
        artifacts: Where a new experiment keeps its artifacts (``None``: the server's
            default, for a tracking server).
    """

    uri: str
    artifacts: str | None

    @classmethod
    def resolve(cls, configured: str | None, data_dir: Path) -> Tracking:
        """``MLFLOW_TRACKING_URI``, else ``configured``, else the embedded store.

        The embedded store's folder is made when a run is first recorded, not here: a
        lookup (serving, scoring) leaves the data folder as it is.
        """
        uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
        if uri:
            return cls(uri, None)
        folder = (data_dir / "mlflow").resolve()
        return cls(f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri())

    @property
    def local_file(self) -> Path | None:
        """The SQLite file of an ``sqlite:///`` store (``None`` for any other store)."""
        prefix = "sqlite:///"
        return Path(self.uri[len(prefix) :]) if self.uri.startswith(prefix) else None

    def prepare(self) -> None:
        """Make the folder of an SQLite store (MLflow creates the file, not its folder)."""
        if self.local_file is not None:
            self.local_file.parent.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class TrackedRun:
    """What the registry holds for one training run."""

    experiment_id: str
    run_id: str
    model_name: str
    model_version: int


def flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"model": {"params": {"hidden": [16]}}}`` -> ``{"model.params.hidden": "[16]"}``."""
    out: dict[str, str] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out |= flatten(value, f"{name}.")
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out[name] = text[:_PARAM_VALUE_MAX]
    return out


def history_metrics(
    history: list[dict[str, Any]], began_ms: int
) -> Iterator[tuple[str, float, int, int]]:
    """``(key, value, step, timestamp ms)`` of each step's loss and epoch's validation loss.

    As the run recorded them; a value that is not a number is left out.
    """
    for entry in history:
        step = int(entry.get("step", 0))
        at = began_ms + int(1000 * float(entry.get("seconds", 0.0)))
        for key in ("loss", "valid_loss"):
            value = entry.get(key)
            if isinstance(value, int | float) and not math.isnan(value):
                yield key, float(value), step, at


def evaluation_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``valid.auc``, ``test.log_loss``, ``test.baseline.auc``... from ``metrics.json``."""
    out: dict[str, float] = {}
    for split in ("valid", "test"):
        for key, value in flatten(metrics.get(split) or {}, f"{split}.").items():
            try:
                number = float(value)
            except ValueError:
                continue
            if not math.isnan(number):
                out[key] = number
    for key in ("seconds", "steps"):
        if isinstance(metrics.get(key), int | float):
            out[f"train.{key}"] = float(metrics[key])
    return out


def parse_model_ref(ref: str) -> tuple[str, int | None, str | None]:
    """``NAME``, ``NAME@3`` (a version) or ``NAME@champion`` (an alias).

    Raises:
        UsageError: an empty name or reference.
    """
    name, sep, which = ref.partition("@")
    if not name or (sep and not which):
        raise UsageError(f"--model {ref!r}: give NAME, NAME@VERSION or NAME@ALIAS")
    if not sep:
        return name, None, None
    return (name, int(which), None) if which.isdigit() else (name, None, which)


class RunRecorder:
    """One training run's MLflow run, opened while the model trains.

    :meth:`start` opens the run in a thread of its own (importing MLflow and, for a new
    embedded store, creating its tables take seconds, while the driver only waits for
    its workers): the experiment, the run (found again by its tierflow run id when a
    run is resumed) and the config as params. :meth:`live` queues the step and loss the
    workers report, which that thread logs as they come, so the MLflow UI shows the
    curve growing. :meth:`finish` waits for the thread, then logs what the run left:
    the history not logged live, the evaluation, the dataset, the artifacts, and the
    model, registered as a new version. An error in the thread is raised by
    :meth:`finish`: a run that MLflow could not record fails after its model is
    published.
    """

    def __init__(
        self,
        tracking: Tracking,
        config: TrainingConfig,
        *,
        run_id: str,
        started_ms: int,
        parent: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """``parent``: the MLflow run this one is a child of (a search's trial)."""
        import queue
        import threading

        self.tracking, self.config, self.run_id = tracking, config, run_id
        self.started_ms = started_ms
        self.tags = dict(tags or {}) | ({"mlflow.parentRunId": parent} if parent else {})
        self._queue: queue.SimpleQueue[tuple[str, float, int] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._client: Any = None
        self._experiment_id = ""
        self._mlflow_run = ""

    def start(self, plan: Mapping[str, Any]) -> None:
        """Open the run in the background (see the class doc)."""
        import threading

        def work() -> None:
            try:
                self._open(plan)
                # Live metrics until finish() puts None; a failed call loses a live point,
                # which finish() logs again from the history.
                while (item := self._queue.get()) is not None:
                    key, value, step = item
                    self._client.log_metric(self._mlflow_run, key, value, _now_ms(), step)
            except BaseException as exc:  # raised again by finish()
                self._error = exc

        self._thread = threading.Thread(target=work, name="tierflow-mlflow", daemon=True)
        self._thread.start()

    def live(self, status: Mapping[str, Any]) -> None:
        """A step's loss as the workers report it (``live.json``)."""
        loss = status.get("loss")
        if isinstance(loss, int | float) and not math.isnan(loss):
            self._queue.put(("loss", float(loss), int(status["step"])))

    def _open(self, plan: Mapping[str, Any]) -> None:
        no_telemetry()
        _working_directory()
        from mlflow import MlflowClient
        from mlflow.entities import Param

        import tierflow.train.mlflow_model  # noqa: F401 - MLflow's pyfunc, imported now

        config = self.config
        self.tracking.prepare()
        client = MlflowClient(tracking_uri=self.tracking.uri, registry_uri=self.tracking.uri)
        experiment = client.get_experiment_by_name(config.name)
        self._experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else client.create_experiment(
                config.name, artifact_location=_artifacts(self.tracking, config)
            )
        )
        found = client.search_runs(
            [self._experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{self.run_id}'",
            max_results=1,
        )  # fmt: skip
        if found:  # a resumed run: the same MLflow run
            self._mlflow_run = found[0].info.run_id
            client.update_run(self._mlflow_run, status="RUNNING")
        else:
            self._mlflow_run = client.create_run(
                self._experiment_id, start_time=self.started_ms, run_name=self.run_id,
                tags={RUN_TAG: self.run_id, "tierflow.strategy": str(plan.get("strategy")),
                      "tierflow.workers": str(plan.get("workers")), **self.tags},
            ).info.run_id  # fmt: skip
            params = [Param(k, v) for k, v in flatten(config.model_dump(mode="json")).items()]
            for i in range(0, len(params), _PARAMS_PER_CALL):
                client.log_batch(self._mlflow_run, params=params[i : i + _PARAMS_PER_CALL])
        self._client = client

    def _opened(self, timeout: float | None = None) -> Any:
        """The client, once the thread has opened the run (its error raised)."""
        if self._thread is None:
            raise RuntimeError("RunRecorder.finish() before start()")
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"MLflow did not answer within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._client

    def client(self) -> Any:
        """The MLflow client, once the run is open (live metrics end here)."""
        return self._opened()

    @property
    def mlflow_run(self) -> str:
        """The MLflow run's id (once open)."""
        return self._mlflow_run

    @property
    def experiment_id(self) -> str:
        """The experiment's id (once open)."""
        return self._experiment_id

    def fail(self) -> None:
        """Mark the run failed (training raised); quiet if it was never opened."""
        try:
            # Briefly: a tracking server that does not answer must not hold up the error.
            client = self._opened(timeout=10)
            client.set_terminated(self._mlflow_run, "FAILED")
        except Exception:  # noqa: S110 - the training error is the one to report
            pass

    def finish(
        self,
        *,
        run_folder: Path,
        snapshot: tuple[str, int],
        metrics: Mapping[str, Any],
    ) -> TrackedRun:
        """Log what the finished run left in ``run_folder`` and register its model.

        ``run_folder`` holds ``model.pt``, ``history.json``, ``metrics.json`` and
        ``curves.png``.
        """
        client = self._opened()
        import mlflow
        from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, RunTag

        config, mlflow_run = self.config, self._mlflow_run
        history = json.loads((run_folder / "history.json").read_text())
        # What is logged already (live, or before a resumed run was interrupted) once.
        logged = {
            (key, m.step)
            for key in ("loss", "valid_loss")
            for m in client.get_metric_history(mlflow_run, key)
        }
        rows = [
            Metric(k, v, at, step)
            for k, v, step, at in history_metrics(history, self.started_ms)
            if (k, step) not in logged
        ]
        now = _now_ms()
        last = int(metrics.get("steps", 0))
        rows += [Metric(k, v, now, last) for k, v in evaluation_metrics(metrics).items()]
        for i in range(0, len(rows), _METRICS_PER_CALL):
            client.log_batch(mlflow_run, metrics=rows[i : i + _METRICS_PER_CALL])

        path, version = snapshot
        recipe = _recipe(path, version)
        dataset = Dataset(
            name=Path(path).name, digest=f"v{version}", source_type="delta",
            source=json.dumps({"path": path, "version": version}),
            profile=json.dumps({"rows": metrics.get("rows", {})}),
            schema=json.dumps({"recipe": recipe}) if recipe else None,
        )  # fmt: skip
        client.log_inputs(
            mlflow_run,
            datasets=[DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])],
        )
        client.log_batch(mlflow_run, tags=[RunTag("tierflow.snapshot", f"{path}@v{version}")])
        for name in ("curves.png", "metrics.json", "history.json"):
            if (run_folder / name).is_file():
                client.log_artifact(mlflow_run, str(run_folder / name))

        from tierflow.train.mlflow_model import log_model

        mlflow.set_tracking_uri(self.tracking.uri)
        mlflow.set_registry_uri(self.tracking.uri)
        with mlflow.start_run(run_id=mlflow_run):
            info = log_model(run_folder / "model.pt", config.name)
        model_version = _version_of(client, config.name, info.model_id, mlflow_run)
        tags = {RUN_TAG: self.run_id, "tierflow.snapshot": f"{path}@v{version}"}
        for key, value in tags.items():
            client.set_model_version_tag(config.name, str(model_version), key, value)
        client.set_terminated(mlflow_run, "FINISHED")
        return TrackedRun(self._experiment_id, mlflow_run, config.name, model_version)


def record_run(
    tracking: Tracking,
    config: TrainingConfig,
    *,
    run_id: str,
    run_folder: Path,
    snapshot: tuple[str, int],
    plan: Mapping[str, Any],
    metrics: Mapping[str, Any],
    started_ms: int,
) -> TrackedRun:
    """Record a finished training run at once (:class:`RunRecorder` without live metrics)."""
    recorder = RunRecorder(tracking, config, run_id=run_id, started_ms=started_ms)
    recorder.start(plan)
    return recorder.finish(run_folder=run_folder, snapshot=snapshot, metrics=metrics)


def load_model_folder(tracking: Tracking, ref: str, into: Path) -> tuple[Path, int] | None:
    """Download a registered model version's ``model.pt`` into ``into``.

    Returns:
        The folder holding it and the version; ``None`` when the registry has no model of
        that name (serving then looks for the model published in the data folder).

    Raises:
        UsageError: the registry has the model, but not that version or alias.
    """
    name, version, alias = parse_model_ref(ref)
    if tracking.local_file is not None and not tracking.local_file.is_file():
        return None  # no run was ever recorded here: nothing is registered (MLflow unread)
    no_telemetry()
    _working_directory()
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking.uri, registry_uri=tracking.uri)
    try:
        client.get_registered_model(name)
    except MlflowException:
        return None
    try:
        if alias is not None:
            found = client.get_model_version_by_alias(name, alias)
        elif version is not None:
            found = client.get_model_version(name, str(version))
        else:
            versions = client.search_model_versions(f"name = '{name}'")
            found = max(versions, key=lambda v: int(v.version))
    except (MlflowException, ValueError) as exc:
        raise UsageError(f"model {ref}: no such version or alias in {tracking.uri}") from exc
    import mlflow.artifacts

    # Where the version's files are, from this client: a ``models:/`` URI would be resolved
    # against MLflow's global registry, a database in the working directory by default.
    uri = client.get_model_version_download_uri(name, str(found.version))
    local = Path(
        mlflow.artifacts.download_artifacts(uri, dst_path=str(into), tracking_uri=tracking.uri)
    )
    weights = sorted(local.rglob("model.pt"))
    if not weights:
        raise ConfigError(f"model {name} version {found.version} has no model.pt ({local})")
    return weights[0].parent, int(found.version)


def _version_of(client: Any, name: str, model_id: str | None, run_id: str) -> int:
    versions = client.search_model_versions(f"name = '{name}'")
    mine = [v for v in versions if v.run_id == run_id or (model_id and v.model_id == model_id)]
    return max(int(v.version) for v in mine)


def _artifacts(tracking: Tracking, config: TrainingConfig) -> str | None:
    if tracking.artifacts is None:
        return None
    return f"{tracking.artifacts}/{re.sub(r'[^A-Za-z0-9_.-]', '_', config.name)}"


def _recipe(path: str, version: int) -> dict[str, Any] | None:
    """The training-set recipe recorded with the snapshot version, if it has one."""
    from tierflow.features.training import read_recipe

    try:
        return read_recipe(path, version)
    except (ValueError, OSError):
        return None


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
