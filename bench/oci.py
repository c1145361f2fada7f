"""OCI images: pull, cold start, clone refill and shared layers, each beside its baseline.

Run: ``.venv/bin/python -m bench.oci [--runs N]`` from the repository root (about 5 minutes on
2 cores). Everything is local: Debian's docker-registry on 127.0.0.1 (``tests/oci/registry.py``,
the tests' own harness) serving two images built from our Debian sandbox tree
(``tests/oci/images.py``: python3 on bookworm minbase, a 206 MB tar, 61 MB gzipped, plus a
small app layer), in an OCI cache of its own ($CAPSA_OCI_CACHE, removed at the end).

| row | ours | baseline |
| --- | --- | --- |
| pull + unpack | ``engine.pull_image`` into an empty cache: skopeo copy to a scratch layout, every layer checked and made an erofs file | ``skopeo copy docker://... oci:DIR`` alone (what fetching costs) |
| first exec, cold | ``engine.sandbox().oci(image).build()`` to the first ``exec(["true"])`` answered | the same for a plain sandbox (our Debian image, no OCI root) |
| clone refill | a waiting clone of an OCI sandbox template restored to its first exec (``bench.sandbox_clone``) | the same for a plain sandbox template |
| disk, two images | the cache's layer files after pulling both (they share the base layer) | the sum of the two images' layer files |
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console as RichConsole
from rich.table import Table

import engine
from bench.benchlib import exit_on_sigterm
from bench.sandbox_clone import measure
from tests.oci.images import app_image, noshell_image
from tests.oci.registry import push, running_registry


@dataclass
class Row:
    measurement: str
    ours: float
    baseline: float
    unit: str  # "s" or "MB"
    note: str = ""


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _pull_rows(reference: str, work: Path, runs: int) -> list[Row]:
    ours, plain = [], []
    for index in range(runs):
        cache = work / f"cache-{index}"
        start = time.perf_counter()
        engine.pull_image(reference, store=engine.OciStore(cache), tls_verify=False)
        ours.append(time.perf_counter() - start)
        shutil.rmtree(cache)
        folder = work / f"skopeo-{index}"
        start = time.perf_counter()
        subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{reference}", f"oci:{folder}:x"],
                       check=True, capture_output=True)
        plain.append(time.perf_counter() - start)
        shutil.rmtree(folder)
    return [Row("pull + unpack, ~206 MB image (vs skopeo copy alone)", _median(ours), _median(plain), "s",
                f"{runs} runs each, medians")]


async def _first_exec(builder: engine.SandboxBuilder) -> float:
    start = time.perf_counter()
    vm = await builder.build()
    try:
        agent = await vm.agent(timeout=180)
        result = await agent.exec(["true"], timeout=120)
        assert result.exit_code == 0
        return time.perf_counter() - start
    finally:
        await vm.kill()


async def _cold_rows(reference: str, runs: int) -> list[Row]:
    ours, plain = [], []
    await _first_exec(engine.sandbox())  # warms the page cache and builds nothing later
    for _ in range(runs):
        ours.append(await _first_exec(engine.sandbox().oci(reference, tls_verify=False)))
        plain.append(await _first_exec(engine.sandbox()))
    return [Row("first exec in a cold sandbox (OCI vs plain)", _median(ours), _median(plain), "s",
                f"{runs} runs each, medians")]


async def _clone_rows(reference: str, samples: int) -> list[Row]:
    boot = engine.sandbox_boot()
    net = engine.NetworkMode.user_nat().build()
    oci_spec = (engine.sandbox().oci(reference, tls_verify=False).memory_mb(512).console_enabled()
                .network(net)).spec()
    ours = [answered for _, answered in await measure(boot, samples, oci_spec)]
    plain = [answered for _, answered in await measure(boot, samples)]
    return [Row("clone refill to first exec (OCI vs plain template)", _median(ours), _median(plain), "s",
                f"{samples} clones each, medians")]


def _disk_rows(first: str, second: str, work: Path) -> list[Row]:
    store = engine.OciStore(work / "disk-cache")
    a = engine.pull_image(first, store=store, tls_verify=False)
    b = engine.pull_image(second, store=store, tls_verify=False)
    total = sum(f.stat().st_size for f in (*a.layer_files, *b.layer_files))
    return [Row("disk used by two images sharing their base layer (vs sum)", store.disk_usage() / 1e6, total / 1e6, "MB",
                "erofs layer files")]


async def run(runs: int) -> list[Row]:
    work = Path(tempfile.mkdtemp(prefix="capsa-bench-oci-"))
    saved = os.environ.get("CAPSA_OCI_CACHE")
    os.environ["CAPSA_OCI_CACHE"] = str(work / "cache")
    try:
        app, noshell = app_image(work), noshell_image(work)
        with running_registry(work / "registry") as address:
            first, second = push(app, "1", address, "bench/app"), push(noshell, "1", address, "bench/noshell")
            rows = _pull_rows(first, work, runs)
            engine.pull_image(first, tls_verify=False)  # the sandboxes below start from a warm cache
            rows += await _cold_rows(first, runs)
            rows += await _clone_rows(first, max(3, runs))
            rows += _disk_rows(first, second, work)
        return rows
    finally:
        if saved is None:
            os.environ.pop("CAPSA_OCI_CACHE", None)
        else:
            os.environ["CAPSA_OCI_CACHE"] = saved
        shutil.rmtree(work, ignore_errors=True)


def print_table(rows: list[Row]) -> None:
    out = RichConsole(width=160, highlight=False)
    out.print(f"OCI images under {engine.choose_accelerator().describe()}", soft_wrap=True)
    table = Table()
    for name in ("measurement", "ours", "baseline", "ratio (ours/baseline)", "note"):
        table.add_column(name)
    for row in rows:
        show = (lambda v: f"{v * 1000:.0f} ms") if row.unit == "s" else (lambda v: f"{v:.1f} MB")
        ratio = row.ours / row.baseline if row.baseline else float("inf")
        table.add_row(row.measurement, show(row.ours), show(row.baseline), f"{ratio:.2f}x", row.note)
    out.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    exit_on_sigterm()
    print_table(asyncio.run(run(args.runs)))


if __name__ == "__main__":
    main()
