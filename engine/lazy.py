"""Package attributes that import their module on first use (PEP 562).

``import engine`` then costs almost nothing, so a program such as the app draws its first frame
before the netstack, pools and profiles load; each name loads (and is cached) when first used.

A package writes each public name once, as an import in its ``if TYPE_CHECKING:`` block (which
is what type checkers and editors read); :func:`lazy_package` reads that block from the
package's own source at import time, so the lazy table and ``__all__`` follow from it and can
never disagree with what the checker sees. Parsing the block costs well under a millisecond.
"""
from __future__ import annotations

import ast
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any


def type_checking_exports(source: str, filename: str = "<package>") -> dict[str, tuple[str, str]]:
    """Public name -> (module, attribute) for every ``from M import A [as B]`` inside the
    top-level ``if TYPE_CHECKING:`` blocks of ``source``."""
    exports: dict[str, tuple[str, str]] = {}
    for node in ast.parse(source, filename).body:
        if not (isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
            continue
        for statement in node.body:
            if not isinstance(statement, ast.ImportFrom) or statement.level or statement.module is None:
                raise SyntaxError(f"{filename}: only absolute 'from M import N' belongs in the TYPE_CHECKING block")
            for alias in statement.names:
                public = alias.asname or alias.name
                if public in exports:
                    raise SyntaxError(f"{filename}: {public!r} is exported twice")
                exports[public] = (statement.module, alias.name)
    return exports


def lazy_package(
    namespace: dict[str, Any],
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """The ``__getattr__``, ``__dir__`` and ``__all__`` of the package whose globals are
    ``namespace``, from the imports of its ``if TYPE_CHECKING:`` block."""
    package = namespace["__name__"]
    filename = namespace["__file__"]
    exports = type_checking_exports(Path(filename).read_text(encoding="utf-8"), filename)

    def getattr_(name: str) -> Any:
        target = exports.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(target[0]), target[1])
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return getattr_, dir_, sorted(exports)
