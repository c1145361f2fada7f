"""docs/ARCHITECTURE.md stays true: every path it names exists, and every package is named."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "ARCHITECTURE.md"
TOPS = ("engine", "capsatui", "tests", "bench", "profiles", "scripts", "docs", ".ci")
# A path in backquotes, or a path in the picture's code block: starts at one of the top folders.
PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./-]*)" % "|".join(re.escape(t) for t in TOPS))


def named_paths(text: str) -> set[str]:
    return {match.rstrip(".,:;") for match in PATH.findall(text)}


def test_the_path_finder_reads_backquotes_and_the_picture() -> None:
    sample = "see `engine/pool/pool.py`, and\n  engine/netstack/tcp/  ...  capsatui/app.py."
    assert named_paths(sample) == {"engine/pool/pool.py", "engine/netstack/tcp/", "capsatui/app.py"}


def test_every_path_the_architecture_names_exists() -> None:
    missing = sorted(p for p in named_paths(DOC.read_text()) if not (ROOT / p.rstrip("/")).exists())
    assert not missing, f"docs/ARCHITECTURE.md names paths that do not exist: {missing}"


def test_every_package_is_in_the_architecture() -> None:
    named = {p.rstrip("/") for p in named_paths(DOC.read_text())}
    packages = sorted(
        str(init.parent.relative_to(ROOT))
        for top in ("engine", "capsatui")
        for init in (ROOT / top).rglob("__init__.py")
    )
    unnamed = [p for p in packages if p not in named]
    assert not unnamed, f"packages docs/ARCHITECTURE.md does not describe: {unnamed}"
