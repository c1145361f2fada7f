"""Sans-IO protocol cores of the userspace NAT gateway (Ethernet, ARP, IPv4, ICMP, UDP, TCP,
DHCP, DNS) and its network policy.

Each core takes bytes, parsed packets and the current time in and gives bytes, parsed packets
and events out; none of them touches a socket, a clock or the event loop.
"""
