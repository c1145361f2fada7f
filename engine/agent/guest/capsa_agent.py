"""capsa-agent, the sandbox's RPC service (placeholder: the agent part replaces this file).

It finds its virtio-serial port by name in sysfs, opens it and holds it open, so the host sees
the port open (QMP VSERPORT_CHANGE) and the boot path can be tested before the protocol lands.
"""
from __future__ import annotations

import os
import sys
import time


def find_port(name: str) -> str:
    root = "/sys/class/virtio-ports"
    for _ in range(200):
        if os.path.isdir(root):
            for port in sorted(os.listdir(root)):
                try:
                    with open(os.path.join(root, port, "name")) as handle:
                        if handle.read().strip() == name:
                            return f"/dev/{port}"
                except OSError:
                    continue
        time.sleep(0.05)
    raise SystemExit(f"capsa-agent: no virtio-serial port named {name}")


def main(argv: list[str]) -> int:
    name = argv[argv.index("--port-name") + 1] if "--port-name" in argv else "capsa.agent"
    fd = os.open(find_port(name), os.O_RDWR)
    while os.read(fd, 65536):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
