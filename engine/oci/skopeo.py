"""skopeo, the Debian tool that speaks to registries and reads archives: copies an image from a
registry, a ``docker save`` tarball or an OCI archive into an OCI layout folder (and back, for
``image export``), and turns its failures into messages that say what went wrong and where.

skopeo keeps the conventions users already have: credentials from ``--authfile``,
$REGISTRY_AUTH_FILE, ``${XDG_RUNTIME_DIR}/containers/auth.json`` or ``~/.docker/config.json``;
mirrors and insecure registries from ``/etc/containers/registries.conf`` (or the file that
$CONTAINERS_REGISTRIES_CONF names, which skopeo 1.9 does not read itself, so we pass it on); the
host's platform chosen from a multi-architecture image.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from engine.errors import ImageError
from engine.oci.reference import ImageReference, ImageSource, LocalSource

Progress = Callable[[str], None]
REGISTRIES_CONF_ENV = "CONTAINERS_REGISTRIES_CONF"
_BLOB = re.compile(r"Copying (blob|config) (sha256:[0-9a-f]{64}|[0-9a-f]{12})")


def skopeo_binary() -> str:
    found = shutil.which("skopeo")
    if found is None:
        raise ImageError("skopeo not found: install the Debian package skopeo (scripts/install.sh does)")
    return found


def copy(source: str, dest: str, *, what: ImageSource | None, src_tls_verify: bool | None = None,
         dest_tls_verify: bool | None = None, authfile: Path | None = None, progress: Progress | None = None,
         timeout: float = 3600.0) -> None:
    """``skopeo copy SOURCE DEST``; ImageError explaining the failure in terms of ``what``."""
    argv = [skopeo_binary(), "copy"]
    if src_tls_verify is not None:
        argv.append(f"--src-tls-verify={str(src_tls_verify).lower()}")
    if dest_tls_verify is not None:
        argv.append(f"--dest-tls-verify={str(dest_tls_verify).lower()}")
    if authfile is not None:
        argv += ["--src-authfile", str(authfile)]
    conf = os.environ.get(REGISTRIES_CONF_ENV)
    if conf:
        argv += ["--registries-conf", conf]  # skopeo 1.9 reads only /etc/containers/registries.conf by itself
    argv += [source, dest]
    try:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **_passthrough()})
    except OSError as err:
        raise ImageError(f"could not run skopeo: {err}") from err
    assert process.stdout is not None and process.stderr is not None
    try:
        for line in process.stdout:
            match = _BLOB.search(line)
            if match and progress is not None:
                progress(f"copying {match.group(1)} {match.group(2).removeprefix('sha256:')[:12]}")
        stderr = process.stderr.read()
        code = process.wait(timeout)
    except BaseException:
        process.kill()
        process.wait()
        raise
    if code != 0:
        raise explain(stderr, what if what is not None else source)


def _passthrough() -> dict[str, str]:
    """The environment skopeo reads its conventions from (credentials, config, proxies)."""
    names = ("HOME", "REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "CONTAINERS_REGISTRIES_CONF",
             "CONTAINERS_CONF", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
             "DOCKER_CONFIG", "TMPDIR")
    return {name: os.environ[name] for name in names if name in os.environ}


def explain(stderr: str, what: ImageSource | str) -> ImageError:
    """skopeo's failure as an ImageError that names the registry, the image or the file."""
    said = " ".join(line.strip() for line in stderr.strip().splitlines()[-3:]).removeprefix("time=")
    said = re.sub(r'^"?[0-9T:.+-]+Z?"? level=fatal msg="?', "", said).rstrip('"').replace('\\"', '"')
    lowered = stderr.lower()
    if "no space left on device" in lowered or "disk quota exceeded" in lowered:
        return ImageError(f"no space left while copying {what}: free space in the image cache "
                          f"(or set CAPSA_OCI_CACHE to a larger disk); nothing was cached\n{said}")
    if isinstance(what, ImageReference):
        host = what.registry
        if "server gave http response to https client" in lowered:
            return ImageError(f"the registry {host} speaks plain HTTP: pass --tls-verify=false for it "
                              f"(or mark it insecure in registries.conf)\n{said}")
        if re.search(r"unauthorized|authentication required|401|invalid username/password|denied", lowered):
            return ImageError(f"the registry {host} refused access to {what.repository} (wrong or missing credentials: "
                              f"log in with `skopeo login {host}` or set REGISTRY_AUTH_FILE)\n{said}")
        if re.search(r"manifest unknown|name unknown|not found|404", lowered):
            which = f"tag {what.tag}" if what.digest is None else f"digest {what.digest}"
            return ImageError(f"the registry {host} has no {which} of {what.repository}\n{said}")
        if re.search(r"connection refused|no such host|dial tcp|i/o timeout|network is unreachable|"
                     r"connection reset|tls: |x509|eof", lowered):
            return ImageError(f"cannot reach the registry {host}: {said}")
        return ImageError(f"pulling {what} failed: {said}")
    if isinstance(what, LocalSource):
        if "no such file" in lowered:
            return ImageError(f"{what.path} does not exist")
        return ImageError(f"{what.path} is not a complete, readable {what.transport} image: {said}")
    return ImageError(f"skopeo failed on {what}: {said}")
