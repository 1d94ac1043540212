"""Query/Retrieve and Orthanc-sync benchmark, pacsnode and Orthanc side by side in one run.

    python -m bench.qr [--studies 10000] [--queries 100] [--sync-instances-approx 2000]
                       [--skip-find] [--skip-sync] [--out results.json]

1. C-FIND at STUDY level (Study Root) on a catalog of ``--studies`` studies, against Orthanc
   holding the same files: the latency of each query as one pynetdicom SCU sees it (one
   association per target, TCP_NODELAY on), per kind of query.
2. The Orthanc sync job: an Orthanc holding bench/ingest.py's dataset, followed by pacsnode
   from an empty catalog (studies/minute), next to Orthanc pushing the same studies to
   pacsnode over C-STORE (``/modalities/{id}/store``).

See bench/README.md for what is loaded and how.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)
from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine, text

from bench.ingest import cached_dataset, spec_for
from scp.outbound import on_connection_open
from tests.peers import HOST, free_ports, orthanc, pacsnode_process, storescu
from tests.synthetic import SyntheticSpec

console = Console()
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))
FIND: Final = StudyRootQueryRetrieveInformationModelFind
RETURN_KEYS: Final = (
    "PatientName",
    "PatientID",
    "StudyDate",
    "StudyDescription",
    "ModalitiesInStudy",
    "AccessionNumber",
    "StudyInstanceUID",
    "NumberOfStudyRelatedInstances",
)


PACSNODE_LOAD_ENV: Final = {"PACSNODE_FSYNC": "0", "PACSNODE_DEID__ENABLED": "false"}


class BenchError(RuntimeError):
    """A target does not hold what was loaded, or answered a query with a failure."""


def catalog_spec(studies: int) -> SyntheticSpec:
    """Tiny instances, many studies: each visit is a CT study (one instance) and an MR study
    (two one-instance series), two visits per patient, so ``studies / 4`` patients."""
    return SyntheticSpec(
        patients=max(1, studies // 4),
        studies_per_patient=2,
        ct_slices=1,
        mr_slices=1,
        rows=8,
        columns=8,
        seed=5,
    )


# ------------------------------------------------------------------------------ the targets


@dataclass(frozen=True)
class StudyKeys:
    """What a query can ask about one study, as the target itself stores it."""

    study_uid: str
    patient_id: str
    patient_name: str
    accession: str
    date: str


def pacsnode_studies(data_dir: Path) -> list[StudyKeys]:
    engine = create_engine(f"sqlite:///{data_dir / 'catalog.sqlite'}")
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT s.study_instance_uid, p.patient_id, coalesce(p.patient_name, ''), "
                "coalesce(s.accession_number, ''), coalesce(s.study_date, '') "
                "FROM study s JOIN patient p ON s.patient_pk = p.id ORDER BY s.id"
            )
        ).all()
    engine.dispose()
    return [StudyKeys(*row) for row in rows]


def orthanc_studies(url: str) -> list[StudyKeys]:
    with _http.open(f"{url}/studies?expand", timeout=600) as answer:
        studies = json.loads(answer.read())
    keys = []
    for study in studies:
        main, patient = study["MainDicomTags"], study["PatientMainDicomTags"]
        keys.append(
            StudyKeys(
                main["StudyInstanceUID"],
                patient.get("PatientID", ""),
                patient.get("PatientName", ""),
                main.get("AccessionNumber", ""),
                main.get("StudyDate", ""),
            )
        )
    return keys


def load_pacsnode(folder: Path, data_dir: Path, expected: int) -> float:
    """``pacsnode import`` the cache folder; seconds.

    fsync is off (loading, not measuring), and so is de-identification, so that pacsnode and
    Orthanc hold the same values and every query asks both the same thing. The folder also
    holds the cache's files.txt, which import refuses (not DICOM): the check is the instance
    count afterwards.
    """
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "node",
            "import",
            "--create",
            str(folder),
            "--data-dir",
            str(data_dir),
        ],
        check=False,
        capture_output=True,
        env={**os.environ, **PACSNODE_LOAD_ENV},
    )
    seconds = time.perf_counter() - started
    stats = subprocess.run(
        [sys.executable, "-m", "node", "stats", "--data-dir", str(data_dir), "--json"],
        env={**os.environ, **PACSNODE_LOAD_ENV},
        check=True,
        capture_output=True,
        text=True,
    )
    held = int(json.loads(stats.stdout)["instances"])
    if held != expected:
        raise BenchError(f"pacsnode holds {held} instances after importing {expected}")
    return seconds


def load_orthanc(files: list[Path], dicom_port: int, aet: str) -> float:
    """dcmtk storescu over four associations; seconds taken."""
    result = storescu(files, port=dicom_port, aet_called=aet, associations=4)
    if not result.ok:
        raise BenchError(f"storescu to Orthanc failed:\n{result.output}")
    return result.elapsed


# ---------------------------------------------------------------------------------- C-FIND


@dataclass(frozen=True)
class QueryKind:
    name: str
    build: Callable[[StudyKeys, list[StudyKeys]], dict[str, str]]


def _date_range(study: StudyKeys, everything: list[StudyKeys]) -> dict[str, str]:
    """The dates of about 1 % of the studies, starting at this study's date."""
    dates = sorted(s.date for s in everything if s.date)
    start = dates.index(study.date) if study.date in dates else 0
    end = dates[min(len(dates) - 1, start + max(1, len(dates) // 100))]
    return {"StudyDate": f"{dates[start]}-{end}"}


QUERY_KINDS: Final = (
    QueryKind("StudyInstanceUID", lambda s, _: {"StudyInstanceUID": s.study_uid}),
    QueryKind("PatientID", lambda s, _: {"PatientID": s.patient_id}),
    QueryKind("AccessionNumber", lambda s, _: {"AccessionNumber": s.accession}),
    QueryKind("StudyDate range (~1 %)", _date_range),
    QueryKind(
        "PatientName prefix*",
        lambda s, _: {"PatientName": s.patient_name.split("^")[0][:3] + "*"},
    ),
)


@dataclass(frozen=True)
class FindRun:
    target: str
    kind: str
    queries: int
    median_ms: float
    p95_ms: float
    mean_matches: float


def measure_find(
    target: str, port: int, aet: str, studies: list[StudyKeys], queries: int, seed: int
) -> list[FindRun]:
    ae = AE(ae_title="BENCHSCU")
    ae.add_requested_context(FIND)
    assoc = ae.associate(
        HOST, port, ae_title=aet, evt_handlers=[(evt.EVT_CONN_OPEN, on_connection_open)]
    )
    if not assoc.is_established:
        raise BenchError(f"{target} refused the C-FIND association")
    runs = []
    try:
        for kind in QUERY_KINDS:
            picked = random.Random(f"{seed}-{kind.name}").sample(studies, queries)
            timings, matches = [], []
            for study in picked:
                identifier = Dataset()
                identifier.SpecificCharacterSet = "ISO_IR 192"
                identifier.QueryRetrieveLevel = "STUDY"
                for keyword in RETURN_KEYS:
                    setattr(identifier, keyword, "")
                for keyword, value in kind.build(study, studies).items():
                    setattr(identifier, keyword, value)
                started = time.perf_counter()
                found = 0
                for status, _ in assoc.send_c_find(identifier, FIND):
                    code = int(status.Status) if "Status" in status else -1
                    if code in (0xFF00, 0xFF01):
                        found += 1
                    elif code != 0x0000:
                        raise BenchError(f"{target}: {kind.name} answered 0x{code:04X}")
                timings.append((time.perf_counter() - started) * 1000)
                matches.append(found)
            timings.sort()
            runs.append(
                FindRun(
                    target,
                    kind.name,
                    queries,
                    statistics.median(timings),
                    timings[min(len(timings) - 1, int(0.95 * len(timings)))],
                    statistics.mean(matches),
                )
            )
            console.print(f"  {target} {kind.name}: median {runs[-1].median_ms:.1f} ms")
    finally:
        assoc.release()
    return runs


def run_find(args: argparse.Namespace, root: Path) -> list[FindRun]:
    spec = catalog_spec(args.studies)
    files = cached_dataset(spec)
    folder = files[0].parents[3]  # <cache>/<patient>/<study>/<series>/<n>.dcm
    studies_count = 2 * spec.patients * spec.studies_per_patient
    console.print(f"C-FIND: {studies_count} studies, {len(files)} instances")
    data_dir = root / "find-pacsnode"
    seconds = load_pacsnode(folder, data_dir, len(files))
    console.print(f"  loaded into pacsnode in {seconds:.0f} s (pacsnode import)")
    runs: list[FindRun] = []
    dicom_port, http_port = free_ports(2)
    with pacsnode_process(
        data_dir,
        dicom_port=dicom_port,
        http_port=http_port,
        log_path=root / "find-node.log",
        env=PACSNODE_LOAD_ENV,
    ) as node:
        studies = pacsnode_studies(data_dir)
        runs += measure_find("pacsnode", node.dicom_port, node.ae_title, studies, args.queries, 1)
    http_port, dicom_port = free_ports(2)
    with orthanc(
        root / "find-orthanc",
        http_port=http_port,
        dicom_port=dicom_port,
        extra_config={"DicomAlwaysAllowFind": True},  # the benchmark's SCU is not a modality
    ) as peer:
        seconds = load_orthanc(files, peer.dicom_port, peer.aet)
        console.print(f"  loaded into Orthanc in {seconds:.0f} s (storescu, 4 associations)")
        studies = orthanc_studies(peer.url)
        if len(studies) != len(pacsnode_studies(data_dir)):
            raise BenchError(f"Orthanc holds {len(studies)} studies")
        runs += measure_find("orthanc", peer.dicom_port, peer.aet, studies, args.queries, 1)
    return runs


# ------------------------------------------------------------------------------------ sync


@dataclass(frozen=True)
class SyncRun:
    method: str
    studies: int
    instances: int
    seconds: float

    @property
    def studies_per_minute(self) -> float:
        return self.studies / self.seconds * 60

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds


def _wait_stable(url: str, studies: int, timeout: float = 600) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        with _http.open(f"{url}/changes?limit=100000", timeout=60) as answer:
            changes = json.loads(answer.read())["Changes"]
        stable = [c["ID"] for c in changes if c["ChangeType"] == "StableStudy"]
        if len(set(stable)) >= studies:
            return sorted(set(stable))
        if time.monotonic() > deadline:
            raise BenchError("Orthanc's studies did not become stable")
        time.sleep(1)


def run_sync(args: argparse.Namespace, root: Path) -> list[SyncRun]:
    from config import load_settings
    from jobs import OrthancSync
    from node.app import build_core

    files = cached_dataset(spec_for(args.sync_instances_approx))
    node_port, orthanc_http, orthanc_dicom, node_http = free_ports(4)
    runs = []
    with orthanc(
        root / "sync-orthanc",
        http_port=orthanc_http,
        dicom_port=orthanc_dicom,
        modalities={"pacsnode": ("PACSNODE", HOST, node_port)},
        extra_config={"StableAge": 1},
    ) as peer:
        load_orthanc(files, peer.dicom_port, peer.aet)
        study_ids = _wait_stable(peer.url, len({f.parents[1] for f in files}))
        console.print(f"sync: Orthanc holds {len(study_ids)} studies, {len(files)} instances")

        settings = load_settings(data_dir=root / "sync-pull", orthanc_sync={"url": peer.url})
        core = build_core(settings)
        sync = OrthancSync(settings.orthanc_sync, core.db, core.ingestor)
        started = time.perf_counter()
        report = sync.run()
        seconds = time.perf_counter() - started
        sync.close()
        core.close()
        stored = sum(s.stored for s in report.studies)
        if len(report.studies) != len(study_ids) or stored != len(files):
            raise BenchError(f"the sync fetched {len(report.studies)} studies, {stored} instances")
        runs.append(SyncRun("sync job (REST pull)", len(study_ids), len(files), seconds))
        console.print(f"  sync job: {runs[-1].studies_per_minute:.1f} studies/min")

        with pacsnode_process(
            root / "sync-push",
            dicom_port=node_port,
            http_port=node_http,
            log_path=root / "sync-push.log",
        ):
            request = urllib.request.Request(
                f"{peer.url}/modalities/pacsnode/store",
                data=json.dumps({"Resources": study_ids, "Synchronous": True}).encode(),
                method="POST",
            )
            started = time.perf_counter()
            with _http.open(request, timeout=3600) as answer:
                pushed = json.loads(answer.read())
            seconds = time.perf_counter() - started
        if pushed.get("FailedInstancesCount") or pushed.get("InstancesCount") != len(files):
            raise BenchError(f"Orthanc's push answered {pushed}")
        runs.append(SyncRun("Orthanc push (C-STORE)", len(study_ids), len(files), seconds))
        console.print(f"  Orthanc push: {runs[-1].studies_per_minute:.1f} studies/min")
    return runs


# ---------------------------------------------------------------------------------- report


def find_ratios(runs: Sequence[FindRun]) -> dict[str, float]:
    """Orthanc's median latency over pacsnode's, per kind (above 1: pacsnode is faster)."""
    median = {(r.target, r.kind): r.median_ms for r in runs}
    return {
        kind.name: median["orthanc", kind.name] / median["pacsnode", kind.name]
        for kind in QUERY_KINDS
        if ("orthanc", kind.name) in median and ("pacsnode", kind.name) in median
    }


def print_report(find: Sequence[FindRun], sync: Sequence[SyncRun]) -> None:
    if find:
        ratios = find_ratios(find)
        table = Table(title="C-FIND, STUDY level, Study Root (one SCU, one association)")
        for column in ("query", "target", "median ms", "p95 ms", "matches", "Orthanc/pacsnode"):
            table.add_column(column, justify="left" if column in ("query", "target") else "right")
        for kind in QUERY_KINDS:
            for run in (r for r in find if r.kind == kind.name):
                table.add_row(
                    kind.name,
                    run.target,
                    f"{run.median_ms:.1f}",
                    f"{run.p95_ms:.1f}",
                    f"{run.mean_matches:.1f}",
                    f"{ratios[kind.name]:.2f}" if run.target == "pacsnode" else "",
                )
        console.print(table)
    if sync:
        table = Table(title="Orthanc -> pacsnode")
        for column in ("method", "studies", "instances", "seconds", "studies/min", "inst/s"):
            table.add_column(column, justify="left" if column == "method" else "right")
        for pull in sync:
            table.add_row(
                pull.method,
                str(pull.studies),
                str(pull.instances),
                f"{pull.seconds:.1f}",
                f"{pull.studies_per_minute:.1f}",
                f"{pull.instances_per_s:.1f}",
            )
        console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.qr", description=__doc__)
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=100, help="queries per kind and target")
    parser.add_argument("--sync-instances-approx", type=int, default=2000)
    parser.add_argument("--skip-find", action="store_true")
    parser.add_argument("--skip-sync", action="store_true")
    parser.add_argument("--out", type=Path, help="write all figures as JSON here")
    parser.add_argument("--keep-data", type=Path, help="keep the run's folders under DIR")
    args = parser.parse_args(argv)

    root = args.keep_data or Path(tempfile.mkdtemp(prefix="bench-qr-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        find = [] if args.skip_find else run_find(args, root)
        sync = [] if args.skip_sync else run_sync(args, root)
    finally:
        if args.keep_data is None:
            shutil.rmtree(root, ignore_errors=True)
    print_report(find, sync)
    if args.out:
        report = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "find": [asdict(r) for r in find],
            "find_orthanc_over_pacsnode": find_ratios(find),
            "sync": [{**asdict(r), "studies_per_minute": r.studies_per_minute} for r in sync],
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
