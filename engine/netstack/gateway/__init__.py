"""The asyncio gateway of one VM: the frame dispatcher, the TCP and UDP relays, the DNS adapter,
and the narrow Protocols through which the relays see the gateway."""
