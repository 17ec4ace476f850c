"""The README's table of settings, generated from the fields of ``peer.config`` (their one source:
default, help and check live on the dataclass field, ``peer.config.setting``).

    python -m peer.tools.readme            # rewrite the table in README.md
    python -m peer.tools.readme --check    # exit 1 if the table is stale (tests/unit does this too)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from peer.config import ENV_PREFIX, DaemonConfig, RunConfig, config_fields

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN = "<!-- settings table: generated from peer/config.py by python -m peer.tools.readme; do not edit -->"
END = "<!-- end of settings table -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def settings_table() -> str:
    """One row per setting: flag (= TOML key), environment variable, default, help."""
    rows = ["| flag (also the TOML key) · environment variable | default | what it does |", "|---|---|---|"]
    for cls, scope in ((RunConfig, ""), (DaemonConfig, "`tadlora run` only. ")):
        for name, f in config_fields(cls).items():
            default = f"`{f.default}`" if f.default != "" else "(none)"
            if f.metadata.get("daemon_default"):
                default += f"; `tadlora run`: {f.metadata['daemon_default']}"
            text = scope + f.metadata["help"]
            if f.metadata.get("daemon_help"):
                text += f". Daemons: {f.metadata['daemon_help']}"
            flag = f"`--{name.replace('_', '-')}` · `{ENV_PREFIX}{name.upper()}`"
            rows.append(f"| {flag} | {_cell(default)} | {_cell(text)} |")
    return "\n".join(rows)


def with_table(readme: str) -> str:
    """``readme`` with the text between the markers replaced by the current table."""
    head, begin, rest = readme.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise SystemExit(f"README.md lacks the markers {BEGIN!r} ... {END!r}")
    return f"{head}{BEGIN}\n{settings_table()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md's table is stale")
    args = parser.parse_args(argv)
    current = README.read_text(encoding="utf-8")
    wanted = with_table(current)
    if args.check:
        if wanted != current:
            print("README.md's settings table is stale: run python -m peer.tools.readme", file=sys.stderr)
            return 1
        return 0
    README.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
