"""The public API: each name written once in a package's TYPE_CHECKING block, loaded lazily."""
from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import engine
from engine.lazy import type_checking_exports


def test_every_public_name_loads_from_the_module_its_import_names() -> None:
    assert len(engine.__all__) == len(set(engine.__all__)) > 50
    for name in engine.__all__:
        value = getattr(engine, name)
        assert value is not None, name
    assert engine.vm.__module__.startswith("engine.")  # the function, not a subpackage


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        engine.NoSuchThing  # noqa: B018


def test_import_engine_loads_no_submodule() -> None:
    code = "import sys, engine; print(sorted(m for m in sys.modules if m.startswith('engine.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['engine.lazy']"


def test_the_block_is_read_with_aliases_and_twice_named_exports_fail() -> None:
    source = "if TYPE_CHECKING:\n    from a.b import C, D as E\nX = 1\n"
    assert type_checking_exports(source) == {"C": ("a.b", "C"), "E": ("a.b", "D")}
    with pytest.raises(SyntaxError, match="'C' is exported twice"):
        type_checking_exports("if TYPE_CHECKING:\n    from a import C\n    from b import C\n")
    with pytest.raises(SyntaxError, match="only absolute"):
        type_checking_exports("if TYPE_CHECKING:\n    import a\n")


@pytest.mark.parametrize("package", ["engine", "engine.service"])
def test_all_follows_from_the_block(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__file__ is not None
    with open(module.__file__, encoding="utf-8") as source:
        assert module.__all__ == sorted(type_checking_exports(source.read()))


def test_the_app_module_loads_no_engine_module() -> None:
    # The first frame is drawn before the engine loads: importing the app must not pull it in.
    code = "import sys, capsatui.app; print(sorted(m for m in sys.modules if m.startswith('engine')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['engine', 'engine.lazy']"
