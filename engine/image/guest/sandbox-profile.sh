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
case $- in
*i*) printf '\033]777;capsa-ready\007' ;;
esac
