"""Command palette providers: every action the keys reach is also a palette entry.

:class:`ActionCommands` turns a list of (title, help, callback) into palette hits; the app's
dashboard provider, the console's helpers and :class:`BindingCommands` (a screen's own key
bindings, for the policy editor and the flow log) are built on it.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider

from capsatui.screens.help import key_label

Command = tuple[str, str, Callable[[], Any]]  # (title, help text, what runs)


class ActionCommands(Provider):
    """A provider over :meth:`commands`; subclasses say which commands there are."""

    def commands(self) -> list[Command]:
        raise NotImplementedError

    async def discover(self) -> Hits:
        for title, help_text, command in self.commands():
            yield DiscoveryHit(title, command, help=help_text or None)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, command in self.commands():
            score = max(matcher.match(title), matcher.match(help_text) * 0.5)
            if score > 0:
                yield Hit(score, matcher.highlight(title), command, text=title, help=help_text or None)


class BindingCommands(ActionCommands):
    """The bindings (with a description) of the screen the palette was opened on."""

    def commands(self) -> list[Command]:
        screen = self.screen
        found: list[Command] = []
        for binding in screen.BINDINGS:
            if isinstance(binding, Binding) and binding.description:
                title = f"{binding.description} ({key_label(binding.key)})"
                found.append((title, binding.tooltip, partial(screen.run_action, binding.action)))
        return found


__all__ = ["ActionCommands", "BindingCommands", "Command"]
