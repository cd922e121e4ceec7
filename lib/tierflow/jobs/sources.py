"""Resolve a job's sources: expand globs, pin Delta versions, and estimate sizes.

Resolution is pure planning: it reads directory listings, Parquet footers and Delta logs,
never the data, and imports no engine. The planner decides on these estimates; the run
then reads exactly the files and Delta versions resolved here, on whichever engine.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from tierflow.config.jobs import SourceConfig, is_uri
from tierflow.errors import ExitCode, TierflowError
from tierflow.storage import arrow_location, locate

# Bytes in memory per byte on disk for text formats (Arrow columns against text): CSV
# holds numbers as text, so it shrinks a little; JSON lines repeat every key per row.
_TEXT_EXPANSION = {"csv": 1.0, "jsonl": 0.6}
_FOOTER_SAMPLE = 32


class SourceError(TierflowError):
    """A source cannot be found or read."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class ResolvedSource:
    """A source pinned down: its files or table version, and its estimated size."""

    name: str
    config: SourceConfig
    location: str
    files: tuple[str, ...]
    version: int | None
    bytes_on_disk: int
    rows: int | None
    in_memory_bytes: int
    estimate: str
    rows_exact: bool = False  # ``rows`` is a count (every footer, or the Delta log), not a guess

    @property
    def label(self) -> str:
        """``path`` or ``path@vN`` for logs and run records."""
        return f"{self.location}@v{self.version}" if self.version is not None else self.location


def _expand(location: str, fmt: str) -> list[str]:
    if is_uri(location):
        return _expand_remote(location, fmt)
    path = Path(location)
    if path.is_dir():
        suffix = {"csv": ".csv", "jsonl": ".jsonl", "parquet": ".parquet"}[fmt]
        return sorted(str(p) for p in path.rglob(f"*{suffix}") if not p.name.startswith((".", "_")))
    # glob.glob, not Path.glob: the pattern may sit anywhere in an absolute path.
    return sorted(p for p in glob.glob(location, recursive=True) if Path(p).is_file())  # noqa: PTH207


def _expand_remote(location: str, fmt: str) -> list[str]:
    """A file or a folder of files (no globs) in an object store, as URIs."""
    import pyarrow.fs as pafs

    filesystem, inner = arrow_location(location)
    assert filesystem is not None
    try:
        info = filesystem.get_file_info(inner)
    except OSError as exc:
        raise SourceError(f"{location}: {exc}") from None
    scheme = location.split("://", 1)[0]
    if info.type == pafs.FileType.Directory:
        selector = pafs.FileSelector(inner, recursive=True)
        return sorted(
            f"{scheme}://{i.path}"
            for i in filesystem.get_file_info(selector)
            if i.type == pafs.FileType.File
            and i.path.endswith(f".{fmt}")
            and not i.base_name.startswith((".", "_"))
        )
    return [location] if info.type == pafs.FileType.File else []


def _size(files: list[str]) -> int:
    total = 0
    for file in files:
        if is_uri(file):
            filesystem, inner = arrow_location(file)
            assert filesystem is not None
            total += filesystem.get_file_info(inner).size or 0
        else:
            total += Path(file).stat().st_size
    return total


def _parquet_footers(files: list[str]) -> tuple[int, int, int]:
    """Rows, uncompressed bytes and on-disk bytes of a sample of files."""
    import pyarrow.parquet as pq

    rows = uncompressed = on_disk = 0
    for file in files:
        filesystem, inner = arrow_location(file)
        meta = pq.read_metadata(inner, filesystem=filesystem)
        rows += meta.num_rows
        uncompressed += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        on_disk += _size([file])
    return rows, uncompressed, on_disk


def _sample(files: list[str]) -> list[str]:
    if len(files) <= _FOOTER_SAMPLE:
        return files
    step = len(files) / _FOOTER_SAMPLE
    return [files[int(i * step)] for i in range(_FOOTER_SAMPLE)]


def _text_rows(files: list[str], total_bytes: int) -> int | None:
    if not files or is_uri(files[0]):
        return None
    sample_bytes = lines = 0
    for file in files[:4]:
        with Path(file).open("rb") as f:
            chunk = f.read(1 << 18)
        sample_bytes += len(chunk)
        lines += chunk.count(b"\n")
    return int(total_bytes * lines / sample_bytes) if sample_bytes and lines else None


def resolve_source(name: str, config: SourceConfig, data_dir: Path) -> ResolvedSource:
    """Pin ``config`` down to files (or a Delta version) and estimate its size.

    Raises:
        SourceError: nothing matches the path, or the Delta table/version does not exist.
    """
    location = locate(config.path, data_dir)
    if config.format == "delta":
        return _resolve_delta(name, config, location)
    files = _expand(location, config.format)
    if not files:
        raise SourceError(f"source {name!r}: no {config.format} files match {location}")
    on_disk = _size(files)
    if config.format == "parquet":
        sample = _sample(files)
        rows, uncompressed, sampled_disk = _parquet_footers(sample)
        scale = on_disk / sampled_disk if sampled_disk else 1.0
        how = "Parquet footers" + (
            f" of {len(sample)} files, scaled" if len(sample) < len(files) else ""
        )
        return ResolvedSource(
            name, config, location, tuple(files), None, on_disk,
            int(rows * scale), int(uncompressed * scale), how, len(sample) == len(files),
        )  # fmt: skip
    factor = _TEXT_EXPANSION[config.format]
    return ResolvedSource(
        name, config, location, tuple(files), None, on_disk, _text_rows(files, on_disk),
        int(on_disk * factor), f"file sizes x {factor} ({config.format} text to Arrow)",
    )  # fmt: skip


def _resolve_delta(name: str, config: SourceConfig, location: str) -> ResolvedSource:
    from deltalake.exceptions import DeltaError, TableNotFoundError

    from tierflow.storage import delta_table

    try:
        table = delta_table(location)
        if config.version is not None:
            table.load_as_version(config.version)
        elif config.timestamp is not None:
            table.load_as_version(config.timestamp)
    except TableNotFoundError:
        raise SourceError(f"source {name!r}: no Delta table at {location}") from None
    except (DeltaError, OSError) as exc:
        raise SourceError(f"source {name!r}: {location}: {exc}") from None
    import pyarrow as pa

    # delta-rs returns an arro3 table; pyarrow reads it through the Arrow C stream.
    actions = pa.table(table.get_add_actions(flatten=True)).to_pydict()
    sizes = [int(s) for s in actions.get("size_bytes", [])]
    counts = [int(n) for n in actions.get("num_records", []) if n is not None]
    on_disk = sum(sizes)
    rows = sum(counts) if len(counts) == len(sizes) else None
    files = table.file_uris()
    sample = _sample(files)
    try:
        _, uncompressed, sampled_disk = _parquet_footers(sample)
        ratio = uncompressed / sampled_disk if sampled_disk else 1.0
        how = f"Delta log (rows, bytes) x footer ratio {ratio:.2f} from {len(sample)} files"
    except (OSError, ValueError):
        ratio, how = 3.0, "Delta log bytes x 3 (footers unreadable)"
    return ResolvedSource(
        name, config, location, tuple(files), table.version(), on_disk, rows,
        int(on_disk * ratio), how, rows is not None,
    )  # fmt: skip
