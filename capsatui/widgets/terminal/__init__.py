"""The pyte terminal, one concept per module: ``model`` (screen, pending output, flood drop and
rebuild; no Textual), ``view`` (the Textual widget), ``screen`` (the emulated pyte screen with
history, the alternate screen and the answers to the guest), ``keys`` (a key to the bytes a
terminal sends), ``modes`` (the guest's paste and mouse modes: a paste's and a mouse report's bytes),
``style`` (a cell's rich Style) and ``search`` (the ``/regex/`` syntax and finding matches)."""
