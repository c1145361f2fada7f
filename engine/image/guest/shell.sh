#!/bin/sh
# Console shell of the capsa guest (root's and the login user's shell): ash without its banner.
# ash prints "BusyBox ... built-in shell (ash)" on stdout the moment it turns interactive, before
# /etc/profile runs; so stdout waits on fd 3 until /etc/profile puts it back. With stdout
# not a tty ash would not turn interactive by itself, hence -i.
if [ $# -eq 0 ]; then
	export CAPSA_STDOUT=3
	exec /bin/sh -l -i 3>&1 >/dev/null
fi
exec /bin/sh "$@"
