"""Export benchmark: a frozen cohort of ~2,000 instances exported as DICOM by pacsnode, against
a plain copy of the same blob files into the same folder tree, side by side in one run; then
the throughput of NIfTI conversion, PNG rendering and the streamed DICOM zip. See bench/README.md.

    python -m bench.export [--instances-approx 2000] [--small] [--rounds 3] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from rich.console import Console
from rich.table import Table

from bench.ingest import SMALL_SPEC, cached_dataset, spec_for
from config import load_settings
from export import Cohorts, Exporter, NoLabels
from export.writers import series_folder
from ingest import Source
from node.app import Core, build_core

TARGET_RATIO: Final = 0.80
console = Console()


@dataclass(frozen=True)
class Timing:
    what: str
    seconds: float
    files: int
    bytes: int
    series: int

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds


def load(core: Core, files: Sequence[Path]) -> None:
    """Ingest the dataset through the pipeline (fsync off: this benchmark is about export)."""
    for file in files:
        result = core.ingestor.accept(file.read_bytes(), Source(door="folder", remote="bench"))
        if not result.outcome.success:
            raise SystemExit(f"could not ingest {file}: {result.reason}")


def plain_copy_plan(cohorts: Cohorts, core: Core, ref: str) -> list[tuple[Path, Path]]:
    """(blob file, target path) for every instance, in the DICOM export's layout."""
    frozen = cohorts.frozen(ref)
    exporter = Exporter(core.db, core.blobs, cohorts, core.settings.export)
    plan = []
    for series in frozen.series:
        folder = series_folder(series)
        for instance in exporter.stored_instances(series):
            plan.append(
                (
                    core.blobs.path_of(instance.blob_key),
                    Path(folder) / f"{instance.pinned.sop_instance_uid}.dcm",
                )
            )
    return plan


def plain_copy(plan: Sequence[tuple[Path, Path]], out: Path) -> tuple[int, int]:
    """mkdir + shutil.copyfile for each file (sendfile on Linux): the floor to compare with."""
    size = 0
    for source, relative in plan:
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        size += source.stat().st_size
    return len(plan), size


