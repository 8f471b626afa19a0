"""Writes README.md's "Config reference" table from the config models (``dist_al.config.reference_table``).

    python scripts/config_reference.py          # rewrite the table in README.md
    python scripts/config_reference.py --check  # exit 1 if README.md's table differs (tests/test_config.py checks it)

The table lies between two HTML comments in README.md; everything else in README.md is left as it is.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dist_al.config import reference_table

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN = "<!-- config-reference: written by scripts/config_reference.py from dist_al/config.py; do not edit -->"
END = "<!-- /config-reference -->"


def updated(readme: str) -> str:
    """``readme`` with the text between the markers replaced by the current table."""
    head, sep, rest = readme.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"{README}: the markers {BEGIN!r} and {END!r} are missing")
    return f"{head}{BEGIN}\n{reference_table()}{END}{tail}"


def main(argv: list[str]) -> int:
    text = README.read_text()
    new = updated(text)
    if "--check" in argv:
        if new != text:
            print(f"{README}: the Config reference table is stale; run python scripts/config_reference.py")
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
