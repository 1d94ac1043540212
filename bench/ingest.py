"""Ingest benchmark: the same synthetic dataset pushed with dcmtk storescu, over 1 and over 4
parallel associations, to pacsnode, Orthanc, dcmtk storescp and a bare pynetdicom receiver,
side by side in one run. See bench/README.md.

    python -m bench.ingest [--instances-approx 2000] [--small] [--out results.json]
                           [--keep-data DIR] [--deid-off] [--targets pacsnode,bare,...]
                           [--workers 1,2,4]

pacsnode is measured twice: de-identifying (the default) and, as ``pacsnode-nodeid``, with
``PACSNODE_DEID__ENABLED=false``, so the cost of de-identification is printed side by side
(target: at most +20 % ingest time). ``--deid-off`` measures only the latter.

``bare-durable`` is the bare receiver writing through pacsnode's blob store (atomic write, the
file and its folder fsynced): ``bare-durable / bare`` is the most any receiver that fsyncs
before acknowledging can reach against the bare one.

``--workers`` runs pacsnode once per value of ``serve --workers`` (``PACSNODE_WORKERS``), and
prints a scaling table: throughput and CPU per instance against the CPU-bound ceiling
``min(workers, associations, cores) / CPU per instance``. CPU is the user + system time of
the receiving process and all its descendants (live and reaped) during the push, divided by
the instances.
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

import psutil
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

console = Console(width=120)  # the tables' columns, also when the output is a file
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


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
    tree: int  # the process whose CPU time, with its descendants', is the target's


def pacsnode_instances(data_dir: Path) -> int:
    """Instance count from ``pacsnode stats --json``."""
    out = subprocess.run(
        [sys.executable, "-m", "node", "stats", "--data-dir", str(data_dir), "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(json.loads(out)["instances"])


def wait_for_workers(pid: int, workers: int, timeout: float = 120.0) -> None:
    """Until pacsnode's main process ``pid`` has ``workers`` DICOM workers (spawned
    children), so that no worker's start lands in the push."""
    deadline = time.monotonic() + timeout
    while workers > 1:
        spawned = [c for c in psutil.Process(pid).children() if _spawned(c)]
        if len(spawned) >= workers:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"pacsnode has {len(spawned)} of {workers} workers")
        time.sleep(0.1)


def _spawned(process: psutil.Process) -> bool:
    try:
        return "spawn_main" in " ".join(process.cmdline())
    except psutil.Error:  # gone, or not reaped yet
        return False


@contextmanager
def serve(
    target: str, run_dir: Path, expected: int, workers: int | None = None
) -> Iterator[Endpoint]:
    """Start ``target`` fresh in ``run_dir`` (pacsnode with ``workers`` DICOM processes);
    after the push, check it holds ``expected`` instances."""
    received = run_dir / "received"
    if target.startswith("pacsnode"):
        data = run_dir / "data"
        log = run_dir / "node.log"
        env = {"PACSNODE_DEID__ENABLED": "false"} if target == "pacsnode-nodeid" else {}
        env["PACSNODE_WORKERS"] = str(workers or 1)
        with pacsnode_process(
            data, dicom_port=free_port(), http_port=free_port(), log_path=log, env=env
        ) as node:
            wait_for_workers(node.pid, workers or 1)
            yield Endpoint(node.dicom_port, node.ae_title, node.pid, node.pid)
            held = pacsnode_instances(data)
    elif target == "orthanc":
        with orthanc(run_dir, http_port=free_port(), dicom_port=free_port()) as peer:
            yield Endpoint(peer.dicom_port, peer.aet, peer.pid, peer.pid)
            with _http.open(f"{peer.url}/statistics", timeout=30) as response:
                held = int(json.loads(response.read())["CountInstances"])
    elif target == "storescp":
        with storescp(received, port=free_port()) as peer:
            yield Endpoint(peer.port, peer.aet, None, peer.pid)
            held = sum(1 for _ in received.iterdir())
    elif target in ("bare", "bare-durable"):
        durable = target == "bare-durable"
        with bare_receiver(received, port=free_port(), durable=durable) as peer:
            yield Endpoint(peer.port, peer.aet, peer.pid, peer.pid)
            held = sum(1 for _ in received.rglob("*.dcm"))
    else:
        raise ValueError(f"unknown target {target!r}")
    if held != expected:
        raise BenchError(f"{target} holds {held} instances after receiving {expected}")


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the highest resident set size the process has had so far, summed with its
    live descendants' (pacsnode's DICOM workers)."""
    total = 0
    for process in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) * 1024
    if not total:
        raise BenchError(f"no VmHWM for pid {pid}")
    return total


def tree_cpu_seconds(pid: int) -> dict[int, float]:
    """User + system seconds of ``pid`` and of each of its descendants: the live ones' own,
    with the reaped ones' (counted in their parent's ``children_*`` times)."""
    root = psutil.Process(pid)
    seconds = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue  # ended between the listing and now: its parent counts it once reaped
        seconds[process.pid] = (
            times.user + times.system + times.children_user + times.children_system
        )
    return seconds


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
    cpu_seconds: float = 0.0
    """User + system time of the target's processes during the push."""
    workers: int | None = None
    """pacsnode's ``serve --workers``; None for the peers."""
    cpu_by_process: tuple[float, ...] = ()
    """The same, per process of the target (0.05 s and more), busiest first: how evenly the
    kernel spread the associations over pacsnode's workers."""

    @property
    def label(self) -> str:
        return self.target if self.workers is None else f"{self.target} w{self.workers}"

    @property
    def cpu_ms_per_instance(self) -> float:
        return 1000 * self.cpu_seconds / self.instances


