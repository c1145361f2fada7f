"""Pool profiles: YAML files that describe a pool's VM shape, size and network (schema,
parse, network, store)."""
