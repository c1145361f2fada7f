"""One VM: its description (spec, builder, boot), the QEMU machine it becomes (machine_spec),
and the running VM's handle and status."""