def measure(
    target: str, associations: int, files: list[Path], run_dir: Path, workers: int | None = None
) -> Run:
    run_dir.mkdir(parents=True)
    os.sync()  # the previous run's writeback must not land in this one
    with serve(target, run_dir, len(files), workers) as endpoint:
        cpu_before = tree_cpu_seconds(endpoint.tree)
        result = storescu(
            files, port=endpoint.port, aet_called=endpoint.aet, associations=associations
        )
        cpu_after = tree_cpu_seconds(endpoint.tree)
        by_process = sorted(
            (cpu_after[p] - cpu_before.get(p, 0.0) for p in cpu_after), reverse=True
        )
        if not result.ok:
            raise BenchError(
                f"storescu to {target} exited with {result.returncodes}:\n{result.output}"
            )
        rss = None if endpoint.pid is None else peak_rss_bytes(endpoint.pid)
    return Run(
        target,
        associations,
        result.files,
        result.bytes,
        result.elapsed,
        result.instances_per_s,
        result.mb_per_s,
        rss,
        sum(by_process),
        workers,
        tuple(round(s, 2) for s in by_process if s >= 0.05),
    )


def ratios(runs: Sequence[Run]) -> dict[str, float]:
    """pacsnode's instances/s over each peer's, per association count (``pacsnode wK/peer@n``
    for each worker count K); the time de-identification adds (``deid_overhead wK@n``:
    seconds with / seconds without - 1); and CPU per instance over Orthanc's
    (``cpu pacsnode wK/orthanc@n``)."""
    speed = {(r.label, r.associations): r.instances_per_s for r in runs}
    cpu = {(r.label, r.associations): r.cpu_ms_per_instance for r in runs}
    nodes = sorted({r.workers for r in runs if r.target == "pacsnode"}, key=lambda w: w or 0)
    figures = {}
    for n in ASSOCIATIONS:
        for workers in nodes:
            node = f"pacsnode w{workers}"
            for peer in TARGETS[1:-1]:
                if (node, n) in speed and (peer, n) in speed:
                    figures[f"{node}/{peer}@{n}"] = speed[node, n] / speed[peer, n]
            plain = f"pacsnode-nodeid w{workers}"
            if (node, n) in speed and (plain, n) in speed:
                figures[f"deid_overhead w{workers}@{n}"] = speed[plain, n] / speed[node, n] - 1
            if (node, n) in cpu and ("orthanc", n) in cpu:
                figures[f"cpu {node}/orthanc@{n}"] = cpu[node, n] / cpu["orthanc", n]
        if ("bare-durable", n) in speed and ("bare", n) in speed:
            figures[f"bare-durable/bare@{n}"] = speed["bare-durable", n] / speed["bare", n]
    return figures


