"""Build dist/tierflow.zip: the tierflow package and the project's transforms.

Passed to spark-submit with --py-files (and uploadable to a Dask cluster), so executors
and workers import the same code as the driver.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    out = ROOT / "dist" / "tierflow.zip"
    out.parent.mkdir(exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for base, package in ((ROOT / "lib", "tierflow"), (ROOT, "jobs")):
            for path in sorted((base / package).rglob("*")):
                if (
                    path.is_file()
                    and "__pycache__" not in path.parts
                    and path.suffix in (".py", ".typed")
                ):
                    zf.write(path, path.relative_to(base))
    print(f"built {out.relative_to(ROOT)} ({out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
