"""What a peer id and a run id may be.

Ids name folders, TLS certificates, metric labels, log lines and mDNS records, and they arrive from
the network (mDNS TXT records, message headers), so they are short words from a fixed alphabet. A
peer id and the 9 characters the mDNS instance name adds to it ("-" and 8 hex digits of the run) fit
DNS's 63-byte label; a run id fits, as ``run_id=...``, in one 255-byte TXT entry with room to spare.
"""

from __future__ import annotations

import re

ID_PATTERN = re.compile(r"[A-Za-z0-9._-]+")
MAX_PEER_ID_LENGTH = 54
MAX_RUN_ID_LENGTH = 128


def id_problem(value: str, max_length: int) -> str:
    """Why ``value`` is not a valid id of at most ``max_length`` characters ("" if it is). The message
    quotes at most ``max_length`` characters of it, escaped: ``value`` may come from anyone."""
    if not value:
        return "must not be empty"
    if len(value) > max_length:
        return f"must be at most {max_length} characters, got {len(value)}"
    if not ID_PATTERN.fullmatch(value) or value in (".", ".."):
        return f"{value!r} may only use letters, digits, '.', '_' and '-'"
    return ""


def peer_id_problem(value: str) -> str:
    return id_problem(value, MAX_PEER_ID_LENGTH)


def run_id_problem(value: str) -> str:
    return id_problem(value, MAX_RUN_ID_LENGTH)
