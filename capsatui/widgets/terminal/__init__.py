"""The pyte terminal, one concept per module: ``model`` (screen, pending output, flood drop and
rebuild; no Textual), ``view`` (the Textual widget), ``screen`` (the emulated pyte screen with
history), ``keys`` (a key to the bytes a terminal sends), ``style`` (a cell's rich Style) and
``search`` (the ``/regex/`` syntax and finding matches)."""
