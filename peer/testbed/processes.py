"""How the testbed starts Python processes (daemons, the delay helper): with the very code of the
testbed that starts them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# the folder that holds the ``peer`` package this testbed runs
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def python_module(module: str) -> list[str]:
    """The command that runs ``module`` of this package, with ``same_code_env``. ``-P`` keeps the working
    directory off the path, which ``-m`` would put first: a ``peer`` folder there is not this code."""
    return [sys.executable, "-P", "-m", module]


def same_code_env() -> dict[str, str]:
    """The environment for a process that runs the very code of the testbed starting it: this package's
    folder first on its path. Without it (and ``-P``), a testbed of one checkout started in another
    checkout's folder ran that folder's daemons, silently."""
    paths = [str(PACKAGE_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
