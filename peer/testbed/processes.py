"""How the testbed starts Python processes (daemons, the delay helper): with the very code of the
testbed that starts them."""

from __future__ import annotations

import os
from pathlib import Path

# the folder that holds the ``peer`` package this testbed runs
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def daemon_env() -> dict[str, str]:
    """The environment for a daemon that runs the very code of the testbed starting it: this package's
    folder first on its path (with ``-P``, which keeps the working directory off it). Without it, a
    testbed of one checkout started in another checkout's folder ran that folder's daemons, silently."""
    paths = [str(PACKAGE_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
