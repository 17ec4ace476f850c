"""The exceptions of tadlora, under one root.

``TadloraError`` is the root. Its ``UsageError`` branch is for a user's mistake or an environment a
command needs: a setting, a file, a folder, a peer id taken on the LAN. The CLI prints its one-line
message and exits 2. Anything else that escapes a command is a bug, and keeps its traceback.

Each subclass also derives from the builtin it refines (``ValueError``, ``RuntimeError``), so code
that catches those keeps working. The protocol's own exceptions (``Rejected``, ``ExchangeFailed`` ...)
live with the transport (``peer.transport.base``) and derive from ``TadloraError`` too: a daemon
handles them, a user never sees them as an exit.
"""

from __future__ import annotations


class TadloraError(Exception):
    """Root of every exception tadlora raises on purpose."""


class UsageError(TadloraError):
    """A user's mistake or a missing part of the environment: one line that names the setting, file
    (and line) or command to fix. ``tadlora`` prints it and exits 2."""


class ConfigError(UsageError, ValueError):
    """A configuration value that cannot run; the message names the setting."""


class DataError(UsageError, ValueError):
    """A data file or task that cannot be trained on; the message names the file (and line)."""


# The CLI's exit status for a UsageError (argparse uses 2 for a bad flag too).
USAGE_EXIT_CODE = 2
