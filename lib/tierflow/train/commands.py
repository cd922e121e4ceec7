"""``tierflow train CONFIG``, ``tierflow tune CONFIG`` and ``tierflow plan-train CONFIG``.

``CONFIG`` is a name in ``conf/training/`` or a YAML path. Parsers are added without
importing torch or Ray.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tierflow.errors import ConfigError

if TYPE_CHECKING:
    from tierflow.config.training import TrainingConfig
    from tierflow.project import Project

COMMANDS = ("train", "tune", "plan-train")


def add_parsers(sub: Any) -> None:
    """Add the training subcommands."""
    for name, text in (
        ("train", "train a model on Ray Train (the strategy planned from data and model size)"),
        ("tune", "search the config's `tune:` settings with Ray Tune; register the best"),
        ("plan-train", "explain which training strategy a config would use, and why"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("config", help="conf/training/NAME.yaml by NAME, or a YAML path")
        cmd.add_argument("--data-dir", help="data folder")
        cmd.add_argument("--strategy", choices=("auto", "single", "ddp", "fsdp", "pipeline"))
        cmd.add_argument("--workers", type=int, help="override the config's workers")
        cmd.add_argument("--json", action="store_true", help="print the result as JSON")
    for name in ("train", "tune"):
        sub.choices[name].add_argument("--ray-address", help="Ray cluster (default: RAY_ADDRESS)")
    sub.choices["tune"].add_argument(
        "--trials", type=int, help="override the tune block's trial budget"
    )
    train = sub.choices["train"]
    train.add_argument(
        "--resume",
        metavar="RUN",
        help="continue interrupted run RUN (its id, as `tierflow runs` lists it) from its "
        "latest checkpoint, on the snapshot version it read; without it every run is new",
    )


def load_training(project: Project, name_or_path: str) -> TrainingConfig:
    """A training config by name (``conf/training/NAME.yaml``) or path."""
    from tierflow.config.loader import load_model
    from tierflow.config.training import TrainingConfig

    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = project.paths.conf / "training" / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (project.paths.conf / "training").glob("*.yaml"))
        raise ConfigError(f"no training config {name_or_path!r} (known: {', '.join(known)})")
    return load_model(TrainingConfig, path)


def run_command(args: argparse.Namespace, project: Project) -> int:
    """Run ``train`` or ``plan-train``."""
    from tierflow.jobs.registry import load_transforms

    # The modules that register job transforms may register models too.
    load_transforms(project.config.transform_modules, project.paths.project)
    config = load_training(project, args.config)
    updates: dict[str, Any] = {}
    if args.strategy:
        updates["strategy"] = args.strategy
    if args.workers:
        updates["workers"] = args.workers
    if updates:
        from tierflow.config.training import TrainingConfig

        config = TrainingConfig.model_validate({**config.model_dump(), **updates})
    if args.command == "plan-train":
        return _plan(args, project, config)
    if args.command == "tune":
        return _tune(args, project, config)
    result = _train_with_record(args, project, config)
    if args.json:
        out = {"folder": str(result.folder), "run": result.run_id, **result.metrics}
        print(json.dumps(out, default=str))  # noqa: T201
    else:
        tracked = result.metrics["mlflow"]
        print(  # noqa: T201
            f"trained {config.name} ({result.plan.strategy}, {result.plan.workers} worker(s), "
            f"snapshot v{result.version}, run {result.run_id}) -> {result.folder}\n"
            f"registered {tracked['model']} version {tracked['model_version']} "
            f"(MLflow run {tracked['run_id']} in {tracked['tracking_uri']})\n"
            + json.dumps({k: result.metrics.get(k) for k in ("valid", "test")}, indent=2)
        )
    return 0


def _train_with_record(args: argparse.Namespace, project: Project, config: TrainingConfig) -> Any:
    """Train, and leave a run record in ``logs/runs`` (as batch jobs do), failed or not."""
    import time
    from datetime import datetime, timezone

    from tierflow.jobs.records import RunRecord
    from tierflow.jobs.runner import new_run_id
    from tierflow.train.runner import train

    record = RunRecord(
        run_id=args.resume or new_run_id(f"train-{config.name}"),
        job=f"train:{config.name}",
        engine=f"ray-train/{config.strategy}",
        started_at=datetime.now(timezone.utc).isoformat(),
        inputs=[{"path": config.snapshot.path, "version": config.snapshot.version}],
    )
    began = time.monotonic()
    started_ms = int(time.time() * 1000)
    recorder = _recorder(project, config, record.run_id, started_ms)
    try:
        result = train(
            config,
            project.data_dir,
            run_id=record.run_id,
            resume=args.resume is not None,
            ray_address=args.ray_address,
            recorder=recorder,
        )
    except BaseException as exc:
        record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
        recorder.fail()
        raise
    else:
        record.status = "succeeded"
        record.engine = f"ray-train/{result.plan.strategy}"
        record.plan = {"reasons": result.plan.reasons, **result.plan.numbers}
        record.inputs = [{"path": config.snapshot.path, "version": result.version}]
        record.rows_in = sum(result.metrics.get("rows", {}).values())
        try:
            tracked = _track(project, config, result, recorder)
        except Exception as exc:
            from tierflow.errors import ServiceError

            # The model is trained and published: say so, and that only the record failed.
            raise ServiceError(
                f"{config.name}: run {result.run_id} trained and published to "
                f"{result.folder}, but MLflow did not record it: {exc!r}"
            ) from exc
        result.metrics["mlflow"] = tracked
        record.output = {"folder": str(result.folder), "metrics": result.metrics,
                         "resumed_from_step": result.resumed_from_step}  # fmt: skip
        return result
    finally:
        record.finished_at = datetime.now(timezone.utc).isoformat()
        record.duration_s = round(time.monotonic() - began, 3)
        record.save(project.logs_dir / "runs")


def _recorder(project: Project, config: TrainingConfig, run_id: str, started_ms: int) -> Any:
    """The run's MLflow recorder (:mod:`.tracking`), opened by the runner once it has a plan."""
    from tierflow.train.tracking import RunRecorder, Tracking

    tracking = Tracking.resolve(project.config.tracking.uri, project.data_dir)
    return RunRecorder(tracking, config, run_id=run_id, started_ms=started_ms)


