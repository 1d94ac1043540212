"""Ingest benchmark: the same synthetic dataset pushed with dcmtk storescu, over 1 and over 4
parallel associations, to pacsnode, Orthanc, dcmtk storescp and a bare pynetdicom receiver,
side by side in one run. See bench/README.md.

    python -m bench.ingest [--instances-approx 2000] [--small] [--out results.json]
                           [--keep-data DIR] [--deid-off] [--targets pacsnode,bare,...]

pacsnode is measured twice: de-identifying (the default) and, as ``pacsnode-nodeid``, with
``PACSNODE_DEID__ENABLED=false``, so the cost of de-identification is printed side by side
(target: at most +20 % ingest time). ``--deid-off`` measures only the latter.

``bare-durable`` is the bare receiver writing through pacsnode's blob store (atomic write, the
file and its folder fsynced): ``bare-durable / bare`` is the most any receiver that fsyncs
before acknowledging can reach against the bare one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from rich.console import Console
from rich.table import Table

from tests.peers import (
    bare_receiver,
    free_port,
    orthanc,
    pacsnode_process,
    storescp,
    storescu,
)
from tests.synthetic import SyntheticSpec, generate

CACHE: Final = Path(__file__).resolve().parent / ".cache"
SYNTHETIC_SOURCE: Final = Path(__file__).resolve().parents[1] / "tests" / "synthetic.py"
TARGETS: Final = ("pacsnode", "orthanc", "storescp", "bare", "bare-durable", "pacsnode-nodeid")
ASSOCIATIONS: Final = (1, 4)
SMALL_SPEC: Final = SyntheticSpec(patients=3, ct_slices=10, mr_slices=5, rows=128, columns=128)

console = Console()
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_TICKS: Final = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A push failed or a target does not hold what was sent."""


# ------------------------------------------------------------------------------------ dataset


