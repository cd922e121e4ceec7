"""``tierflow tune CONFIG``: a search over the ``tune:`` block of a training config.

The driver reads the snapshot and fits the preprocessing once (every trial trains on the
same data, split and features), plans the strategy as ``tierflow train`` does, and runs
Ray Tune over the block's ``space``: each trial is a Ray Train run of the same worker
loop with its settings (data-parallel when the plan is), under
``<storage>/<name>/runs/<run id>/trials/<trial>``. Rank 0's validation loss at each
epoch's end goes to Tune, whose ASHA scheduler stops the trials that fall behind (the
``asha`` block; none when it is ``null``). The best trial that ran every epoch (lowest
final validation loss) is evaluated on the valid and test splits like a training run,
and published to ``<storage>/<name>/`` with the search's run id.

In MLflow the search is one run (tag ``tierflow.run_id``, the space as params, the best
validation loss) with a child run per trial (its settings as params, its validation loss
per epoch, ``tierflow.trial_status`` ``completed``, ``stopped`` by ASHA or ``failed``);
the best trial's child run holds the model, registered as a new version of the config's
name. A plan of one worker trains in Tune's trial actor (one CPU); a data-parallel
trial's actor takes no CPU (it only waits for its Ray Train run), so ``concurrent``
trials of N workers each need N times as many CPUs.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tierflow.config.training import SearchParam, TrainingConfig, with_params
from tierflow.errors import ConfigError

if TYPE_CHECKING:
    from tierflow.train.runner import TrainResult
    from tierflow.train.tracking import Tracking


@dataclass(frozen=True)
class Trial:
    """One trial of a search, as it ended."""

    trial_id: str
    params: dict[str, Any]
    valid_losses: list[float]  # at each epoch's end, as reported
    status: str  # completed, stopped (by ASHA) or failed
    error: str | None = None

    @property
    def final(self) -> float:
        """The last validation loss (NaN when none was reported)."""
        return self.valid_losses[-1] if self.valid_losses else math.nan


@dataclass
class TuneOutcome:
    """A search's trials and its published best."""

    run_id: str
    trials: list[Trial]
    best: Trial
    result: TrainResult
    mlflow: dict[str, Any] = field(default_factory=dict)


def check_space(config: TrainingConfig) -> None:
    """Check every range of the ``tune`` block against the config, before anything runs.

    Raises:
        ConfigError: no ``tune`` block, or a value that gives an invalid training config
            (naming the key and the value).
    """
    from pydantic import ValidationError

    if config.tune is None:
        raise ConfigError(f"{config.name}: the training config has no `tune:` block to search")
    for key, param in config.tune.space.items():
        for value in param.values():
            try:
                with_params(config, {key: value})
            except ValidationError as exc:
                problem = exc.errors()[0]
                raise ConfigError(
                    f"{config.name}: tune.space.{key} = {value!r} gives an invalid config: "
                    f"{problem['msg']}"
                ) from exc


def search_space(config: TrainingConfig) -> dict[str, Any]:
    """The ``tune`` block's space as Ray Tune's, checked first (:func:`check_space`)."""
    from ray import tune

    check_space(config)
    assert config.tune is not None
    return {key: _domain(tune, param) for key, param in config.tune.space.items()}


def _domain(tune: Any, param: SearchParam) -> Any:
    if param.choice is not None:
        return tune.choice(param.choice)
    if param.grid is not None:
        return tune.grid_search(param.grid)
    if param.uniform is not None:
        return tune.uniform(*param.uniform)
    if param.loguniform is not None:
        return tune.loguniform(*param.loguniform)
    assert param.randint is not None
    return tune.randint(*param.randint)


