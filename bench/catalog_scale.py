"""Does the node stay fast as its catalog grows? A node on a bulk-loaded catalog of 1,000,000
instances (bench/catalog_gen.py) against a node on an empty one, on SQLite and PostgreSQL.
See bench/README.md.

    python -m bench.catalog_scale [--backend sqlite postgresql] [--studies 10000]
                                  [--ingest-instances 600] [--rounds 2] [--queries 100]

Measured on a node started on each catalog (``pacsnode serve``, de-identification on):

- ingest: dcmtk ``storescu`` (one association, ``TCP_NODELAY=1``) pushes new synthetic
  instances (``tests/synthetic.py``, 256x256 CT/MR, a new seed each round so they are new
  to both catalogs), into the large catalog and into an empty one, alternately; instances/s
  and the node's CPU per instance;
- QIDO-RS (studies by PatientID, by a 30-day StudyDate range, by modality, by a fuzzy name;
  a study's series; a series' instances), study ``/metadata`` and the export preview
  (``POST /api/cohorts/preview``), each ``--queries`` times on targets picked at random:
  median and 95th percentile latency, the node's CPU per request;
- C-FIND at STUDY level, the query kinds of bench/qr.py (``bench.qr.measure_find``).

The large catalog is kept in ``bench/.cache/catalog_scale/<backend>-<studies>`` (and the
PostgreSQL database ``bench_catalog_<studies>``) and reused while its study count matches;
``--drop`` removes the PostgreSQL databases afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import requests
from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.auth import cpu_seconds
from bench.catalog_gen import Shape, load
from bench.qr import StudyKeys, measure_find
from config import load_settings
from tests.peers import NodeProcess, free_ports, pacsnode_process, storescu
from tests.synthetic import SyntheticSpec, generate

CACHE: Final = Path(__file__).resolve().parent / ".cache" / "catalog_scale"
POSTGRES_URL: Final = os.environ.get(
    "PACSNODE_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"
)
DATABASE: Final = "bench_catalog"
"""PostgreSQL databases: ``bench_catalog_<studies>`` (large) and ``bench_catalog_empty``."""
console = Console(width=160)


class BenchError(RuntimeError):
    """A push or a request failed."""


# ----------------------------------------------------------------------------- catalogs


def _postgres_url(database: str, *, fresh: bool) -> str:
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        exists = connection.scalar(
            text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": database}
        )
        if exists and fresh:
            connection.execute(text(f'DROP DATABASE "{database}" WITH (FORCE)'))
        if fresh or not exists:
            connection.execute(text(f'CREATE DATABASE "{database}"'))
    admin.dispose()
    return make_url(POSTGRES_URL).set(database=database).render_as_string(False)


def drop_postgres(studies: int) -> None:
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        for database in (f"{DATABASE}_{studies}", f"{DATABASE}_empty"):
            connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    admin.dispose()


def _studies_held(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.scalar(text("SELECT count(*) FROM study")) or 0)
    except Exception:
        return -1  # no schema yet
    finally:
        engine.dispose()


def large_catalog(backend: str, shape: Shape) -> tuple[Path, str]:
    """The data folder and catalog URL of the bulk-loaded catalog (built once, kept).

    The bench's own ingest adds a few studies to it; a catalog within 1 % of the size is
    reused.
    """
    data_dir = CACHE / f"{backend}-{shape.studies}"
    database = f"{DATABASE}_{shape.studies}"
    if backend == "sqlite":
        url = f"sqlite:///{data_dir / 'catalog.sqlite'}"
    else:
        url = _postgres_url(database, fresh=False)
    held = _studies_held(url)
    if not shape.studies <= held <= shape.studies * 1.01:
        if backend == "sqlite":
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            url = _postgres_url(database, fresh=True)
            shutil.rmtree(data_dir, ignore_errors=True)
        seconds = load(load_settings(data_dir=data_dir, database_url=url), shape)
        console.print(f"{backend}: {shape.instances:,} instances bulk-loaded in {seconds:.0f} s")
    return data_dir, url


def empty_catalog(backend: str, root: Path) -> tuple[Path, str]:
    data_dir = root / f"empty-{backend}"
    if backend == "sqlite":
        return data_dir, f"sqlite:///{data_dir / 'catalog.sqlite'}"
    return data_dir, _postgres_url(f"{DATABASE}_empty", fresh=True)


@contextmanager
def serving(data_dir: Path, url: str, log: Path) -> Iterator[NodeProcess]:
    dicom_port, http_port = free_ports(2)
    env = {"PACSNODE_DATABASE_URL": url}
    with pacsnode_process(
        data_dir, dicom_port=dicom_port, http_port=http_port, env=env, log_path=log
    ) as node:
        yield node


# ------------------------------------------------------------------------------- ingest


@dataclass(frozen=True)
class IngestRun:
    backend: str
    catalog: str
    round: int
    instances: int
    per_second: float
    cpu_ms: float


def ingest(
    node: NodeProcess, files: list[Path], backend: str, catalog: str, round_: int
) -> IngestRun:
    subprocess.run(["sync"], check=True)
    before = cpu_seconds(node.pid)
    result = storescu(files, port=node.dicom_port, aet_called=node.ae_title)
    if not result.ok:
        raise BenchError(f"storescu failed:\n{result.output}")
    cpu = (cpu_seconds(node.pid) - before) * 1000 / len(files)
    run = IngestRun(backend, catalog, round_, len(files), len(files) / result.elapsed, cpu)
    console.print(f"  ingest into {catalog}: {run.per_second:.1f} inst/s, {cpu:.1f} ms CPU")
    return run


def ingest_files(root: Path, instances: int, seed: int) -> list[Path]:
    """New synthetic instances (256x256 CT/MR), about ``instances`` of them."""
    patients = max(1, instances // 30)
    spec = SyntheticSpec(
        patients=patients, ct_slices=10, mr_slices=10, rows=256, columns=256, seed=seed
    )
    return list(generate(root / f"ingest-{seed}", spec).files)


# ------------------------------------------------------------------------------ queries


@dataclass(frozen=True)
class Timing:
    backend: str
    catalog: str
    what: str
    median_ms: float
    p95_ms: float
    cpu_ms: float
    matches: float


@dataclass(frozen=True)
class Sample:
    """What requests ask about: studies and one series of each, from the catalog itself."""

    studies: list[StudyKeys]
    series: dict[str, str]


def sample(url: str, count: int, seed: int) -> Sample:
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT s.study_instance_uid, p.patient_id, coalesce(p.patient_name, ''), "
                "coalesce(s.accession_number, ''), coalesce(s.study_date, ''), "
                "(SELECT min(series_instance_uid) FROM series WHERE study_pk = s.id) "
                "FROM study s JOIN patient p ON s.patient_pk = p.id"
            )
        ).all()
    engine.dispose()
    picked = random.Random(seed).sample(rows, min(count, len(rows)))
    return Sample([StudyKeys(*row[:5]) for row in picked], {row[0]: row[5] for row in picked})


def _date_range(day: str) -> str:
    start = time.strptime(day, "%Y%m%d")
    end = time.localtime(time.mktime(start) + 30 * 86400)
    return f"{day}-{time.strftime('%Y%m%d', end)}"


Request = tuple[str, str, dict[str, Any] | None]
"""(method, path, JSON body)."""

INCLUDE: Final = "00081030,00080061,00201206,00201208"
REQUESTS: Final[dict[str, Callable[[StudyKeys, Sample], Request]]] = {
    "QIDO studies PatientID": lambda s, _: (
        "GET",
        f"/dicom-web/studies?PatientID={s.patient_id}",
        None,
    ),
    "QIDO studies 30-day StudyDate": lambda s, _: (
        "GET",
        f"/dicom-web/studies?StudyDate={_date_range(s.date)}&includefield={INCLUDE}",
        None,
    ),
    "QIDO studies modality, limit 100": lambda s, _: (
        "GET",
        f"/dicom-web/studies?ModalitiesInStudy={'CT' if int(s.date) % 2 else 'MR'}"
        f"&limit=100&includefield={INCLUDE}",
        None,
    ),
    "QIDO studies fuzzy name": lambda s, _: (
        "GET",
        f"/dicom-web/studies?PatientName={s.patient_name[:5].lower()}&fuzzymatching=true",
        None,
    ),
    "QIDO series of a study": lambda s, _: (
        "GET",
        f"/dicom-web/studies/{s.study_uid}/series",
        None,
    ),
    "QIDO instances of a series": lambda s, sample: (
        "GET",
        f"/dicom-web/studies/{s.study_uid}/series/{sample.series[s.study_uid]}/instances",
        None,
    ),
    "study /metadata": lambda s, _: ("GET", f"/dicom-web/studies/{s.study_uid}/metadata", None),
    "export preview, one modality": lambda s, _: (
        "POST",
        "/api/cohorts/preview",
        {"filters": {"modalities": ["CT" if int(s.date) % 2 else "MR"]}},
    ),
    "export preview, modality + 1 year": lambda s, _: (
        "POST",
        "/api/cohorts/preview",
        {
            "filters": {
                "modalities": ["MR"],
                "study_date_from": f"{s.date[:4]}-01-01",
                "study_date_to": f"{s.date[:4]}-12-31",
            }
        },
    ),
}


def measure(
    node: NodeProcess, picked: Sample, backend: str, catalog: str, queries: int
) -> list[Timing]:
    session = requests.Session()
    session.trust_env = False
    timings = []
    for what, build in REQUESTS.items():
        targets = picked.studies[:queries]
        heavy = what.startswith("export")
        if heavy:
            targets = targets[: max(5, queries // 5)]
        for study in targets[:3]:  # warm-up
            _call(session, node, build(study, picked))
        spent, matches = [], []
        before = cpu_seconds(node.pid)
        for study in targets:
            started = time.perf_counter()
            answer = _call(session, node, build(study, picked))
            spent.append((time.perf_counter() - started) * 1000)
            matches.append(_matches(answer))
        cpu = (cpu_seconds(node.pid) - before) * 1000 / len(targets)
        spent.sort()
        timing = Timing(
            backend,
            catalog,
            what,
            statistics.median(spent),
            spent[min(len(spent) - 1, int(0.95 * len(spent)))],
            cpu,
            statistics.mean(matches),
        )
        timings.append(timing)
        console.print(
            f"  {catalog} {what}: {timing.median_ms:.1f} ms (p95 {timing.p95_ms:.1f}), "
            f"{timing.matches:.0f} matches"
        )
    return timings


def _call(session: requests.Session, node: NodeProcess, request: Request) -> Any:
    method, path, body = request
    answer = session.request(method, node.url + path, json=body, timeout=600)
    if answer.status_code != 200:
        raise BenchError(f"{method} {path}: {answer.status_code} {answer.text[:200]}")
    return answer.json()


def _matches(answer: Any) -> float:
    if isinstance(answer, list):
        return len(answer)
    return float(answer.get("series", 0)) if isinstance(answer, dict) else 0.0


def find(
    node: NodeProcess, picked: Sample, backend: str, catalog: str, queries: int
) -> list[Timing]:
    before = cpu_seconds(node.pid)
    runs = measure_find(catalog, node.dicom_port, node.ae_title, picked.studies, queries, 1)
    cpu = (cpu_seconds(node.pid) - before) * 1000 / (len(runs) * queries)  # mean of all kinds
    return [
        Timing(backend, catalog, f"C-FIND {r.kind}", r.median_ms, r.p95_ms, cpu, r.mean_matches)
        for r in runs
    ]


# --------------------------------------------------------------------------------- main


def run_backend(
    backend: str, args: argparse.Namespace, root: Path
) -> tuple[list[IngestRun], list[Timing]]:
    shape = Shape(studies=args.studies)
    large = large_catalog(backend, shape)
    empty = empty_catalog(backend, root)
    catalogs = {"large": large, "empty": empty}
    ingests: list[IngestRun] = []
    timings: list[Timing] = []
    for round_ in range(args.rounds):
        files = ingest_files(root, args.ingest_instances, seed=int(time.time()) % 100_000 + round_)
        for name in ("empty", "large") if round_ % 2 == 0 else ("large", "empty"):
            data_dir, url = catalogs[name]
            with serving(data_dir, url, root / f"{backend}-{name}.log") as node:
                ingests.append(ingest(node, files, backend, name, round_))
        shutil.rmtree(files[0].parents[3], ignore_errors=True)
    for name in ("large", "empty"):
        data_dir, url = catalogs[name]
        picked = sample(url, args.queries, seed=7)
        with serving(data_dir, url, root / f"{backend}-{name}-q.log") as node:
            timings += measure(node, picked, backend, name, args.queries)
            timings += find(node, picked, backend, name, min(args.queries, len(picked.studies)))
    return ingests, timings


def report(ingests: Sequence[IngestRun], timings: Sequence[Timing], load_avg: str) -> None:
    table = Table(title="ingest (storescu, 1 association), instances/s and CPU ms/instance")
    for column in ("catalog", "target", "rounds inst/s", "median inst/s", "CPU ms"):
        table.add_column(column)
    for backend in sorted({r.backend for r in ingests}):
        medians = {}
        for name in ("empty", "large"):
            runs = [r for r in ingests if r.backend == backend and r.catalog == name]
            medians[name] = statistics.median(r.per_second for r in runs)
            table.add_row(
                backend,
                name,
                " / ".join(f"{r.per_second:.1f}" for r in runs),
                f"{medians[name]:.1f}",
                f"{statistics.median(r.cpu_ms for r in runs):.1f}",
            )
        console.print(
            f"{backend}: large / empty = {medians['large'] / medians['empty']:.2f} (target >= 0.80)"
        )
    console.print(table)
    table = Table(title="requests: median (p95) ms, node CPU ms/request, matches")
    for column in ("catalog", "request", "large", "CPU", "matches", "empty", "CPU", "matches"):
        table.add_column(column)
    for backend in sorted({t.backend for t in timings}):
        for what in dict.fromkeys(t.what for t in timings if t.backend == backend):
            pair = {t.catalog: t for t in timings if t.backend == backend and t.what == what}
            large, empty = pair["large"], pair["empty"]
            table.add_row(
                backend,
                what,
                f"{large.median_ms:.1f} ({large.p95_ms:.1f})",
                f"{large.cpu_ms:.1f}",
                f"{large.matches:.0f}",
                f"{empty.median_ms:.1f} ({empty.p95_ms:.1f})",
                f"{empty.cpu_ms:.1f}",
                f"{empty.matches:.0f}",
            )
    console.print(table)
    console.print(f"load average before the run: {load_avg}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--backend", nargs="+", choices=("sqlite", "postgresql"), default=["sqlite", "postgresql"]
    )
    parser.add_argument("--studies", type=int, default=Shape.studies)
    parser.add_argument("--ingest-instances", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--drop", action="store_true", help="drop the PostgreSQL databases after")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    load_avg = Path("/proc/loadavg").read_text().strip()
    ingests: list[IngestRun] = []
    timings: list[Timing] = []
    with tempfile.TemporaryDirectory(prefix="catalog-scale-") as tmp:
        try:
            for backend in args.backend:
                more_ingests, more_timings = run_backend(backend, args, Path(tmp))
                ingests += more_ingests
                timings += more_timings
        finally:
            if args.drop and "postgresql" in args.backend:
                drop_postgres(args.studies)
    report(ingests, timings, load_avg)
    if args.out:
        args.out.write_text(
            json.dumps(
                {"ingest": [asdict(r) for r in ingests], "requests": [asdict(t) for t in timings]},
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
