#!/bin/sh
# capsa guest init: PID 1 of the default initramfs (busybox ash).
#
# Boot speed matters more than generality: every external command costs a fork+exec under
# software emulation, so only what the kernel command line asks for is done before the shell.
# Knobs (all optional): capsa.hostname=NAME capsa.net=1 capsa.pci=1 capsa.rng=1 capsa.acpid=1
# capsa.login=1 capsa.user=NAME capsa.pass=HEX capsa.agent=1 (load the agent port's driver), and
# for a sandbox capsa.root=DEV capsa.rootfstype=FS capsa.overlay=tmpfs|DEV (switch_root into the
# read-only image on DEV under a writable overlay), capsa.9p=1 (shared folders' drivers),
# capsa.disks=1 (extra disks' drivers). The standard root=DEV rootfstype=FS ro|rw init=PATH boot
# a root disk: mounted, then switch_root into its init. PID 1 must never exit: the kernel would panic.

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root USER=root LOGNAME=root

# Set first: the kernel drops signals PID 1 has no handler for.
# busybox halt/poweroff/reboot signal PID 1 with USR1/USR2/TERM; Ctrl-Alt-Del sends INT.
trap 'poweroff -f' USR1 USR2
trap 'reboot -f' TERM INT

mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid,mode=755 devtmpfs /dev
mkdir /dev/pts
mount -t devpts -o nosuid,noexec,gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
mount -t tmpfs -o nosuid,nodev,mode=755 tmpfs /run

# An image built on a host that could not run busybox has no applet links yet.
[ -e /bin/ls ] || /bin/busybox --install -s

hostname=capsa net=0 pci=0 rng=0 acpid=0 login=0 user= pass= quiet=0 agent=0 root= rootfstype=ext4 overlay=tmpfs
ninep=0 disks=0 diskroot= diskfstype=ext4 diskmode=rw diskinit=/sbin/init
set -f  # the command line is split on spaces below and must not be globbed
read -r cmdline < /proc/cmdline
for arg in $cmdline; do
	case $arg in
	capsa.hostname=?*) hostname=${arg#*=} ;;
	capsa.net=*) net=${arg#*=} ;;
	capsa.pci=*) pci=${arg#*=} ;;
	capsa.rng=*) rng=${arg#*=} ;;
	capsa.acpid=*) acpid=${arg#*=} ;;
	capsa.login=*) login=${arg#*=} ;;
	capsa.user=*) user=${arg#*=} ;;
	capsa.pass=*) pass=${arg#*=} ;;
	capsa.agent=*) agent=${arg#*=} ;;
	capsa.root=?*) root=${arg#*=} ;;
	capsa.rootfstype=?*) rootfstype=${arg#*=} ;;
	capsa.overlay=?*) overlay=${arg#*=} ;;
	capsa.9p=*) ninep=${arg#*=} ;;
	capsa.disks=*) disks=${arg#*=} ;;
	root=?*) diskroot=${arg#*=} ;;
	rootfstype=?*) diskfstype=${arg#*=} ;;
	init=?*) diskinit=${arg#*=} ;;
	ro) diskmode=ro ;;
	rw) diskmode=rw ;;
	quiet) quiet=1 ;;
	esac
done
set +f

# Late kernel messages would interleave with command output on the console.
[ "$quiet" = 1 ] && echo 1 > /proc/sys/kernel/printk
echo "$hostname" > /proc/sys/kernel/hostname
echo "127.0.1.1	$hostname" >> /etc/hosts

# load LIST: insmod each "name path" line of LIST that is not loaded yet (lists share modules).
load() {
	while read -r name path; do
		[ -d "/sys/module/$name" ] || insmod "$path"
	done < "$1"
}

transport=
[ "$pci" = 1 ] && transport=-pci

ip link set lo up
if [ "$net" = 1 ]; then
	if [ "$pci" = 1 ]; then load /etc/capsa/modules.pci; else load /etc/capsa/modules.net; fi
	# The driver normally registers eth0 inside insmod; allow a little time in case it did not.
	tries=0
	while [ ! -e /sys/class/net/eth0 ] && [ $tries -lt 40 ]; do
		sleep 0.05
		tries=$((tries + 1))
	done
	ip link set eth0 up && udhcpc -i eth0 -s /etc/udhcpc/default.script -q -t 3 -T 1 -n >/dev/null 2>&1
fi
[ "$rng" = 1 ] && load "/etc/capsa/modules.rng$transport"
[ "$agent" = 1 ] && load "/etc/capsa/modules.console$transport"
[ "$ninep" = 1 ] && load "/etc/capsa/modules.9p$transport"
{ [ "$disks" = 1 ] || [ -n "$diskroot" ]; } && load "/etc/capsa/modules.disk$transport"

if [ "$acpid" = 1 ]; then
	load /etc/capsa/modules.acpi
	# A sandbox starts its own acpid from its inittab: this initramfs is gone after switch_root.
	[ -z "$root" ] && acpid -l /dev/null
fi

