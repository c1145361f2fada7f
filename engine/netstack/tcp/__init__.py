"""TCP of the gateway, sans-IO: the segment codec, one connection's state machine (with its
sending side and reassembly) and the types they share."""
