"""Pools of warm VMs: the pool and its builder, the VM a caller reserves, its size rules,
stats and the snapshot clones that refill it."""
