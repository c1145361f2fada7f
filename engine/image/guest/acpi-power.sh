#!/bin/sh
# ACPI power button (e.g. QMP system_powerdown): a clean poweroff through PID 1.
exec poweroff
