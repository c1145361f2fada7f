"""The guest agent: a sandbox's RPC service (exec, files) and the host's client for it."""
