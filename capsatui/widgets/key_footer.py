"""The footer of key bindings, recomposed only when the keys it shows change.

Textual's ``Footer`` rebuilds all its key widgets on every bindings update of its screen (each
focus change, each mount), and a dashboard's start-up has several: its footer of 13 keys was
about half the cost of the first frame. This one keeps the last set it composed and skips an
update that would compose the same keys again.
"""
from __future__ import annotations

from typing import Any

from textual.screen import Screen
from textual.widgets import Footer

__all__ = ["KeyFooter"]


class KeyFooter(Footer):
    """A :class:`textual.widgets.Footer` that recomposes only when its keys change."""

    _shown: tuple[Any, ...] | None = None

    def _keys(self, screen: Screen[Any]) -> tuple[Any, ...]:
        """What compose would show: each shown binding's key, label, action, state and tooltip."""
        return tuple(
            (binding.key, binding.description, binding.action, enabled, tooltip, binding.group)
            for _, binding, enabled, tooltip in screen.active_bindings.values()
            if binding.show or binding.key == self.app.COMMAND_PALETTE_BINDING
        )

    def bindings_changed(self, screen: Screen[Any]) -> None:
        if self.is_attached and screen is self.screen and screen.app.app_focus:
            keys = self._keys(screen)
            if keys == self._shown:
                return
            self._shown = keys
        super().bindings_changed(screen)