def print_report(runs: Sequence[Run], figures: dict[str, float]) -> None:
    table = Table(title="C-STORE ingest (dcmtk storescu, TCP_NODELAY=1)")
    for column in ("target", "assoc.", "instances", "MB", "seconds", "inst/s", "MB/s"):
        table.add_column(column, justify="left" if column == "target" else "right", no_wrap=True)
    table.add_column("CPU ms/inst", justify="right")
    table.add_column("peak RSS MiB", justify="right")
    for r in runs:
        table.add_row(
            r.label,
            str(r.associations),
            str(r.instances),
            f"{r.bytes / 1e6:.0f}",
            f"{r.seconds:.2f}",
            f"{r.instances_per_s:.1f}",
            f"{r.mb_per_s:.1f}",
            f"{r.cpu_ms_per_instance:.1f}",
            "-" if r.peak_rss_bytes is None else f"{r.peak_rss_bytes / 2**20:.0f}",
        )
    console.print(table)
    print_scaling(runs)
    nodes = sorted({r.label for r in runs if r.target == "pacsnode"})
    peers = [p for p in TARGETS[1:-1] if any(r.target == p for r in runs)]
    if nodes and peers:
        ratio_table = Table(title="pacsnode / peer (instances/s)")
        ratio_table.add_column("pacsnode")
        ratio_table.add_column("assoc.", justify="right")
        for peer in peers:
            ratio_table.add_column(f"/{peer}", justify="right")
        for node in nodes:
            for n in ASSOCIATIONS:
                cells = [figures.get(f"{node}/{peer}@{n}") for peer in peers]
                ratio_table.add_row(
                    node, str(n), *("-" if c is None else f"{c:.2f}" for c in cells)
                )
        console.print(ratio_table)
    for name, value in figures.items():
        if name.startswith("bare-durable/bare@"):
            console.print(
                f"fsync alone: the durable bare receiver does {value:.2f} of the bare one's "
                f"instances/s ({name.rpartition('@')[2]} association(s))"
            )
        elif name.startswith("deid_overhead"):
            label, _, assoc = name.removeprefix("deid_overhead ").partition("@")
            console.print(
                f"de-identification adds {value:+.1%} ingest time ({assoc} association(s), "
                f"{label}; target at most +20 %)"
            )
        elif name.startswith("cpu "):
            label, _, assoc = name.removeprefix("cpu ").partition("/")
            console.print(
                f"CPU per instance: {label} uses {value:.2f}x Orthanc's "
                f"({assoc.partition('@')[2]} association(s); target at most 1.6x)"
            )


def print_scaling(runs: Sequence[Run]) -> None:
    """pacsnode per worker count: measured throughput against the CPU-bound ceiling
    ``min(workers, associations, cores) / CPU per instance`` of the same run (an association
    is served by one worker), the cores used, and the CPU seconds of each process."""
    cores = len(os.sched_getaffinity(0))
    nodes = [r for r in runs if r.target == "pacsnode" and r.workers is not None]
    if len({r.workers for r in nodes}) < 2:
        return
    table = Table(title=f"pacsnode scaling with --workers ({cores} cores)")
    columns = ("workers", "assoc.", "inst/s", "CPU ms/inst", "ceiling inst/s", "of ceiling")
    for column in (*columns, "cores used", "CPU s per process"):
        table.add_column(column, justify="right")
    for r in sorted(nodes, key=lambda r: (r.workers or 0, r.associations)):
        ceiling = min(r.workers or 1, r.associations, cores) * 1000 / r.cpu_ms_per_instance
        table.add_row(
            str(r.workers),
            str(r.associations),
            f"{r.instances_per_s:.1f}",
            f"{r.cpu_ms_per_instance:.1f}",
            f"{ceiling:.0f}",
            f"{r.instances_per_s / ceiling:.0%}",
            f"{r.cpu_seconds / r.seconds:.2f}",
            " ".join(f"{s:.1f}" for s in r.cpu_by_process),
        )
    console.print(table)


def worker_counts(text: str) -> list[int]:
    """``1,2,N``: the worker counts, N being this machine's cores."""
    cores = len(os.sched_getaffinity(0))
    counts = [cores if item.strip().upper() == "N" else int(item) for item in text.split(",")]
    if any(count < 1 for count in counts):
        raise argparse.ArgumentTypeError("worker counts are at least 1")
    return list(dict.fromkeys(counts))


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
    parser.add_argument(
        "--workers",
        type=worker_counts,
        default=[1],
        metavar="K,L,...",
        help="pacsnode's serve --workers values to measure, N for one per core (default 1)",
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
    load_before = os.getloadavg()

    root = args.keep_data or Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    runs: list[Run] = []
    try:
        for target in targets:
            counts = args.workers if target.startswith("pacsnode") else [None]
            for workers in counts:
                for n in ASSOCIATIONS:
                    name = target if workers is None else f"{target}-w{workers}"
                    run_dir = root / f"{name}-{n}"
                    console.print(f"{name}, {n} association(s) ...", end=" ")
                    runs.append(measure(target, n, files, run_dir, workers))
                    console.print(
                        f"{runs[-1].instances_per_s:.1f} instances/s, "
                        f"{runs[-1].cpu_ms_per_instance:.1f} ms CPU per instance"
                    )
                    if args.keep_data is None:
                        shutil.rmtree(run_dir)
    finally:
        if args.keep_data is None:
            shutil.rmtree(root, ignore_errors=True)

    load = {"before": load_before, "after": os.getloadavg()}
    figures = ratios(runs)
    print_report(runs, figures)
    before, after = (" ".join(f"{x:.2f}" for x in load[k]) for k in ("before", "after"))
    console.print(f"load average (1, 5, 15 min) before: {before}; after: {after}")
    if args.out:
        report = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "load": load,
            "spec": asdict(spec),
            "runs": [{**asdict(r), "cpu_ms_per_instance": r.cpu_ms_per_instance} for r in runs],
            "ratios": figures,
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
