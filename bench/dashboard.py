"""The dashboard's API calls on a large catalog: ``/api/stats`` (overview), the dataset API
and the study list's first page (QIDO-RS), on SQLite and PostgreSQL. See bench/README.md.

    python -m bench.dashboard [--studies 10000] [--instances 1000000] [--requests 50]
                              [--backend sqlite postgresql]

The catalog is written straight into the tables (SQLAlchemy Core ``executemany``; COPY for
the instances on PostgreSQL), not ingested: the figures are about reading. It is kept under
``bench/.cache/dashboard`` (SQLite) or in the database ``pacsnode_bench_dashboard``
(PostgreSQL, ``PACSNODE_TEST_POSTGRES_URL``'s server) and reused while its size matches.
A node serves it (no authentication: the caller sees every project; ``--project`` also
measures a caller scoped to one project through an API token). Reported per call: median
latency and the node's CPU per request. Targets (issue 13): the overview under 200 ms, the
study list's first page under 100 ms.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import requests
from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine, func, insert, select, text
from sqlalchemy.engine import Connection, make_url

from bench.auth import cpu_seconds
from catalog.models import (
    Instance,
    Label,
    Patient,
    Report,
    ReportLink,
    Series,
    Study,
    StudyPatient,
    StudyProject,
)
from config import load_settings
from node.app import build_core
from tests.peers import NodeProcess, free_port, pacsnode_process

CACHE: Final = Path(__file__).parent / ".cache" / "dashboard"
POSTGRES_URL: Final = os.environ.get(
    "PACSNODE_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"
)
POSTGRES_DB: Final = "pacsnode_bench_dashboard"
SEED: Final = 1313
SERIES_PER_STUDY: Final = 4
STUDIES_PER_PATIENT: Final = 5
PROJECTS: Final = ("p0", "p1", "p2", "p3")
TASKS: Final = ("lung_nodule", "liver_cancer")
PROTOCOLS: Final = {
    "CT": (("CHEST AX 1.0", "CHEST"), ("ABDOMEN PORTAL VENOUS", "ABDOMEN"), ("SCOUT", "CHEST")),
    "MR": (("T1 AX", "HEAD"), ("T2 TSE TRA", "HEAD"), ("DWI b1000", "HEAD"), ("FLAIR", "HEAD")),
}
SOURCES: Final = (("dimse", "MOD_A"), ("dimse", "MOD_B"), ("folder", None), ("stow", None))
INCLUDE: Final = "00081030,00080061,00201206,00201208,00100010,00100020,00080050"
console = Console()


def _uid(*parts: int) -> str:
    return "2.25." + str(int(hashlib.sha256(repr(parts).encode()).hexdigest()[:30], 16))


def _fill(connection: Connection, studies: int, instances: int, postgres: bool) -> None:
    """Insert the synthetic catalog (deterministic, seeded)."""
    rng = random.Random(SEED)
    per_series = max(1, instances // (studies * SERIES_PER_STUDY))
    now = datetime.now(UTC)
    patients = max(1, studies // STUDIES_PER_PATIENT)
    connection.execute(
        insert(Patient),
        [
            {
                "id": p + 1,
                "patient_id": f"PSEUDO{p:07d}",
                "issuer_of_patient_id": "",
                "patient_name": f"ANON^{p}",
                "patient_name_ci": f"anon^{p}",
                "patient_birth_date": f"{rng.randint(1930, 2010)}{rng.randint(1, 12):02d}15",
                "patient_sex": rng.choice("MMFFO"),
                "created_at": now,
            }
            for p in range(patients)
        ],
    )
    study_rows, links, series_rows, labels, reports, report_links, projects = (
        [],
        [],
        [],
        [],
        [],
        [],
        [],
    )
    series_pk = 0
    for s in range(studies):
        modality = "MR" if s % 2 else "CT"
        year = rng.randint(2019, 2024)
        created = now - timedelta(days=rng.randint(0, 59), minutes=rng.randint(0, 1439))
        study_rows.append(
            {
                "id": s + 1,
                "patient_pk": s % patients + 1,
                "study_instance_uid": _uid(1, s),
                "study_date": f"{year}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
                "study_time": "101500",
                "accession_number": f"ACC{s:08d}",
                "study_description": f"{modality} EXAM",
                "study_description_ci": f"{modality.lower()} exam",
                "patient_age": f"{rng.randint(18, 90):03d}Y" if s % 5 else None,
                "modalities_in_study": modality,
                "source": _source(*SOURCES[(s + 1) % len(SOURCES)]),
                "number_of_series": SERIES_PER_STUDY,
                "number_of_instances": SERIES_PER_STUDY * per_series,
                "total_bytes": SERIES_PER_STUDY * per_series * 524_288,
                "created_at": created,
                "updated_at": created,
            }
        )
        links.append({"study_pk": s + 1, "patient_pk": s % patients + 1})
        projects.append({"study_pk": s + 1, "project": PROJECTS[s % len(PROJECTS)]})
        for n in range(SERIES_PER_STUDY):
            series_pk += 1
            description, body_part = PROTOCOLS[modality][n % len(PROTOCOLS[modality])]
            series_rows.append(
                {
                    "id": series_pk,
                    "study_pk": s + 1,
                    "series_instance_uid": _uid(2, s, n),
                    "modality": modality,
                    "series_number": n + 1,
                    "series_description": description,
                    "series_description_ci": description.lower(),
                    "body_part_examined": body_part,
                    "number_of_instances": per_series,
                    "created_at": created,
                }
            )
        reports.append(
            {
                "id": s + 1,
                "content_sha256": hashlib.sha256(b"%d" % s).hexdigest(),
                "report_type": "radiology",
                "patient_id": f"PSEUDO{s % patients:07d}",
                "findings": "",
                "impression": "",
                "source_door": "file",
                "rules_version": "bench",
                "received_at": created,
            }
        )
        report_links.append(
            {"report_pk": s + 1, "study_pk": s + 1, "method": "accession", "confidence": 1.0}
        )
        for task in TASKS:
            labels.append(
                {
                    "study_pk": s + 1,
                    "task": task,
                    "value": rng.choice((1, 0, 0, 2, -1, -1)),
                    "confidence": 0.9,
                    "report_pk": s + 1,
                    "rule": "bench",
                    "span_text": "",
                    "needs_review": False,
                    "review_status": "auto",
                    "rules_version": "bench",
                    "updated_at": created,
                }
            )
    for model, rows in (
        (Study, study_rows),
        (StudyPatient, links),
        (StudyProject, projects),
        (Series, series_rows),
        (Report, reports),
        (ReportLink, report_links),
        (Label, labels),
    ):
        connection.execute(insert(model), rows)
    columns = (
        "series_pk",
        "sop_instance_uid",
        "sop_class_uid",
        "instance_number",
        "transfer_syntax_uid",
        "blob_key",
        "sha256",
        "size",
        "version",
        "metadata_json",
        "source_door",
        "source_aet",
        "received_at",
    )

    def instance_rows() -> Iterator[tuple[Any, ...]]:
        for series in series_rows:
            door, aet = SOURCES[series["study_pk"] % len(SOURCES)]
            for i in range(per_series):
                key = f"{series['id']:08x}{i:06x}"
                yield (
                    series["id"],
                    f"{series['series_instance_uid']}.{i}",
                    "1.2.840.10008.5.1.4.1.1.2",
                    i + 1,
                    "1.2.840.10008.1.2.1",
                    key,
                    key.ljust(64, "0"),
                    524_288,
                    1,
                    "{}",
                    door,
                    aet,
                    series["created_at"],
                )

    if postgres:
        raw: Any = connection.connection.driver_connection
        with (
            raw.cursor() as cursor,
            cursor.copy(f"COPY instance ({', '.join(columns)}) FROM STDIN") as copy,
        ):
            for row in instance_rows():
                copy.write_row(row)
    else:
        batch: list[dict[str, Any]] = []
        for row in instance_rows():
            batch.append(dict(zip(columns, row, strict=True)))
            if len(batch) == 50_000:
                connection.execute(insert(Instance), batch)
                batch = []
        if batch:
            connection.execute(insert(Instance), batch)


def _source(door: str, aet: str | None) -> str:
    """A study's source as the writer keeps it (catalog.writer)."""
    return f"{door}:{aet}" if aet else door


