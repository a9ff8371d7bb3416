"""Prints the README's "Set up and run" shell block, as a newcomer would type it, for .ci/run to execute.

The block is read from README.md each time, so the README and what CI proves cannot drift. ``sudo`` is dropped when
CI runs as root (there is no sudo to run then); everything else is kept as written.
"""
import os
import re
import sys
from pathlib import Path

HEADING = "## Set up and run"


def setup_block(readme: str) -> str:
    section = readme.split(HEADING, 1)
    if len(section) != 2:
        raise SystemExit(f"README.md has no '{HEADING}' section")
    body = re.split(r"^## ", section[1], maxsplit=1, flags=re.MULTILINE)[0]
    blocks = re.findall(r"^```(?:bash|sh|shell|console)?\n(.*?)^```", body, flags=re.MULTILINE | re.DOTALL)
    if len(blocks) != 1:
        raise SystemExit(f"README.md's '{HEADING}' section must hold exactly one shell block, found {len(blocks)}")
    return blocks[0]


def as_root(block: str) -> str:
    return re.sub(r"(^|&&|;|\|\|)(\s*)sudo\s+", r"\1\2", block, flags=re.MULTILINE)


if __name__ == "__main__":
    readme = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md").read_text(encoding="utf-8")
    block = setup_block(readme)
    print(as_root(block) if os.geteuid() == 0 else block, end="")
