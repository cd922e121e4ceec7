"""The project as the entry points see it: configuration, jobs, planning and running.

The command line, ``jobs/run.py`` under spark-submit, and tests all go through here, so
a job is loaded, validated, planned and run the same way whichever door it came in by.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tierflow.config.jobs import EngineName, JobConfig
from tierflow.config.loader import load_model
from tierflow.config.project import ProjectConfig, resolve_data_dir
from tierflow.engines.base import EngineOptions
from tierflow.errors import ConfigError
from tierflow.jobs.planner import Resources, TierPlan, plan_inputs, plan_job
from tierflow.jobs.records import RunRecord
from tierflow.paths import ProjectPaths
from tierflow.settings import env_settings

if TYPE_CHECKING:
    from tierflow.config.features import FeatureViewConfig, TrainingSetConfig
    from tierflow.jobs.sources import ResolvedSource
    from tierflow.stores.base import OnlineStore


@dataclass(frozen=True)
class Project:
    """A tierflow project checkout with its settings resolved."""

    paths: ProjectPaths
    config: ProjectConfig
    data_dir: Path
    logs_dir: Path

    @classmethod
    def load(cls, *, data_dir: str | None = None, paths: ProjectPaths | None = None) -> Project:
        """Read ``conf/tierflow.yaml`` (or defaults) and resolve the folders."""
        paths = paths or ProjectPaths.discover()
        config = ProjectConfig.load(paths.settings("tierflow.yaml"))
        logs = Path(env_settings().logs_dir or config.logs_dir)
        return cls(
            paths=paths,
            config=config,
            data_dir=resolve_data_dir(paths.project, config, data_dir),
            logs_dir=logs if logs.is_absolute() else paths.project / logs,
        )

    def job_file(self, name_or_path: str) -> Path:
        """``conf/jobs/<name>.yaml`` for a job name, or the path itself."""
        candidate = Path(name_or_path)
        if candidate.suffix in (".yaml", ".yml"):
            return candidate if candidate.is_absolute() else Path.cwd() / candidate
        return self.paths.conf / "jobs" / f"{name_or_path}.yaml"

    def job_names(self) -> list[str]:
        """Names of the jobs in ``conf/jobs``."""
        return sorted(p.stem for p in (self.paths.conf / "jobs").glob("*.yaml"))

    def load_job(self, name_or_path: str) -> JobConfig:
        """Parse and check a job: its model, its transform and its check expressions.

        Raises:
            ConfigError: naming the file, the key and the offending value.
        """
        path = self.job_file(name_or_path)
        if not path.is_file():
            known = ", ".join(self.job_names()) or "none"
            raise ConfigError(f"no job file {path} (jobs in conf/jobs: {known})")
        job = load_model(JobConfig, path)
        self._check_references(job, path)
        return job

    def _check_references(self, job: JobConfig, path: Path) -> None:
        from tierflow.jobs.expressions import ExpressionError, to_expr
        from tierflow.jobs.registry import get_transform, load_transforms

        if job.transform is not None:
            load_transforms(self.config.transform_modules, self.paths.project)
            try:
                get_transform(job.transform.function)
            except ConfigError as exc:
                raise ConfigError(
                    f"invalid configuration in {path}:\n  transform.function = "
                    f"{job.transform.function!r}: {exc}"
                ) from None
        for name, source in job.sources.items():
            for i, check in enumerate(source.checks):
                try:
                    to_expr(check.expr, set(source.columns or {}))
                except ExpressionError as exc:
                    raise ConfigError(
                        f"invalid configuration in {path}:\n  sources.{name}.checks[{i}].expr = "
                        f"{check.expr!r}: {exc}"
                    ) from None

    @property
    def calibration_dir(self) -> Path:
        """Where calibrations are kept: ``$TIERFLOW_CALIBRATION_DIR``, else the setting."""
        folder = Path(env_settings().calibration_dir or self.config.planner.calibration_dir)
        return folder if folder.is_absolute() else self.paths.project / folder

    def clusters(self, options: EngineOptions | None = None) -> tuple[str | None, str | None]:
        """``(dask scheduler, spark master)`` the tiers may use: options, environment, config."""
        options = options or EngineOptions()
        clusters = self.config.clusters
        env = env_settings()
        scheduler = options.dask_scheduler or env.dask_scheduler or clusters.dask_scheduler
        master = options.spark_master or env.spark_master or clusters.spark_master
        if options.spark_session is not None:
            master = options.spark_session.sparkContext.master
        return scheduler, master

    def resources(self, options: EngineOptions | None = None) -> Resources:
        """Where each tier would run, with each place's calibration (see the planner)."""
        from tierflow.jobs.calibration import load
        from tierflow.jobs.resources import Place, dask_cluster, spark_cluster, this_machine

        options = options or EngineOptions()
        machine = this_machine(self.config.planner.memory_gb)
        scheduler, master = self.clusters(options)
        started: set[EngineName] = set()
        if scheduler:
            dask = dask_cluster(scheduler)
        else:
            dask = Place(
                "LocalCluster on this machine", machine.cores, machine.memory,
                workers=options.workers or machine.cores, source=machine.source,
            )  # fmt: skip
        if master and master.startswith("spark://"):
            spark = spark_cluster(master, self.config.clusters.spark_master_ui)
        else:
            spark = Place(f"{master or 'local[*]'} on this machine", machine.cores, machine.memory)
        if options.spark_session is not None:
            started.add("spark")
        folder = self.calibration_dir
        places: dict[EngineName, Place] = {"single": machine, "dask": dask, "spark": spark}
        return Resources(
            machine=machine,
            places=places,
            calibrations={name: load(folder, place) for name, place in places.items()},
            memory_fraction=self.config.planner.memory_fraction,
            started=frozenset(started),
        )

    def plan(
        self,
        job: JobConfig,
        engine: EngineName | None = None,
        options: EngineOptions | None = None,
    ) -> TierPlan:
        """Resolve the sources and choose the engine (``engine`` overrides)."""
        return plan_job(
            job, self.data_dir, self.config.tiers, self.resources(options), engine=engine
        )

    def engine_options(self, plan: TierPlan, options: EngineOptions | None = None) -> EngineOptions:
        """The options the chosen engine starts with: the plan's cluster, memory and size."""
        from dataclasses import replace

        options = options or EngineOptions()
        address = plan.place.address
        updates: dict[str, Any] = {
            "memory_budget": options.memory_budget or plan.memory_budget,
            "input_bytes": options.input_bytes or plan.total_in_memory_bytes,
        }
        if plan.engine == "dask" and address and not options.dask_scheduler:
            updates["dask_scheduler"] = address
        if plan.engine == "spark" and address and not options.spark_master:
            updates["spark_master"] = address
        return replace(options, **updates)

    def run(
        self,
        job: JobConfig,
        *,
        engine: EngineName | None = None,
        options: EngineOptions | None = None,
        echo: bool = True,
    ) -> RunRecord:
        """Plan and run ``job``; the engine is started for the run and closed after."""
        from tierflow.engines import create_engine
        from tierflow.jobs.runner import RunContext, run_job

        plan = self.plan(job, engine, options)
        runtime = create_engine(plan.engine, self.engine_options(plan, options))
        try:
            return run_job(job, plan, runtime, RunContext(self.data_dir, self.logs_dir), echo=echo)
        finally:
            runtime.close()

    def profile(
        self,
        table: str,
        *,
        fmt: str | None = None,
        target: str | None = None,
        engine: EngineName | None = None,
        options: EngineOptions | None = None,
        out: Path | None = None,
    ) -> tuple[Path, str]:
        """Profile a Delta or Parquet table on the tier that fits it; returns (report, plan)."""
        from tierflow.config.jobs import SourceConfig
        from tierflow.engines import create_engine
        from tierflow.jobs.runner import read_source
        from tierflow.jobs.sources import resolve_source
        from tierflow.profile import profile_frame, render_html

        if fmt is None:
            from tierflow.storage import is_delta_table, locate

            fmt = "delta" if is_delta_table(locate(table, self.data_dir)) else "parquet"
        source = resolve_source("table", SourceConfig(format=fmt, path=table), self.data_dir)  # type: ignore[arg-type]
        plan = plan_inputs(
            f"profile {table}", (source,), self.config.tiers, self.resources(options),
            engine=engine,
        )  # fmt: skip
        runtime = create_engine(plan.engine, self.engine_options(plan, options))
        try:
            result = profile_frame(
                read_source(runtime, source),
                title=source.label,
                engine=runtime.describe(),
                target=target,
            )
        finally:
            runtime.close()
        result.plan = plan.explain()
        if out is None:
            stem = Path(table.rstrip("/")).name or "table"
            out = self.logs_dir / "profiles" / f"{stem}.html"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_html(result))
        return out, plan.explain()

    # --- feature views -------------------------------------------------------------------

    def feature_views(self) -> dict[str, FeatureViewConfig]:
        """Every view in ``conf/features``, validated (filter and derived expressions too).

        Raises:
            ConfigError: naming the file, the key and the value.
        """
        from tierflow.config.features import FeatureViewConfig
        from tierflow.jobs.expressions import ExpressionError, to_expr

        views: dict[str, FeatureViewConfig] = {}
        for path in sorted((self.paths.conf / "features").glob("*.yaml")):
            view = load_model(FeatureViewConfig, path)
            known = set(view.source.columns)
            checks = [(f"derived.{n}", e) for n, e in view.derived.items()]
            checks += [("filter", view.filter)] if view.filter else []
            for key, expr in checks:
                try:
                    to_expr(expr, known)
                except ExpressionError as exc:
                    raise ConfigError(
                        f"invalid configuration in {path}:\n  {key} = {expr!r}: {exc}"
                    ) from None
                if key.startswith("derived."):
                    known.add(key.removeprefix("derived."))
            if view.name in views:
                raise ConfigError(f"{path}: a feature view named {view.name!r} already exists")
            views[view.name] = view
        return views

    def feature_view(self, name: str) -> FeatureViewConfig:
        """One view by name."""
        views = self.feature_views()
        if name not in views:
            raise ConfigError(
                f"no feature view {name!r} (known: {', '.join(sorted(views)) or 'none'})"
            )
        return views[name]

    def training_set(self, name: str) -> TrainingSetConfig:
        """``conf/training_sets/<name>.yaml``, its views checked to exist."""
        from tierflow.config.features import TrainingSetConfig

        path = self.paths.conf / "training_sets" / f"{name}.yaml"
        if not path.is_file():
            raise ConfigError(f"no training set file {path}")
        config = load_model(TrainingSetConfig, path)
        views = self.feature_views()
        for i, join in enumerate(config.views):
            if join.view not in views:
                raise ConfigError(
                    f"invalid configuration in {path}:\n  views[{i}].view = {join.view!r}: "
                    f"no such feature view (known: {', '.join(sorted(views))})"
                )
        return config

    def open_store(self, kind: str | None = None) -> OnlineStore:
        """The configured online store.

        ``kind`` or ``$TIERFLOW_ONLINE_STORE`` pick sqlite or redis; ``$TIERFLOW_REDIS_URL``
        and ``$TIERFLOW_ONLINE_DB`` override the Redis URL and the SQLite file.
        """
        from tierflow.stores import open_store

        config = self.config.online_store
        env = env_settings()
        chosen = kind or env.online_store
        url = env.redis_url
        db = env.online_db
        updates: dict[str, Any] = {}
        if chosen:
            updates["kind"] = chosen
        if url:
            updates["url"] = url
        if db:
            updates["path"] = db
        return open_store(config.model_copy(update=updates), self.paths.project)

    def view_source(self, view: FeatureViewConfig) -> ResolvedSource:
        """The view's source table, version pinned."""
        from tierflow.config.jobs import SourceConfig
        from tierflow.jobs.sources import resolve_source

        config = SourceConfig(
            format=view.source.format, path=view.source.path, version=view.source.version
        )
        return resolve_source(view.name, config, self.data_dir)

    def choose_engine(
        self,
        sources: list[ResolvedSource],
        engine: EngineName | None,
        options: EngineOptions | None = None,
    ) -> EngineName:
        """The tier for these inputs (the planner's choice), unless ``engine`` is given."""
        return self.plan_inputs("inputs", sources, engine, options).engine

    def plan_inputs(
        self,
        name: str,
        sources: list[ResolvedSource],
        engine: EngineName | None = None,
        options: EngineOptions | None = None,
    ) -> TierPlan:
        """The planner's decision for resolved inputs that are not a job's (features, profiles)."""
        return plan_inputs(
            name, tuple(sources), self.config.tiers, self.resources(options), engine=engine
        )
