"""Generate the values table of the Helm chart's README from the comments in its ``values.yaml``.

Every key of ``values.yaml`` is documented by the block of ``#`` comment lines right above it. This script
pairs each key (as a dotted path) with that comment and its default, and writes a Markdown table between
the ``<!-- values-table:start -->`` and ``<!-- values-table:end -->`` markers of the chart's README.

    python scripts/helm_values_table.py           # rewrite the table
    python scripts/helm_values_table.py --check   # exit 1 if the table is stale or a key is undocumented
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHART_DIR = Path(__file__).resolve().parents[1] / "helm" / "sandbox-broker"
START = "<!-- values-table:start -->"
END = "<!-- values-table:end -->"
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-/]+):(?:\s|$)")


@dataclass(frozen=True)
class ValueDoc:
    """One documented key: its dotted path, its comment (may be empty) and its default."""

    path: str
    description: str
    default: Any


def parse_values(text: str) -> list[ValueDoc]:
    """Return every mapping key of ``text`` (a values.yaml) in file order with the comment above it.

    List items are not keys: a list is documented as a whole by the comment on its key.
    """
    defaults = yaml.safe_load(text) or {}
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    docs: list[ValueDoc] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
            continue
        match = _KEY.match(line)
        if not match or stripped.startswith("- "):
            comment = []
            continue
        indent = len(match.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group("key")))
        keys = [k for _, k in stack]
        docs.append(ValueDoc(".".join(keys), " ".join(comment), _lookup(defaults, keys)))
        comment = []
    return docs


def _lookup(tree: Any, keys: list[str]) -> Any:
    for key in keys:
        tree = tree[key]
    return tree


def undocumented(docs: list[ValueDoc]) -> list[str]:
    """Paths of keys without a comment."""
    return [d.path for d in docs if not d.description]


def render_table(docs: list[ValueDoc]) -> str:
    """The Markdown table: key, default (JSON; maps that are documented key by key show as `{…}`)."""
    parents = {d.path.rsplit(".", 1)[0] for d in docs if "." in d.path}
    rows = ["| key | default | description |", "| --- | --- | --- |"]
    for doc in docs:
        shown = "{…}" if doc.path in parents else json.dumps(doc.default)
        cell = shown.replace("|", "\\|")
        description = doc.description.replace("|", "\\|")
        rows.append(f"| `{doc.path}` | `{cell}` | {description} |")
    return "\n".join(rows)


def updated_readme(readme: str, table: str) -> str:
    """``readme`` with the text between the markers replaced by ``table``."""
    if START not in readme or END not in readme:
        raise ValueError(f"the README needs the markers {START} and {END}")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or with ``--check`` verify) the values table; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the table is stale")
    parser.add_argument("--chart", type=Path, default=CHART_DIR, help="chart directory")
    args = parser.parse_args(argv)
    docs = parse_values((args.chart / "values.yaml").read_text())
    missing = undocumented(docs)
    if missing:
        print("undocumented values: " + ", ".join(missing), file=sys.stderr)
        return 1
    readme_path = args.chart / "README.md"
    readme = readme_path.read_text()
    new = updated_readme(readme, render_table(docs))
    if args.check:
        if new != readme:
            print(f"{readme_path} is stale: run python scripts/helm_values_table.py", file=sys.stderr)
            return 1
        return 0
    readme_path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
