"""Kernel module selection: which ``.ko`` files a guest needs and in which order to load them.

Works on an unpacked kernel package (``lib/modules/<version>/``). Debian's package ships no
``modules.dep`` (depmod runs when the package is installed), so dependencies are read from each
module's ``.modinfo`` ``depends=`` field, the same data depmod uses.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.image import elf
from engine.errors import ImageError


@dataclass(frozen=True)
class KernelModule:
    """A loadable module: its canonical name and its path relative to ``lib/modules/<ver>``."""

    name: str
    path: str


class ModuleTree:
    """The modules of one unpacked kernel: name lookup, built-in check, dependency order."""

    def __init__(self, root: Path) -> None:
        """``root`` is the ``lib/modules/<version>`` directory."""
        self.root = root
        self.version = root.name
        self._paths = _index(root)
        self._builtin = _builtin_names(root)
        self._depends: dict[str, list[str]] = {}

    def is_builtin(self, name: str) -> bool:
        """True if the module is compiled into the kernel (nothing to load)."""
        return canonical(name) in self._builtin

    def exists(self, name: str) -> bool:
        """True if a loadable ``.ko`` for ``name`` is in the tree."""
        return canonical(name) in self._paths

    def depends(self, name: str) -> list[str]:
        """Direct dependencies of a module, from its ``.modinfo``."""
        key = canonical(name)
        if key not in self._depends:
            info = elf.modinfo((self.root / self._path(key)).read_bytes())
            listed = ",".join(info.get("depends", []))
            self._depends[key] = [canonical(dep) for dep in listed.split(",") if dep]
        return self._depends[key]

    def load_order(self, roots: list[str]) -> list[KernelModule]:
        """Modules to insmod for ``roots``, dependencies first; built-in roots are skipped.

        A root that is neither built in nor present raises ImageError naming it.
        """
        order: list[KernelModule] = []
        done: set[str] = set()
        for root in roots:
            key = canonical(root)
            if key in self._builtin:
                continue
            if key not in self._paths:
                raise ImageError(f"kernel {self.version} has no module {root!r} (neither a .ko nor built in)")
            self._visit(key, done, order, ())
        return order

    def _visit(self, key: str, done: set[str], order: list[KernelModule], stack: tuple[str, ...]) -> None:
        if key in done:
            return
        if key in stack:
            raise ImageError(f"module dependency cycle: {' -> '.join((*stack, key))}")
        for dep in self.depends(key):
            self._visit(dep, done, order, (*stack, key))
        done.add(key)
        order.append(KernelModule(key, self._path(key)))

    def _path(self, key: str) -> str:
        try:
            return self._paths[key]
        except KeyError:
            raise ImageError(f"kernel {self.version}: module {key!r} is needed but its .ko is missing") from None


def canonical(name: str) -> str:
    """Module names treat '-' and '_' alike; the kernel reports them with '_'."""
    return name.replace("-", "_")


def _index(root: Path) -> dict[str, str]:
    kernel = root / "kernel"
    if not kernel.is_dir():
        raise ImageError(f"{root} has no kernel/ directory: not an unpacked kernel module tree")
    return {
        canonical(path.name.removesuffix(".ko")): str(path.relative_to(root))
        for path in sorted(kernel.rglob("*.ko"))
    }


def _builtin_names(root: Path) -> set[str]:
    listing = root / "modules.builtin"
    if not listing.exists():
        return set()
    lines = listing.read_text().split()
    return {canonical(Path(line).name.removesuffix(".ko")) for line in lines}
