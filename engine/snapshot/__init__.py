"""Snapshots of running VMs and the clones started from them.

    path = await vm.snapshot("/tmp/snap")                 # the VM keeps running
    async with await engine.vm_from_snapshot(path) as clone:
        print(await (await clone.console()).exec("hostname"))

Two kinds (see :mod:`engine.snapshot.meta`): ``vm.snapshot()`` writes a *full* snapshot (RAM
inside the state file: portable, ~100 MiB for a 256 MiB guest, 0.1-0.3 s to restore); a pool
builds a *template* once (:func:`engine.snapshot.template.build_template`): its RAM is a file
on a tmpfs that every clone maps copy-on-write (``memory-backend-file``, ``x-ignore-shared``),
so a restore loads only device state, tens of KiB, in milliseconds, and idle clones share the
template's pages.

A clone is its template until told otherwise: same kernel random state, clock, hostname and
MAC. Right after the restore the engine types one line on its console (see
:mod:`engine.snapshot.identity`): host entropy plus an immediate reseed of the kernel's generator,
the host's time, a hostname and a fresh MAC (the clone's own gateway grants it the address the
template held). The clone is handed out only after that has run.

Modules: ``snapshot`` (a loaded folder), ``meta`` (its JSON), ``record`` (what it records of
machine and guest), ``save`` (``vm.snapshot()``), ``clone`` (restores), ``template`` (a pool's
shared-RAM template), ``store`` (where templates live), ``identity`` and ``agent`` (what makes
a clone a machine of its own).
"""
