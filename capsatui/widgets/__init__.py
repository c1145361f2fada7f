"""Reusable Textual widgets of the capsa-tui app (the terminal view, rule form, ...)."""
