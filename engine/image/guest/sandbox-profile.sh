# /etc/profile.d/zz-capsa.sh of a capsa sandbox, read by the console's login shell (dash) after
# Debian's /etc/profile. Last, and only for interactive shells: the host waits for this marker
# before it types (engine/console/match.py READY_MARKER).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
[ "${HOME:-/}" = / ] && HOME=/root
export HOME
case ${TERM:-linux} in
linux | dumb) TERM=vt100 ;;
esac
export TERM
PS1='# '  # dash expands no \h or \w; the console runs as root
umask 022
cd "$HOME" 2>/dev/null
# capsa_clone SEED EPOCH NAME [MAC [ADDRESS/PREFIX ROUTER]]: the engine types this at the first
# prompt of a clone restored from a snapshot (engine/snapshot/identity.py), as in the default
# guest's /etc/profile. The initramfs's resident capsa-agent is gone after switch_root, so the seed
# is mixed into the pool by a write (not credited: the agent part's set_identity reseeds properly)
# and busybox sets the clock, the MAC (virtio-net changes it live) and a cluster address.
capsa_clone() {
	printf '%s' "$1" >/dev/urandom
	bb=/usr/lib/capsa/busybox
	$bb date -s "@$2" >/dev/null ||
		echo "capsa-clone-failed: the guest did not take the time $2"
	[ "${4:--}" = - ] || $bb ip link set dev eth0 address "$4" ||
		echo "capsa-clone-failed: the guest did not take MAC $4"
	[ -z "$5" ] || { $bb ip -4 addr flush dev eth0 && $bb ip addr add "$5" dev eth0 && $bb ip route add default via "$6"; } ||
		echo "capsa-clone-failed: the guest did not take address $5 via $6"
	echo "$3" >/proc/sys/kernel/hostname
	printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t%s\n' "$3" >/etc/hosts
	unset bb
	printf '\033]777;capsa-ready\007'
}
case $- in
*i*) printf '\033]777;capsa-ready\007' ;;
esac