def spec_for(instances_approx: int) -> SyntheticSpec:
    """512x512 CT and MR, 20 patients (fewer for tiny counts); each visit is one CT series
    of 2k slices and two MR series of k slices, so ``instances = patients * 4k``."""
    patients = max(1, min(20, instances_approx // 4))
    k = max(1, round(instances_approx / (patients * 4)))
    return SyntheticSpec(patients=patients, ct_slices=2 * k, mr_slices=k, rows=512, columns=512)


def cached_dataset(spec: SyntheticSpec) -> list[Path]:
    """The files of ``spec``, generated once into bench/.cache/ and reused.

    The key includes a hash of the generator's source, so a changed generator regenerates.
    """
    generator = hashlib.sha256(SYNTHETIC_SOURCE.read_bytes()).hexdigest()[:12]
    key = "-".join(f"{name}{value}" for name, value in asdict(spec).items())
    folder = CACHE / f"{key}-{generator}"
    manifest = folder / "files.txt"
    if not manifest.exists():
        CACHE.mkdir(exist_ok=True)
        (CACHE / ".gitignore").write_text("*\n")
        console.print(f"generating {spec.instance_count} instances into {folder} ...")
        partial = Path(tempfile.mkdtemp(prefix="partial-", dir=CACHE))
        try:
            files = generate(partial, spec).files
            (partial / "files.txt").write_text(
                "".join(f"{f.relative_to(partial)}\n" for f in files)
            )
            shutil.rmtree(folder, ignore_errors=True)
            partial.rename(folder)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return [folder / line for line in manifest.read_text().splitlines()]


# ------------------------------------------------------------------------------------ targets


@dataclass(frozen=True)
class Endpoint:
    port: int
    aet: str
    pid: int | None  # the process whose peak RSS is the target's; None for storescp's forks


def pacsnode_instances(data_dir: Path) -> int:
    """Instance count from ``pacsnode stats --json``."""
    out = subprocess.run(
        [sys.executable, "-m", "node", "stats", "--data-dir", str(data_dir), "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(json.loads(out)["instances"])


@contextmanager
def serve(target: str, run_dir: Path, expected: int) -> Iterator[Endpoint]:
    """Start ``target`` fresh in ``run_dir``; after the push, check it holds ``expected``
    instances."""
    received = run_dir / "received"
    if target.startswith("pacsnode"):
        data = run_dir / "data"
        log = run_dir / "node.log"
        env = {"PACSNODE_DEID__ENABLED": "false"} if target == "pacsnode-nodeid" else {}
        with pacsnode_process(
            data, dicom_port=free_port(), http_port=free_port(), log_path=log, env=env
        ) as node:
            yield Endpoint(node.dicom_port, node.ae_title, node.pid)
            held = pacsnode_instances(data)
    elif target == "orthanc":
        with orthanc(run_dir, http_port=free_port(), dicom_port=free_port()) as peer:
            yield Endpoint(peer.dicom_port, peer.aet, peer.pid)
            with _http.open(f"{peer.url}/statistics", timeout=30) as response:
                held = int(json.loads(response.read())["CountInstances"])
    elif target == "storescp":
        with storescp(received, port=free_port()) as peer:
            yield Endpoint(peer.port, peer.aet, None)
            held = sum(1 for _ in received.iterdir())
    elif target in ("bare", "bare-durable"):
        durable = target == "bare-durable"
        with bare_receiver(received, port=free_port(), durable=durable) as peer:
            yield Endpoint(peer.port, peer.aet, peer.pid)
            held = sum(1 for _ in received.rglob("*.dcm"))
    else:
        raise ValueError(f"unknown target {target!r}")
    if held != expected:
        raise BenchError(f"{target} holds {held} instances after receiving {expected}")


def cpu_seconds(pid: int) -> float:
    """User + system time of ``pid``, its threads, its reaped children and its live
    descendants (worker processes), from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = sum(int(ticks) for ticks in fields[11:15]) / _TICKS  # utime stime cutime cstime
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                total += cpu_seconds(int(child))
            except FileNotFoundError:
                continue  # it ended meanwhile (its time is in cutime once reaped)
    return total


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the highest resident set size the process has had so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmHWM for pid {pid}")


# ---------------------------------------------------------------------------------------- run


@dataclass(frozen=True)
class Run:
    target: str
    associations: int
    instances: int
    bytes: int
    seconds: float
    instances_per_s: float
    mb_per_s: float
    peak_rss_bytes: int | None
    cpu_ms_per_instance: float | None
    """The receiving process's CPU time during the push over the instances pushed."""


def measure(target: str, associations: int, files: list[Path], run_dir: Path) -> Run:
    run_dir.mkdir(parents=True)
    os.sync()  # the previous run's writeback must not land in this one
    with serve(target, run_dir, len(files)) as endpoint:
        cpu_before = None if endpoint.pid is None else cpu_seconds(endpoint.pid)
        result = storescu(
            files, port=endpoint.port, aet_called=endpoint.aet, associations=associations
        )
        if not result.ok:
            raise BenchError(
                f"storescu to {target} exited with {result.returncodes}:\n{result.output}"
            )
        rss = cpu_ms = None
        if endpoint.pid is not None and cpu_before is not None:
            rss = peak_rss_bytes(endpoint.pid)
            cpu_ms = (cpu_seconds(endpoint.pid) - cpu_before) * 1000 / result.files
    return Run(
        target,
        associations,
        result.files,
        result.bytes,
        result.elapsed,
        result.instances_per_s,
        result.mb_per_s,
        rss,
        cpu_ms,
    )


def ratios(runs: Sequence[Run]) -> dict[str, float]:
    """pacsnode's instances/s over each peer's, per association count; and the time
    de-identification adds (``deid_overhead@n``: seconds with / seconds without - 1)."""
    speed = {(r.target, r.associations): r.instances_per_s for r in runs}
    cpu = {(r.target, r.associations): r.cpu_ms_per_instance for r in runs}
    figures = {
        f"pacsnode/{peer}@{n}": speed["pacsnode", n] / speed[peer, n]
        for n in ASSOCIATIONS
        for peer in TARGETS[1:]
        if ("pacsnode", n) in speed and (peer, n) in speed
    }
    for n in ASSOCIATIONS:
        ours, orthancs = cpu.get(("pacsnode", n)), cpu.get(("orthanc", n))
        if ours and orthancs:
            figures[f"cpu pacsnode/orthanc@{n}"] = ours / orthancs
    for n in ASSOCIATIONS:
        if ("bare-durable", n) in speed and ("bare", n) in speed:
            figures[f"bare-durable/bare@{n}"] = speed["bare-durable", n] / speed["bare", n]
        if ("pacsnode", n) in speed and ("pacsnode-nodeid", n) in speed:
            figures[f"deid_overhead@{n}"] = speed["pacsnode-nodeid", n] / speed["pacsnode", n] - 1
    return figures


def print_report(runs: Sequence[Run], figures: dict[str, float]) -> None:
    table = Table(title="C-STORE ingest (dcmtk storescu, TCP_NODELAY=1)")
    for column in ("target", "assoc.", "instances", "MB", "seconds", "inst/s", "MB/s"):
        table.add_column(column, justify="left" if column == "target" else "right")
    table.add_column("peak RSS MiB", justify="right")
    table.add_column("CPU ms/inst.", justify="right")
    for r in runs:
        table.add_row(
            r.target,
            str(r.associations),
            str(r.instances),
            f"{r.bytes / 1e6:.0f}",
            f"{r.seconds:.2f}",
            f"{r.instances_per_s:.1f}",
            f"{r.mb_per_s:.1f}",
            "-" if r.peak_rss_bytes is None else f"{r.peak_rss_bytes / 2**20:.0f}",
            "-" if r.cpu_ms_per_instance is None else f"{r.cpu_ms_per_instance:.1f}",
        )
    console.print(table)
    peers = [p for p in TARGETS[1:] if any(f"pacsnode/{p}@{n}" in figures for n in ASSOCIATIONS)]
    if peers:
        ratio_table = Table(title="pacsnode / peer (instances/s)")
        ratio_table.add_column("assoc.", justify="right")
        for peer in peers:
            ratio_table.add_column(f"pacsnode/{peer}", justify="right")
        for n in ASSOCIATIONS:
            cells = [figures.get(f"pacsnode/{peer}@{n}") for peer in peers]
            ratio_table.add_row(str(n), *("-" if c is None else f"{c:.2f}" for c in cells))
        console.print(ratio_table)
    for n in ASSOCIATIONS:
        if f"cpu pacsnode/orthanc@{n}" in figures:
            console.print(
                f"CPU per instance: pacsnode uses {figures[f'cpu pacsnode/orthanc@{n}']:.2f}x "
                f"Orthanc's ({n} association(s); target at most 1.6x)"
            )
        durable = figures.get(f"bare-durable/bare@{n}")
        if durable is not None:
            console.print(
                f"fsync alone: the durable bare receiver does {durable:.2f} of the bare "
                f"one's instances/s ({n} association(s))"
            )
        if f"deid_overhead@{n}" in figures:
            console.print(
                f"de-identification adds {figures[f'deid_overhead@{n}']:+.1%} ingest time "
                f"({n} association(s); target at most +20 %)"
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__)
    parser.add_argument("--instances-approx", type=int, default=2000)
    parser.add_argument("--small", action="store_true", help="60 instances of 128x128")
    parser.add_argument("--out", type=Path, help="write all figures as JSON here")
    parser.add_argument("--keep-data", type=Path, help="keep every run's folder under DIR")
    parser.add_argument(
        "--deid-off",
        action="store_true",
        help="run pacsnode only with PACSNODE_DEID__ENABLED=false (no de-identification)",
    )
    parser.add_argument(
        "--targets",
        type=lambda text: text.split(","),
        default=list(TARGETS),
        metavar="A,B,...",
        help=f"which targets to run (default all: {','.join(TARGETS)})",
    )
    args = parser.parse_args(argv)
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown target(s) {', '.join(sorted(unknown))}; choose from {TARGETS}")
    targets = [t for t in TARGETS if t in args.targets and not (args.deid_off and t == "pacsnode")]

    spec = SMALL_SPEC if args.small else spec_for(args.instances_approx)
    files = cached_dataset(spec)
    size = sum(len(f.read_bytes()) for f in files)  # also warms the page cache
    console.print(f"{len(files)} instances, {size / 1e6:.0f} MB, {os.cpu_count()} CPUs")

    root = args.keep_data or Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    runs: list[Run] = []
    try:
        for target in targets:
            for n in ASSOCIATIONS:
                run_dir = root / f"{target}-{n}"
                console.print(f"{target}, {n} association(s) ...", end=" ")
                runs.append(measure(target, n, files, run_dir))
                console.print(f"{runs[-1].instances_per_s:.1f} instances/s")
                if args.keep_data is None:
                    shutil.rmtree(run_dir)
    finally:
        if args.keep_data is None:
            shutil.rmtree(root, ignore_errors=True)

    figures = ratios(runs)
    print_report(runs, figures)
    if args.out:
        report = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "spec": asdict(spec),
            "runs": [asdict(r) for r in runs],
            "ratios": figures,
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
