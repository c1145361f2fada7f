#!/bin/sh
# udhcpc hook of the capsa guest: apply a lease (address, MTU, default route, DNS).
# udhcpc passes the event as $1 and the lease in variables ($ip, $mask, $router, $dns, ...).
case $1 in
deconfig)
	ip -4 addr flush dev "$interface"
	;;
bound | renew)
	ip -4 addr flush dev "$interface"
	ip addr add "$ip/${mask:-24}" dev "$interface"
	[ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
	for gateway in $router; do
		ip route replace default via "$gateway" dev "$interface"
		break
	done
	{
		[ -n "$domain" ] && echo "search $domain"
		for server in $dns; do
			echo "nameserver $server"
		done
	} > /etc/resolv.conf
	;;
esac
exit 0
