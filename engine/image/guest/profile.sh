# /etc/profile of the capsa guest, read by every login shell on the console.
# capsa-shell parked stdout on fd 3 to hide ash's banner: restore it first.
if [ "$CAPSA_STDOUT" = 3 ]; then
	unset CAPSA_STDOUT
	exec 1>&3 3>&-
fi
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
# busybox init hands the console shell HOME=/; login sets the real one.
[ "${HOME:-/}" = / ] && HOME=/root
export HOME
case ${TERM:-linux} in
linux | dumb) TERM=vt100 ;;
esac
export TERM
PS1='\h:\w\$ '
umask 022
cd "$HOME" 2>/dev/null
# capsa_clone SEED EPOCH NAME [MAC [ADDRESS/PREFIX ROUTER]]: the engine types this at the first
# prompt of a VM restored from a snapshot, to give it its own identity (see
# engine/snapshot/identity.py). Builtins only, run inside this shell: capsa-agent, resident since
# boot, does the system calls (random reseed, clock, MAC), since every fork or exec right after a
# restore costs ~100 ms. Only a cluster member's clone gets an address of its own (three forks).
capsa_clone() {
	echo "$2 ${4:--} $1" >/run/capsa-agent
	read -r capsa_status </run/capsa-agent-done
	[ "$capsa_status" = 0 ] ||
		echo "capsa-clone-failed: capsa-agent answered $capsa_status (R: reseed, T: clock, M: MAC refused)"
	unset capsa_status
	[ -z "$5" ] || { ip -4 addr flush dev eth0 && ip addr add "$5" dev eth0 && ip route add default via "$6"; } ||
		echo "capsa-clone-failed: the guest did not take address $5 via $6"
	echo "$3" >/proc/sys/kernel/hostname
	printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t%s\n' "$3" >/etc/hosts
	printf '\033]777;capsa-ready\007'
}
# Last, and only for interactive shells: the host waits for this marker before it types.
case $- in
*i*) printf '\033]777;capsa-ready\007' ;;
esac
