#!/usr/bin/env bash
# Install everything capsa-tui needs on a Debian/Ubuntu host: QEMU and the guest's Debian
# packages, a virtual environment with the project, and the default guest image.
# Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
# lz4 unpacks Debian's kernel into the vmlinux we boot through PVH (the faster boot);
# busybox-static and the kernel package are downloaded, never installed, by the image builder.
# binutils: the tests assemble the guest's capsa-agent again and compare it with the shipped bytes.
# mmdebstrap + erofs-utils build the sandbox image (a Debian tree in a read-only erofs file),
# e2fsprogs formats a sandbox's scratch disk; uidmap lets a non-root mmdebstrap use --mode=unshare;
# qemu-utils (qemu-img) writes the copy-on-write overlays of disks.
# skopeo pulls and imports OCI images; docker-registry (a real registry on loopback) and
# apache2-utils (htpasswd, its users) are for the tests of that.
# openssh-server: the tests of the remote pool service (ssh://) run their own throwaway sshd on
# loopback (tests/service/sshd.py); the system's sshd is not wanted, so it is not started (below).
PACKAGES=(qemu-system-x86 busybox-static lz4 python3-venv tmux binutils iproute2 mmdebstrap erofs-utils e2fsprogs uidmap qemu-utils
	skopeo docker-registry apache2-utils openssh-server)

missing=()
for pkg in "${PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# A fresh machine has empty package lists: apt-get download (the image builder) needs them too.
if [ ${#missing[@]} -gt 0 ] || ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
	$SUDO apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
	echo "installing Debian packages: ${missing[*]}"
	# Installing openssh-server would start a system sshd on port 22 as a side effect: a
	# policy-rc.d that answers 101 ("action forbidden") keeps invoke-rc.d from starting any
	# service during this install. One already there (a container's) is left as it is.
	policy=/usr/sbin/policy-rc.d
	own_policy=
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\n# written by capsa-tui scripts/install.sh for one apt-get install\nexit 101\n' | $SUDO tee "$policy" >/dev/null
		own_policy=1
		trap '$SUDO rm -f "$policy"' EXIT  # also when the install is interrupted
		$SUDO chmod 755 "$policy"
	fi
	status=0
	$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || status=$?
	if [ -n "$own_policy" ]; then
		$SUDO rm -f "$policy"
		trap - EXIT
	fi
	[ "$status" = 0 ] || exit "$status"
	# ...and keep it from starting at the next boot, when this install is what brought it.
	if [[ " ${missing[*]} " == *" openssh-server "* ]] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
		$SUDO systemctl disable --now ssh.service ssh.socket >/dev/null 2>&1 || true
	fi
fi

if [ ! -x .venv/bin/python ]; then
	python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
# --shares: also the generic kernel's image, which VMs with shared folders boot (it has 9p).
.venv/bin/capsa-tui image build --shares
# The bundled sandbox profile's image (python3 only): the tests' sandboxes and the first sandbox
# start need it, and it takes about a minute the first time.
.venv/bin/capsa-tui image build debian
