"""Sub-commands of ``capsa-tui``: each module has ``register(subparsers)`` and sets ``handler``.

A handler takes the parsed arguments and returns an exit status, or a coroutine that does
(the dispatcher runs it with ``asyncio.run``).
"""