def _epoch_reports() -> Any:
    """A Ray Train callback handing rank 0's validation loss at each epoch's end to Tune.

    The worker loop also reports at mid-epoch checkpoints, without a validation loss;
    those stay with Ray Train (Tune wants its metric in every report).
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochReports(TuneReportCallback):
        def after_report(self, run_context: Any, metrics: Any, checkpoint: Any) -> None:
            del checkpoint  # Ray Train keeps it; Tune is given the metrics only
            first = metrics[0] if metrics else {}
            if "valid_loss" in first:
                epoch = {k: first[k] for k in ("valid_loss", "epoch", "step") if k in first}
                super().after_report(run_context, [epoch], None)

    return EpochReports()  # type: ignore[no-untyped-call]


def in_process(plan: Any) -> bool:
    """Whether a trial trains in Tune's own actor.

    A plan of one worker needs no Ray Train worker group: two processes fewer to start
    for each trial.
    """
    return bool(plan.workers == 1 and plan.strategy == "single")


def _trial_session(folder: Path, keep: int) -> Any:
    """A one-process session whose epoch ends are also Tune's reports."""
    from ray import tune

    from tierflow.train.session import LocalSession

    class TrialSession(LocalSession):
        def save(
            self, metrics: dict[str, Any], state: dict[str, Any], meta: dict[str, Any]
        ) -> None:
            super().save(metrics, state, meta)  # the checkpoint first: ASHA may stop here
            if "valid_loss" in metrics:
                keys = ("valid_loss", "epoch", "step")
                tune.report({k: metrics[k] for k in keys if k in metrics})

    return TrialSession(folder, 0, 1, keep)


def run_trial(
    params: dict[str, Any], *, base: TrainingConfig, data: Any, plan: Any, root: str
) -> None:
    """One trial (in Tune's trial actor): a training run with ``params`` applied.

    On a plan of one worker it trains in this process; otherwise it runs a Ray Train
    worker group. Its checkpoints go under the trial's folder; ASHA (or the last epoch: a
    trial that reaches ``max_t`` is stopped as it reports) may end it as soon as it
    reports, so the driver reads the best trial's model from its last checkpoint, not
    from anything written after the run.
    """
    from ray import tune

    from tierflow.train.loop import WorkerSettings, run
    from tierflow.train.runner import fit_on_ray

    config = with_params(base, params)
    folder = Path(root) / tune.get_context().get_trial_id()
    folder.mkdir(parents=True, exist_ok=True)
    settings = WorkerSettings(config, plan.strategy, plan.use_gpu)
    if in_process(plan):
        run(settings, data, _trial_session(folder, config.checkpoint.keep))
    else:
        fit_on_ray(settings, data, plan, folder, callbacks=[_epoch_reports()])


