"""Where the pool service's socket lives, and the folder that guards it.

``$CAPSA_SOCKET`` names the socket outright (tests use it). Otherwise the socket is
``pool.sock`` in the user runtime folder (``$XDG_RUNTIME_DIR/capsa-tui``, private to the user
and emptied at logout), or in ``/tmp/capsa-tui-<uid>`` when there is no usable runtime folder.
Client and server compute the same path without talking to each other, so the fallback does
not follow ``$TMPDIR`` (which differs between shells and test runs).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import platformdirs

from engine.service.errors import ServiceError

SOCKET_ENV = "CAPSA_SOCKET"
SOCKET_NAME = "pool.sock"
APP_NAME = "capsa-tui"


def service_socket_path() -> Path:
    """The socket ``capsa-tui serve`` listens on and clients connect to."""
    explicit = os.environ.get(SOCKET_ENV)
    if explicit:
        return Path(explicit).expanduser()
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK | os.X_OK):
        return platformdirs.user_runtime_path(APP_NAME) / SOCKET_NAME
    return Path("/tmp") / f"{APP_NAME}-{os.getuid()}" / SOCKET_NAME


def prepare_socket_folder(socket: Path) -> None:
    """Create the socket's folder with mode 0700, or check that an existing one is ours.

    A folder another user owns could let them swap our socket for theirs, so it is refused.
    The mode of a folder the user named through ``$CAPSA_SOCKET`` is left as it is; the
    default folders are ours by name and are tightened to 0700.
    """
    folder = socket.parent
    try:
        folder.mkdir(mode=0o700, parents=True)
        return
    except FileExistsError:
        pass
    except OSError as err:
        raise ServiceError(f"cannot create the socket folder {folder}: {err}") from None
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise ServiceError(f"the socket folder {folder} is not a folder")
    if info.st_uid != os.getuid():
        raise ServiceError(
            f"the socket folder {folder} belongs to uid {info.st_uid}, not to you (uid {os.getuid()}); "
            f"remove it or set {SOCKET_ENV}"
        )
    if not os.environ.get(SOCKET_ENV) and stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(folder, 0o700)