def timed(what: str, run: Callable[[], tuple[int, int, int]], *, durable: bool = False) -> Timing:
    """Time ``run``; ``durable`` includes ``sync`` at the end (the data is on the disk)."""
    os.sync()  # the previous run's writeback must not land in this one
    started = time.perf_counter()
    files, size, series = run()
    if durable:
        os.sync()
    suffix = " + sync" if durable else ""
    return Timing(what + suffix, time.perf_counter() - started, files, size, series)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.export", description=__doc__)
    parser.add_argument("--instances-approx", type=int, default=2000)
    parser.add_argument("--small", action="store_true", help="60 instances of 128x128")
    parser.add_argument("--rounds", type=int, default=5, help="copy/export rounds (median)")
    parser.add_argument("--out", type=Path, help="write all figures as JSON here")
    args = parser.parse_args(argv)

    spec = SMALL_SPEC if args.small else spec_for(args.instances_approx)
    files = cached_dataset(spec)
    root = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        settings = load_settings(data_dir=root / "data", fsync=False)
        core = build_core(settings)
        console.print(f"ingesting {len(files)} instances ...")
        load(core, files)
        cohorts = Cohorts(core.db, settings.export, NoLabels())
        cohorts.define("bench", {}, actor="bench")
        frozen = cohorts.freeze("bench", actor="bench")
        exporter = Exporter(core.db, core.blobs, cohorts, settings.export)
        plan = plain_copy_plan(cohorts, core, "bench")
        blob_bytes = sum(source.stat().st_size for source, _ in plan)
        for source, _ in plan:  # warm the page cache: both sides read from memory
            source.read_bytes()
        console.print(
            f"cohort: {frozen.series} series, {frozen.instances} instances, "
            f"{blob_bytes / 1e6:.0f} MB; {os.cpu_count()} CPUs"
        )

        def copy_run(n: int) -> Callable[[], tuple[int, int, int]]:
            def run() -> tuple[int, int, int]:
                count, size = plain_copy(plan, root / f"copy-{n}")
                return count, size, frozen.series or 0

            return run

        def export_run(fmt: str, n: int) -> Callable[[], tuple[int, int, int]]:
            def run() -> tuple[int, int, int]:
                summary = exporter.to_folder("bench", fmt, root / f"{fmt}-{n}", actor="bench")
                return summary.files, summary.bytes, summary.series

            return run

        def measured(
            what: str, run: Callable[[], tuple[int, int, int]], out: Path, durable: bool
        ) -> Timing:
            """Time one run, then delete what it wrote (untimed), so that every run starts
            from the same state of the disk and the page cache."""
            timing = timed(what, run, durable=durable)
            shutil.rmtree(out)
            os.sync()
            return timing

        copies: dict[bool, list[Timing]] = {False: [], True: []}
        exports: dict[bool, list[Timing]] = {False: [], True: []}
        measured("warm-up", copy_run(-1), root / "copy--1", False)  # not counted
        measured("warm-up", export_run("dicom", -1), root / "dicom--1", False)
        for durable in (False, True):
            for n in range(args.rounds):  # interleaved, each first in turn: drift hits both
                for kind in ("copy", "export") if n % 2 == 0 else ("export", "copy"):
                    if kind == "copy":
                        timing = measured("plain copy", copy_run(n), root / f"copy-{n}", durable)
                        copies[durable].append(timing)
                    else:
                        timing = measured(
                            "pacsnode export dicom",
                            export_run("dicom", n),
                            root / f"dicom-{n}",
                            durable,
                        )
                        exports[durable].append(timing)
        nifti = timed("pacsnode export nifti", export_run("nifti", 0))
        png = timed("pacsnode export png", export_run("png", 0))

        def zip_run() -> tuple[int, int, int]:
            download = exporter.to_zip("bench", "dicom", actor="bench")
            size = sum(len(chunk) for chunk in download.chunks)
            return frozen.instances or 0, size, frozen.series or 0

        zipped = timed("pacsnode zip dicom (streamed, consumed)", zip_run)
        core.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    ratios = {
        durable: statistics.median(t.seconds for t in copies[durable])
        / statistics.median(t.seconds for t in exports[durable])
        for durable in (False, True)
    }
    ratio = ratios[False]
    table = Table(title=f"export of a frozen cohort ({frozen.instances} instances)")
    for column in ("what", "seconds", "files", "MB", "MB/s", "files/s"):
        table.add_column(column, justify="left" if column == "what" else "right")
    timings = [*copies[False], *exports[False], *copies[True], *exports[True]]
    for t in [*timings, nifti, png, zipped]:
        table.add_row(
            t.what,
            f"{t.seconds:.2f}",
            str(t.files),
            f"{t.bytes / 1e6:.0f}",
            f"{t.mb_per_s:.0f}",
            f"{t.files / t.seconds:.0f}",
        )
    console.print(table)
    for durable, label in ((False, "into the page cache"), (True, "until on disk (sync)")):
        verdict = "meets" if ratios[durable] >= TARGET_RATIO else "MISSES"
        console.print(
            f"DICOM export / plain copy speed, {label}, median of {args.rounds}: "
            f"{ratios[durable]:.2f} ({verdict} the {TARGET_RATIO:.0%} target)"
        )
    console.print(
        f"NIfTI: {nifti.series / nifti.seconds:.1f} series/s, "
        f"{(frozen.instances or 0) / nifti.seconds:.0f} slices/s, "
        f"{blob_bytes / 1e6 / nifti.seconds:.0f} MB/s of DICOM in; "
        f"PNG: {png.files / png.seconds:.0f} images/s"
    )
    if args.out:
        report = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "spec": asdict(spec),
            "timings": [{**asdict(t), "mb_per_s": t.mb_per_s} for t in timings],
            "nifti": asdict(nifti),
            "png": asdict(png),
            "zip": asdict(zipped),
            "dicom_export_over_plain_copy": ratio,
            "dicom_export_over_plain_copy_durable": ratios[True],
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