def prepare(backend: str, studies: int, instances: int) -> tuple[Path, str]:
    """The data folder and catalog URL of a node over the catalog (built once, cached)."""
    data_dir = CACHE / backend
    if backend == "sqlite":
        url = f"sqlite:///{data_dir / 'catalog.sqlite'}"
    else:
        admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            if not connection.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": POSTGRES_DB}
            ):
                connection.execute(text(f'CREATE DATABASE "{POSTGRES_DB}"'))
        admin.dispose()
        url = make_url(POSTGRES_URL).set(database=POSTGRES_DB).render_as_string(False)
    core = build_core(load_settings(data_dir=data_dir, database_url=url, fsync=False))
    core.close()  # the data folder, its keys and the migrated schema
    engine = create_engine(url)
    with engine.begin() as connection:
        held = connection.scalar(select(func.count()).select_from(Study))
        held_instances = connection.scalar(select(func.sum(Study.number_of_instances)))
        if held != studies or held_instances != instances:
            if held:
                raise SystemExit(
                    f"the cached catalog of {backend} holds {held} studies: remove "
                    f"{data_dir} (and the database {POSTGRES_DB}) to build another size"
                )
            started = time.perf_counter()
            _fill(connection, studies, instances, backend == "postgresql")
            console.print(f"{backend}: catalog written in {time.perf_counter() - started:.0f} s")
    with engine.connect() as connection:
        if backend == "sqlite":
            connection.execute(text("ANALYZE"))
        else:
            # as autovacuum leaves a settled table (index-only scans need the visibility map)
            connection.execution_options(isolation_level="AUTOCOMMIT").execute(
                text("VACUUM ANALYZE")
            )
    engine.dispose()
    return data_dir, url


