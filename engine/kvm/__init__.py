"""The machine layer: one QEMU process per VM (accelerator, command line, host facts, the
machine and its QMP, migration, processes); it knows VMs only as a MachineSpec, never pools."""
