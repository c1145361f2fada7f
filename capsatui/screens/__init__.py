"""The screens of the capsa-tui app."""
