"""A real registry for the tests: Debian's docker-registry (distribution 2.8) started on a free
127.0.0.1 port with its storage in the test's folder, optionally behind htpasswd users (made
with apache2-utils' htpasswd), and stopped after. Images are pushed to it with skopeo."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_registry(folder: Path, *, user: tuple[str, str] | None = None) -> Iterator[str]:
    """A registry serving on 127.0.0.1; yields its ``host:port``."""
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.fail("docker-registry is not installed: run ./scripts/install.sh (it installs the Debian package)")
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    auth = ""
    if user is not None:
        users = folder / "htpasswd"
        subprocess.run(["htpasswd", "-Bbc", str(users), user[0], user[1]], check=True, capture_output=True)
        auth = f"auth:\n  htpasswd:\n    realm: capsa-test\n    path: {users}\n"
    config = folder / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {folder / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{auth}"
    )
    log = open(folder / "registry.log", "wb")
    process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2).close()
                break
            except urllib.error.HTTPError:
                break  # 401: up, and asking for credentials
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"docker-registry did not start: {(folder / 'registry.log').read_text()[-2000:]}")
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def push(layout: Path, tag: str, registry: str, repository: str, *, creds: tuple[str, str] | None = None) -> str:
    """Push the layout's image tagged ``tag`` to ``registry/repository:tag`` with skopeo; the
    reference pushed."""
    reference = f"{registry}/{repository}:{tag}"
    argv = ["skopeo", "copy", "--dest-tls-verify=false"]
    if creds is not None:
        argv += ["--dest-creds", f"{creds[0]}:{creds[1]}"]
    done = subprocess.run([*argv, f"oci:{layout}:{tag}", f"docker://{reference}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return reference
