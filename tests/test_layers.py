"""The layers point one way (DESIGN.md): checked on the import statements and in a fresh interpreter."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(folder: str) -> list[tuple[Path, str]]:
    found = []
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((path, node.module))
            elif isinstance(node, ast.Import):
                found.extend((path, alias.name) for alias in node.names)
    return found


def test_engine_never_imports_the_ui() -> None:
    code = "import json, sys, engine; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    loaded = set(json.loads(out.stdout))
    assert not {m for m in loaded if m.split(".")[0] in ("capsatui", "textual")}


def test_kvm_layer_knows_nothing_above_it() -> None:
    allowed = ("engine.kvm", "engine.errors")
    wrong = [(p.name, m) for p, m in _imports("engine/kvm") if m.startswith("engine") and not m.startswith(allowed)]
    assert not wrong


def test_cli_uses_the_public_engine_api_only() -> None:
    wrong = [(p.name, m) for p, m in _imports("capsatui") if m.startswith("engine.")]
    assert not wrong


def test_netstack_knows_nothing_of_machines_pools_or_the_ui() -> None:
    allowed = ("engine.netstack", "engine.errors")
    wrong = [
        (p.name, m) for p, m in _imports("engine/netstack")
        if (m.startswith("engine") and not m.startswith(allowed)) or m.split(".")[0] in ("capsatui", "qemu")
    ]
    assert not wrong