def _last_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``(meta, state)`` of the last checkpoint of a trial (Ray Train's, or its own)."""
    from tierflow.train.runner import newest_checkpoint
    from tierflow.train.session import LocalSession, read_checkpoint

    latest = newest_checkpoint(folder / "ray")
    if latest is not None:
        return read_checkpoint(Path(latest.path))
    own = LocalSession(folder, 0, 1, keep=1).checkpoints()
    if not own:
        raise RuntimeError(f"the trial in {folder} left no checkpoint")
    return read_checkpoint(own[-1])


def tune_training(
    config: TrainingConfig,
    data_dir: Path,
    *,
    run_id: str,
    tracking: Tracking,
    ray_address: str | None = None,
    progress: Callable[[str], None] = print,
) -> TuneOutcome:
    """Run the search of ``config.tune`` (see the module doc).

    Raises:
        ConfigError: no ``tune`` block, or a range that gives an invalid config.
        RuntimeError: no trial ran every epoch.
    """
    from tierflow.train.runner import TrainResult, open_run, publish, write_artifacts

    space = search_space(config)
    opened = open_run(config, data_dir, run_id=run_id, ray_address=ray_address,
                      progress=progress, kind="search")  # fmt: skip
    folder, published, path, version, data, plan = (
        opened.folder, opened.published, opened.snapshot, opened.version, opened.data,
        opened.plan,
    )  # fmt: skip
    started_ms = int(time.time() * 1000)
    parent = _Parent(tracking, config, run_id, started_ms)

    trials_root = folder / "trials"
    tuner = _tuner(config, space, run_trial_params(data, plan, trials_root), folder)
    grid = tuner.fit()
    trials = [_trial_of(result, config.epochs) for result in grid]
    done = [t for t in trials if t.status == "completed" and not math.isnan(t.final)]
    for t in trials:
        progress(f"trial {t.trial_id} {_describe(t.params)}: {t.status}, validation loss "
                 + (f"{t.final:.4f} after {len(t.valid_losses)} epoch(s)" if t.valid_losses
                    else "none" + (f" ({t.error})" if t.error else "")))  # fmt: skip
    if not done:
        raise RuntimeError(f"{config.name}: no trial of search {run_id} ran every epoch")
    best = min(done, key=lambda t: t.final)
    progress(f"best: trial {best.trial_id} {_describe(best.params)}, validation loss "
             f"{best.final:.4f}")  # fmt: skip

    best_config = with_params(config, best.params)
    meta, state = _last_checkpoint(trials_root / best.trial_id)
    seconds = max((float(e.get("seconds", 0.0)) for e in meta["history"]), default=0.0)
    metrics = write_artifacts(best_config, plan, data, version, folder, (meta, state), seconds)
    metrics["tune"] = {"trials": len(trials), "best_trial": best.trial_id,
                       "best_params": best.params, "stopped": sum(t.status == "stopped"
                                                                  for t in trials)}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    publish(folder, published, run_id, version)
    result = TrainResult(best_config.name, plan, version, metrics, published, None, run_id, folder)
    outcome = TuneOutcome(run_id, trials, best, result)
    outcome.mlflow = parent.finish(
        trials, best, best_config, folder=folder, snapshot=(path, version), metrics=metrics,
        plan={"strategy": plan.strategy, "workers": plan.workers}, trials_root=trials_root,
    )  # fmt: skip
    return outcome


def run_trial_params(data: Any, plan: Any, root: Path) -> dict[str, Any]:
    """What every trial is given besides its settings (put in Ray's object store once)."""
    return {"data": data, "plan": plan, "root": str(root)}


def _tuner(config: TrainingConfig, space: dict[str, Any], shared: dict[str, Any],
           folder: Path) -> Any:  # fmt: skip
    """Ray Tune's ``Tuner`` for the search: ASHA, the search's seed, the trial budget."""
    from ray import tune

    assert config.tune is not None
    settings = config.tune
    scheduler = None
    if settings.asha is not None:
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(
            time_attr="training_iteration",  # one report per epoch
            max_t=config.epochs, grace_period=min(settings.asha.grace_period, config.epochs),
            reduction_factor=settings.asha.reduction_factor,
        )  # fmt: skip
    search_alg = None
    if settings.seed is not None:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        # Given a generator, Tune leaves the limit on trials at once to it.
        search_alg = BasicVariantGenerator(
            random_state=settings.seed, max_concurrent=settings.concurrent
        )
    trainable = tune.with_parameters(run_trial, base=config, **shared)
    plan = shared["plan"]
    resources: dict[str, float]
    if in_process(plan):
        resources = {"cpu": 1, "gpu": 1 if plan.use_gpu else 0}
    else:
        # The trial's actor only waits for its Ray Train run, whose workers hold the CPUs:
        # it asks for none (Tune wants something asked for: a MiB of Ray's memory).
        resources = {"cpu": 0, "memory": 2**20}
    trainable = tune.with_resources(trainable, resources)
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric="valid_loss", mode="min", num_samples=settings.trials,
            max_concurrent_trials=None if search_alg else settings.concurrent,
            scheduler=scheduler,
            search_alg=search_alg,
        ),
        run_config=tune.RunConfig(name="tune", storage_path=str(folder), verbose=0),
    )  # fmt: skip


def _describe(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sorted(params.items()))


def _trial_of(result: Any, epochs: int) -> Trial:
    """A Tune result as a :class:`Trial`: completed, stopped early, or failed."""
    frame = result.metrics_dataframe
    losses: list[float] = []
    if frame is not None and "valid_loss" in frame:
        losses = [float(v) for v in frame["valid_loss"].dropna()]
    trial_id = str((result.metrics or {}).get("trial_id") or Path(result.path).name)
    params = dict(result.config or {})
    if result.error is not None:
        return Trial(trial_id, params, losses, "failed", f"{type(result.error).__name__}")
    status = "completed" if len(losses) >= epochs else "stopped"
    return Trial(trial_id, params, losses, status)