def _track(project: Project, config: TrainingConfig, result: Any, recorder: Any) -> dict[str, Any]:
    """Finish the run's MLflow record and register its model (:mod:`.tracking`)."""
    from tierflow.storage import locate

    tracked = recorder.finish(
        run_folder=result.run_folder,
        snapshot=(locate(config.snapshot.path, project.data_dir), result.version),
        metrics=result.metrics,
    )
    out = {"tracking_uri": recorder.tracking.uri, "experiment_id": tracked.experiment_id,
           "run_id": tracked.run_id, "model": tracked.model_name,
           "model_version": tracked.model_version}  # fmt: skip
    # The published model names its registry version beside its run.
    published = result.folder / "run.json"
    record = json.loads(published.read_text()) | {"mlflow": out}
    partial = published.with_name(".run.json.partial")
    partial.write_text(json.dumps(record))
    partial.replace(published)
    return out


def _plan(args: argparse.Namespace, project: Project, config: TrainingConfig) -> int:
    from tierflow.storage import locate
    from tierflow.train.data import prepare, snapshot_version
    from tierflow.train.runner import plan_for

    path = locate(config.snapshot.path, project.data_dir)
    version = snapshot_version(path, config.snapshot.version)
    data = prepare(path, version, config)  # the fitting pass, in this process
    gpus = 0
    try:
        import torch

        gpus = torch.cuda.device_count()
    except ImportError:
        pass
    plan = plan_for(config, data.rows["train"], data.preprocessor.width, gpus)
    if args.json:
        decided = {"strategy": plan.strategy, "workers": plan.workers, "use_gpu": plan.use_gpu}
        print(json.dumps({**decided, "reasons": plan.reasons, **plan.numbers}))  # noqa: T201
    else:
        print(f"{config.name}: snapshot {path} v{version}\n{plan.explain()}")  # noqa: T201
    return 0


def _tune(args: argparse.Namespace, project: Project, config: TrainingConfig) -> int:
    """``tierflow tune``: the search, recorded like a job, its best registered."""
    import time
    from datetime import datetime, timezone

    from tierflow.jobs.records import RunRecord
    from tierflow.jobs.runner import new_run_id
    from tierflow.train.tracking import Tracking
    from tierflow.train.tune import tune_training

    if config.tune is None:
        raise ConfigError(
            f"{config.name}: no `tune:` block in its training config (see docs/training.md)"
        )
    if args.trials:
        from tierflow.config.training import TrainingConfig

        tuned = config.tune.model_copy(update={"trials": args.trials})
        config = TrainingConfig.model_validate({**config.model_dump(), "tune": tuned})
    record = RunRecord(
        run_id=new_run_id(f"tune-{config.name}"),
        job=f"tune:{config.name}",
        engine="ray-tune",
        started_at=datetime.now(timezone.utc).isoformat(),
        inputs=[{"path": config.snapshot.path, "version": config.snapshot.version}],
    )
    began = time.monotonic()
    tracking = Tracking.resolve(project.config.tracking.uri, project.data_dir)
    try:
        outcome = tune_training(config, project.data_dir, run_id=record.run_id,
                                tracking=tracking, ray_address=args.ray_address)  # fmt: skip
    except BaseException as exc:
        record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    else:
        record.status = "succeeded"
        record.engine = f"ray-tune/{outcome.result.plan.strategy}"
        record.output = {"folder": str(outcome.result.folder), "metrics": outcome.result.metrics,
                         "mlflow": outcome.mlflow}  # fmt: skip
    finally:
        record.finished_at = datetime.now(timezone.utc).isoformat()
        record.duration_s = round(time.monotonic() - began, 3)
        record.save(project.logs_dir / "runs")
    trials = [
        {"trial": t.trial_id, "params": t.params, "status": t.status,
         "valid_losses": t.valid_losses, "error": t.error}
        for t in outcome.trials
    ]  # fmt: skip
    if args.json:
        out = {"run": outcome.run_id, "best": outcome.best.trial_id, "trials": trials,
               "folder": str(outcome.result.folder), "mlflow": outcome.mlflow,
               **outcome.result.metrics}  # fmt: skip
        print(json.dumps(out, default=str))  # noqa: T201
    else:
        tracked = outcome.mlflow
        print(  # noqa: T201
            f"searched {config.name}: {len(trials)} trials, best {outcome.best.trial_id} "
            f"(validation loss {outcome.best.final:.4f}) -> {outcome.result.folder}\n"
            f"registered {tracked['model']} version {tracked['model_version']} "
            f"(MLflow run {tracked['best_run_id']}, child of {tracked['run_id']})"
        )
    return 0
