"""What tierflow fetches or builds the first time something needs it.

``make demo`` sets up only what the demo uses. The S3A jars (for ``s3://`` tables on
Spark, ~690 MB) and the MinIO server (built from Go sources) come when first needed, by
the checkout's ``scripts/setup.sh LAYER``, with one line saying so while it happens.
"""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

from tierflow.errors import MissingDependencyError

if TYPE_CHECKING:
    from tierflow.paths import ProjectPaths

#: Layer -> what it brings, for the message.
LAYERS = {
    "s3": "the S3A jars for s3:// tables on Spark (about 690 MB from Maven Central, once)",
    "minio": "the MinIO server (built from Go sources: minutes the first time, then seconds)",
}


def provide(layer: str, paths: ProjectPaths) -> None:
    """Fetch or build ``layer`` now, with the project's setup script.

    Raises:
        MissingDependencyError: the project has no setup script (an installed package,
            not a checkout), or the script failed.
    """
    what = LAYERS[layer]
    script = paths.project / "scripts" / "setup.sh"
    if not script.is_file():
        raise MissingDependencyError(
            f"{what} is missing, and {paths.project} has no scripts/setup.sh to fetch it"
        )
    print(f"[tierflow] first use: fetching {what} ...", file=sys.stderr, flush=True)  # noqa: T201
    done = subprocess.run([str(script), layer], cwd=paths.project, stdout=sys.stderr, check=False)
    if done.returncode != 0:
        raise MissingDependencyError(f"could not fetch {what}: `{script} {layer}` failed")
