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
# Last, and only for interactive shells: the host waits for this marker before it types.
case $- in
*i*) printf '\033]777;capsa-ready\007' ;;
esac
