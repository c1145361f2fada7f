"""Snapshots of running VMs and the clones started from them.

``snapshot`` is a loaded snapshot folder, ``meta`` its JSON, ``record`` what it records of a
machine and guest, ``save`` writes one (``VmHandle.snapshot()``), ``clone`` restores one,
``template`` is a pool's shared-RAM template, ``store`` where templates live, ``identity``
and ``agent`` what makes a clone a machine of its own.
"""