def measure(
    running: NodeProcess, session: requests.Session, paths: list[str]
) -> tuple[float, float]:
    """Median milliseconds of ``paths`` and the node's CPU milliseconds per request."""
    for path in paths[:5]:  # warm-up (caches, connections)
        session.get(running.url + path, timeout=120).raise_for_status()
    timings = []
    cpu_before = cpu_seconds(running.pid)
    for path in paths:
        started = time.perf_counter()
        answer = session.get(running.url + path, timeout=120)
        timings.append((time.perf_counter() - started) * 1000)
        answer.raise_for_status()
    return statistics.median(timings), (cpu_seconds(running.pid) - cpu_before) * 1000 / len(paths)


def _cli(data_dir: Path, url: str, *args: str) -> str:
    """``pacsnode <args>`` on the catalog; its output."""
    done = subprocess.run(
        [sys.executable, "-m", "node", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PACSNODE_DATABASE_URL": url},
    )
    return done.stdout.strip()


@contextmanager
def serving(data_dir: Path, url: str) -> Iterator[NodeProcess]:
    env = {"PACSNODE_DATABASE_URL": url, "PACSNODE_ACCESS__METHODS": '["token"]'}
    with pacsnode_process(data_dir, dicom_port=free_port(), http_port=free_port(), env=env) as n:
        yield n


CALLS: Final = (
    ("overview", "/api/stats"),
    ("overview, 2 filters", "/api/stats?modality=MR&sex=F"),
    ("overview, label filter", "/api/stats?label=lung_nodule:1&age=40"),
    ("datasets", "/api/stats/tasks"),
    ("dataset", "/api/stats/tasks/lung_nodule"),
    ("study list page 1", f"/dicom-web/studies?limit=25&includefield={INCLUDE}"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument(
        "--backend", nargs="+", choices=("sqlite", "postgresql"), default=["sqlite", "postgresql"]
    )
    args = parser.parse_args(argv)
    if args.instances % (args.studies * SERIES_PER_STUDY):
        parser.error(f"--instances must be a multiple of {SERIES_PER_STUDY} x --studies")
    results: list[tuple[str, str, str, float, float]] = []
    for backend in args.backend:
        data_dir, url = prepare(backend, args.studies, args.instances)
        run = time.time_ns()
        admin = _cli(data_dir, url, "tokens", "create", f"bench-all-{run}", "--role", "admin")
        scoped = _cli(
            data_dir,
            url,
            "tokens",
            "create",
            f"bench-p0-{run}",
            "--role",
            "admin",
            "--project",
            "p0",
        )
        with serving(data_dir, url) as running:
            for caller, token in (("all", admin), ("p0", scoped)):
                session = requests.Session()
                session.trust_env = False
                session.headers["Authorization"] = f"Bearer {token}"
                for name, path in CALLS:
                    median, cpu = measure(running, session, [path] * args.requests)
                    results.append((backend, caller, name, median, cpu))
        _cli(data_dir, url, "tokens", "revoke", f"bench-all-{run}")
        _cli(data_dir, url, "tokens", "revoke", f"bench-p0-{run}")
    _report(results, args)
    return 0


def _report(results: list[tuple[str, str, str, float, float]], args: argparse.Namespace) -> None:
    table = Table(
        title=f"dashboard API ({args.studies} studies, {args.instances} instances, "
        f"{args.requests} requests each)"
    )
    for column in ("catalog", "caller", "call", "median ms", "CPU ms"):
        table.add_column(column, justify="right" if "ms" in column else "left")
    for backend, caller, name, median, cpu in results:
        table.add_row(backend, caller, name, f"{median:.1f}", f"{cpu:.1f}")
    console.print(table)
    console.print(
        "caller: all (every project) or p0 (an API token of one project). "
        "targets: overview < 200 ms, study list page 1 < 100 ms"
    )


if __name__ == "__main__":
    sys.exit(main())