# A sandbox: the image on $root read-only, writes to an overlay on tmpfs or the scratch disk,
# then Debian's tree becomes / and busybox init (its inittab is in the image) runs as PID 1.
if [ -n "$root" ]; then
	load "/etc/capsa/modules.sandbox$transport"
	mkdir -p /sysroot /media/image /media/rw
	fail() { echo "capsa sandbox: $*" > /dev/console; exec /bin/sh; }
	mount -t "$rootfstype" -o ro "$root" /media/image || fail "cannot mount $root ($rootfstype)"
	if [ "$overlay" = tmpfs ]; then
		mount -t tmpfs -o mode=755 tmpfs /media/rw
	else
		mount -t ext4 -o noatime "$overlay" /media/rw || fail "cannot mount the scratch disk $overlay"
	fi
	mkdir -p /media/rw/upper /media/rw/work
	mount -t overlay -o lowerdir=/media/image,upperdir=/media/rw/upper,workdir=/media/rw/work overlay /sysroot \
		|| fail "cannot mount the overlay"
	echo "$hostname" > /sysroot/etc/hostname
	echo "127.0.0.1	localhost
127.0.1.1	$hostname" > /sysroot/etc/hosts
	[ -s /etc/resolv.conf ] && cat /etc/resolv.conf > /sysroot/etc/resolv.conf
	for dir in dev proc sys run tmp; do
		mount --move "/$dir" "/sysroot/$dir" 2>/dev/null || mount -t tmpfs tmpfs "/sysroot/$dir"
	done
	trap - USR1 USR2 TERM INT
	exec switch_root /sysroot /usr/lib/capsa/busybox init
fi

# A root disk (root=/dev/vda, capsa's form): mounted as it is, read-write unless "ro", then its
# own init takes over. A failure says why on the console and leaves this initramfs's shell.
# An ext3/4 disk left unclean (its VM killed while it was mounted read-write) has a journal to
# replay, which a read-only device cannot take: it is mounted without the replay (noload) and
# the console says so, rather than not booting at all.
mount_root_disk() {
	mount -t "$diskfstype" -o "$diskmode" "$diskroot" /sysroot 2>/dev/null && return 0
	case "$diskmode,$diskfstype" in ro,ext3|ro,ext4) ;; *) return 1 ;; esac
	mount -t "$diskfstype" -o ro,noload "$diskroot" /sysroot || return 1
	echo "capsa: the root disk $diskroot was not cleanly unmounted: mounted read-only without replaying its journal" > /dev/console
}
if [ -n "$diskroot" ]; then
	mkdir -p /sysroot
	if mount_root_disk; then
		if [ -x "/sysroot$diskinit" ] || [ -L "/sysroot$diskinit" ]; then
			for dir in dev proc sys run tmp; do
				mkdir -p "/sysroot/$dir" 2>/dev/null
				mount --move "/$dir" "/sysroot/$dir" 2>/dev/null
			done
			trap - USR1 USR2 TERM INT
			exec switch_root /sysroot "$diskinit"
		fi
		echo "capsa: the root disk $diskroot has no $diskinit" > /dev/console
		umount /sysroot
	else
		echo "capsa: cannot mount the root disk $diskroot ($diskfstype, $diskmode)" > /dev/console
	fi
fi

# The identity helper of snapshot clones (see agent.S in the engine): resident from the start,
# so a clone's fix-up needs no fork or exec.
[ -x /bin/capsa-agent ] && /bin/capsa-agent </dev/null >/dev/null 2>&1 &

# unhex HEX: print the bytes HEX encodes (printf understands \xHH).
unhex() {
	rest=$1 esc=
	while [ -n "$rest" ]; do
		tail=${rest#??}
		esc="$esc\\x${rest%"$tail"}"
		rest=$tail
	done
	printf "$esc"
}

add_user() {
	case $user in ""|root) return ;; esac
	home=/home/$user
	hash=  # empty in /etc/shadow: busybox login lets the user in without a prompt
	[ -n "$pass" ] && hash=$(unhex "$pass" | mkpasswd -P 0 -m sha512)
	echo "$user:x:1000:1000:$user:$home:/bin/capsa-shell" >> /etc/passwd
	echo "$user:$hash:1:0:99999:7:::" >> /etc/shadow
	echo "$user:x:1000:" >> /etc/group
	mkdir -p "$home" && chown 1000:1000 "$home" && chmod 700 "$home"
}

if [ "$login" = 1 ]; then
	add_user
	# login reports to syslog and, with no syslogd, onto the console: keep it in memory (logread).
	syslogd -C64
	session="/sbin/getty -L 0 ttyS0 vt100"
else
	# cttyhack opens the real console as controlling tty so Ctrl-C reaches the job.
	session="/bin/cttyhack /bin/capsa-shell"
fi

# busybox init takes over as PID 1: it respawns the console session, reaps orphans and turns
# poweroff/reboot/halt into clean shutdowns. A shell loop cannot do the respawning: a job
# it starts with & has SIGINT ignored, and every shell below would inherit that (no Ctrl-C).
cat > /etc/inittab <<EOT
::respawn:$session
::shutdown:/bin/sync
EOT
trap - USR1 USR2 TERM INT
exec /sbin/init