class _Parent:
    """The search's MLflow run, opened in the background while the trials run."""

    def __init__(
        self, tracking: Tracking, config: TrainingConfig, run_id: str, started_ms: int
    ) -> None:
        from tierflow.train.tracking import RunRecorder

        self.tracking, self.config, self.run_id = tracking, config, run_id
        self.started_ms = started_ms
        self.recorder = RunRecorder(tracking, config, run_id=run_id, started_ms=started_ms,
                                    tags={"tierflow.kind": "tune"})  # fmt: skip
        self.recorder.start({"strategy": "tune", "workers": config.tune.concurrent
                             if config.tune else 1})  # fmt: skip

    def finish(
        self,
        trials: list[Trial],
        best: Trial,
        best_config: TrainingConfig,
        *,
        folder: Path,
        snapshot: tuple[str, int],
        metrics: Mapping[str, Any],
        plan: Mapping[str, Any],
        trials_root: Path,
    ) -> dict[str, Any]:
        """Child runs for the trials, the best one's model registered; the parent ended."""
        from mlflow.entities import Metric, Param

        from tierflow.train.tracking import RunRecorder, flatten

        client = self.recorder.client()
        parent_run = self.recorder.mlflow_run
        tracked = None
        for trial in trials:
            tags = {"tierflow.trial_id": trial.trial_id, "tierflow.trial_status": trial.status}
            if trial is best:
                recorder = RunRecorder(
                    self.tracking, best_config, run_id=f"{self.run_id}/{trial.trial_id}",
                    started_ms=self.started_ms, parent=parent_run, tags=tags,
                )  # fmt: skip
                recorder.start(plan)
                tracked = recorder.finish(run_folder=folder, snapshot=snapshot, metrics=metrics)
                continue
            run = client.create_run(
                self.recorder.experiment_id, start_time=self.started_ms,
                run_name=f"{self.run_id}/{trial.trial_id}",
                tags={"mlflow.parentRunId": parent_run, **tags},
            )  # fmt: skip
            trial_config = with_params(self.config, trial.params).model_dump(mode="json")
            params = [Param(k, v) for k, v in flatten(trial_config).items() if k != "tune"]
            now = int(time.time() * 1000)
            rows = [Metric("valid_loss", v, now, i + 1) for i, v in enumerate(trial.valid_losses)]
            if trial.status == "completed":
                steps = _last_checkpoint(trials_root / trial.trial_id)[0]["history"]
                rows += [
                    Metric("loss", float(e["loss"]), now, int(e["step"]))
                    for e in steps
                    if isinstance(e.get("loss"), float) and not math.isnan(e["loss"])
                ]
            for i in range(0, max(len(params), 1), 100):
                client.log_batch(run.info.run_id, params=params[i : i + 100])
            for i in range(0, len(rows), 1000):
                client.log_batch(run.info.run_id, metrics=rows[i : i + 1000])
            status = {"completed": "FINISHED", "stopped": "KILLED"}.get(trial.status, "FAILED")
            client.set_terminated(run.info.run_id, status)
        assert tracked is not None
        now = int(time.time() * 1000)
        summary = {"best.valid_loss": best.final, "trials": float(len(trials)),
                   "trials.stopped": float(sum(t.status == "stopped" for t in trials))}  # fmt: skip
        client.log_batch(parent_run, metrics=[Metric(k, v, now, 0) for k, v in summary.items()])
        client.set_tag(parent_run, "tierflow.best_trial", best.trial_id)
        client.set_terminated(parent_run, "FINISHED")
        return {"tracking_uri": self.tracking.uri, "experiment_id": tracked.experiment_id,
                "run_id": parent_run, "best_run_id": tracked.run_id, "model": tracked.model_name,
                "model_version": tracked.model_version}  # fmt: skip
