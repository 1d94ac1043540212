"""Bulk-load a synthetic catalog the size of a hospital archive, with the rows the node itself
writes for instances received over C-STORE. See bench/README.md.

    python -m bench.catalog_gen --data-dir DIR [--database-url URL] [--studies 10000]
                                [--series-per-study 4] [--instances-per-series 25]

Nothing is pushed: each series is one data set built from a de-identified ``tests.synthetic``
instance (the node's own de-identification, in a throw-away folder) with the patient, study
and series values of the generated catalog set on it, read by the node's own
:func:`catalog.extract` and :func:`catalog.to_dicom_json`; its instances differ only in SOP
Instance UID and Instance Number, put into the series' DICOM JSON as text. Rows go in with
SQLAlchemy Core ``executemany`` (COPY on PostgreSQL for the instance and change tables):
patient, study (with its counts, modalities and source), study_patient, study_project,
series, instance (DICOM JSON, content hash), the change log, the vault rows de-identification
writes (encrypted with the node's vault key) and one aggregated store audit event per study.
The catalog's blobs are not written: its instances reference files that do not exist.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from cryptography.fernet import Fernet
from pydicom import dcmwrite
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from sqlalchemy import Connection, Table, create_engine, insert, text

from access.projects import ProjectRules
from catalog import InstanceRecord, extract, to_dicom_json
from catalog.models import (
    AuditEvent,
    AuditEventStudy,
    Change,
    ChangeType,
    Instance,
    Patient,
    Series,
    Study,
    StudyPatient,
    StudyProject,
    VaultEntry,
)
from catalog.normalize import fold, name_key
from config import Settings, load_settings
from deid import Deidentifier
from deid.pseudonym import Pseudonymizer
from deid.secrets import load_secrets
from ingest.identity import binary_values
from ingest.pipeline import parse
from node.app import build_core
from tests.synthetic import SyntheticSpec, make_instance

DOOR: Final = "dimse"
CALLING_AET: Final = "MODALITY"
CALLED_AET: Final = "PACSNODE"
SOP_PLACEHOLDER: Final = "9.99.999.9999"
"""The SOP Instance UID of a series' data set; each instance's replaces it in the JSON."""
_BATCH: Final = 20_000
_SYNTHETIC: Final = SyntheticSpec(patients=1, ct_slices=1, mr_slices=1, rows=64, columns=64)
_KINDS: Final = (("CT", 0, 0), ("MR", 1, 0), ("MR", 1, 1))
"""(modality, synthetic study index, synthetic series index) of the templates."""
_SERIES_DESCRIPTIONS: Final = {
    "CT": ("CHEST AX 1.0", "ABDOMEN PORTAL VENOUS", "CHEST AX 5.0", "SCOUT"),
    "MR": ("T2 TSE TRA", "T1 MPRAGE SAG", "DWI b1000", "FLAIR AX"),
}
_STUDY_DAY: Final = (  # dates of the template set to the study's day
    "SeriesDate",
    "ContentDate",
    "AcquisitionDate",
    "InstanceCreationDate",
    "PerformedProcedureStepStartDate",
)
_STUDY_DESCRIPTIONS: Final = {
    "CT": ("CT CHEST W/O CONTRAST", "CT ABDOMEN PELVIS W CONTRAST", "CT HEAD"),
    "MR": ("MRI BRAIN W/O CONTRAST", "MRI KNEE", "MRI LUMBAR SPINE"),
}


@dataclass(frozen=True)
class Shape:
    """How big the catalog is; every study has the same number of series and instances."""

    studies: int = 10_000
    series_per_study: int = 4
    instances_per_series: int = 25
    studies_per_patient: int = 5
    seed: int = 14

    @property
    def instances(self) -> int:
        return self.studies * self.series_per_study * self.instances_per_series

    @property
    def patients(self) -> int:
        return -(-self.studies // self.studies_per_patient)


@dataclass(frozen=True)
class Template:
    """A de-identified instance as the node holds it, and how it was de-identified."""

    dataset: Dataset
    deid_method: str | None
    deid_flag: str | None
    binary_tail: bytes
    """What :func:`ingest.identity.content_sha256` hashes after the DICOM JSON."""
    size: int
    """Bytes of its file."""


@dataclass(frozen=True)
class StudyPlan:
    """The generated values of one study (pseudonyms, as de-identification leaves them)."""

    index: int
    patient_index: int
    patient_id: str
    patient_sex: str
    patient_age: str
    study_uid: str
    accession: str
    study_date: str
    study_time: str
    study_description: str
    modality: str
    created_at: datetime
    series_uids: tuple[str, ...] = field(default=())


def make_templates(deid: Deidentifier) -> dict[tuple[str, int], Template]:
    """One de-identified instance per (modality, series kind), from ``tests.synthetic``."""
    templates = {}
    for modality, study, series in _KINDS:
        buffer = io.BytesIO()
        dcmwrite(
            buffer, make_instance(_SYNTHETIC, study=study, series=series), enforce_file_format=True
        )
        done = deid.deidentify(parse(buffer.getvalue()))
        out = io.BytesIO()
        dcmwrite(out, done.dataset, enforce_file_format=True)
        templates[(modality, series)] = Template(
            done.dataset, done.method, done.flag, binary_values(done.dataset), len(out.getvalue())
        )
    return templates


def plan_studies(shape: Shape, pseudonyms: Pseudonymizer) -> Iterator[StudyPlan]:
    """The studies of ``shape`` in the order they are loaded (deterministic)."""
    rng = random.Random(shape.seed)
    start = datetime(2026, 1, 1, tzinfo=UTC) - timedelta(days=730)
    step = timedelta(days=730) / max(1, shape.studies)
    for index in range(shape.studies):
        patient = index % shape.patients
        modality = "MR" if index % 2 else "CT"
        day = datetime(2015, 1, 1) + timedelta(days=rng.randrange(0, 10 * 365))
        patient_id = pseudonyms.patient_id(f"BENCH{patient:07d}")
        uids = tuple(
            pseudonyms.uid(f"bench.{shape.seed}.{index}.{n}") for n in range(shape.series_per_study)
        )
        yield StudyPlan(
            index=index,
            patient_index=patient,
            patient_id=patient_id,
            patient_sex="MF"[patient % 2],
            patient_age=f"{20 + (patient * 7 + index // shape.patients) % 70:03d}Y",
            study_uid=pseudonyms.uid(f"bench.{shape.seed}.{index}"),
            accession=pseudonyms.accession_number(f"ACC{index:09d}"),
            study_date=day.strftime("%Y%m%d"),
            study_time=f"{rng.randrange(7, 19):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}",
            study_description=rng.choice(_STUDY_DESCRIPTIONS[modality]),
            modality=modality,
            created_at=start + step * index,
            series_uids=uids,
        )


def series_dataset(template: Template, plan: StudyPlan, series: int) -> Dataset:
    """The data set behind every instance of a series: ``template`` with the study's values.

    Its SOP Instance UID is :data:`SOP_PLACEHOLDER` and its Instance Number 1;
    :func:`instance_dataset` gives an instance's own.
    """
    ds = _clone(template.dataset)
    values = {
        "PatientID": plan.patient_id,
        "PatientName": plan.patient_id,  # the pseudo name is the pseudo ID (deid.pseudonym)
        "PatientSex": plan.patient_sex,
        "PatientAge": plan.patient_age,
        "StudyInstanceUID": plan.study_uid,
        "AccessionNumber": plan.accession,
        "StudyDate": plan.study_date,
        "StudyTime": plan.study_time,
        "StudyDescription": plan.study_description,
        "SeriesInstanceUID": plan.series_uids[series],
        "SeriesNumber": str(series + 1),
        "SeriesDescription": _SERIES_DESCRIPTIONS[plan.modality][series % 4],
        "SOPInstanceUID": SOP_PLACEHOLDER,
        "InstanceNumber": "1",
    }
    for keyword in _STUDY_DAY:
        if keyword in template.dataset:
            values[keyword] = plan.study_date
    for keyword, value in values.items():
        ds.add_new(keyword, dictionary_VR(keyword), value)
    return ds


def instance_dataset(series_ds: Dataset, sop_uid: str, number: int) -> Dataset:
    """One instance of a series (what the bulk load's rows stand for; slow, for tests)."""
    ds = _clone(series_ds)
    ds.add_new("SOPInstanceUID", "UI", sop_uid)
    ds.add_new("InstanceNumber", "IS", str(number))
    return ds


def _clone(source: Dataset) -> Dataset:
    """A data set sharing ``source``'s (still encoded) elements; ``add_new`` on it replaces
    an element without touching ``source``."""
    ds = Dataset(dict(source.items()))
    ds.file_meta = source.file_meta
    implicit, little = source.original_encoding
    ds.set_original_encoding(implicit, little, source.original_character_set)
    return ds


def sop_uid(plan: StudyPlan, series: int, number: int) -> str:
    """A stored SOP Instance UID (``2.25.`` form, as de-identification remaps them)."""
    digest = hashlib.sha256(f"{plan.series_uids[series]}/{number}".encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def blob_key(sop: str) -> str:
    """A blob key of the form the blob store gives (32 hex digits); no file behind it."""
    return hashlib.md5(sop.encode(), usedforsecurity=False).hexdigest()


_NUMBER_ONE: Final = '"00200013":{"vr":"IS","Value":[1]}'


@dataclass
class _Rows:
    """Rows of one batch, per table."""

    by_table: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, table: str, row: dict[str, Any]) -> None:
        self.by_table.setdefault(table, []).append(row)

    def size(self) -> int:
        return sum(len(rows) for rows in self.by_table.values())


class Generator:
    """Makes the rows of a catalog of ``shape`` as the node's writer would store them."""

    def __init__(
        self,
        shape: Shape,
        settings: Settings,
        templates: dict[tuple[str, int], Template],
    ) -> None:
        secrets = load_secrets(settings.secrets_root)
        self.shape = shape
        self.pseudonyms = Pseudonymizer(
            secrets.hmac_key, (settings.deid.date_shift_min_days, settings.deid.date_shift_max_days)
        )
        self.fernet = Fernet(secrets.vault_key.get_secret_value())
        self.templates = templates
        rules = ProjectRules(settings.access)
        self.projects = rules.projects_for(
            door=DOOR, calling_aet=CALLING_AET, called_aet=CALLED_AET, attribute=lambda _: ""
        )
        self._ids: dict[str, int] = {}
        self._patients: dict[int, int] = {}

    def _next(self, table: str) -> int:
        self._ids[table] += 1
        return self._ids[table]

    def batches(self) -> Iterator[_Rows]:
        """Rows in load order, about :data:`_BATCH` at a time (the same on every call)."""
        self._ids = dict.fromkeys(("patient", "study", "series", "instance", "change", "audit"), 0)
        self._patients = {}
        rows = _Rows()
        for plan in plan_studies(self.shape, self.pseudonyms):
            self._study_rows(plan, rows)
            if rows.size() >= _BATCH:
                yield rows
                rows = _Rows()
        if rows.size():
            yield rows

    def record(self, plan: StudyPlan, series: int) -> tuple[Template, InstanceRecord]:
        """The template and the record of a series' data set (instance 1 is its own)."""
        template = self.templates[(plan.modality, 0 if plan.modality == "CT" else series % 2)]
        ds = series_dataset(template, plan, series)
        metadata = to_dicom_json(ds, plan.study_uid, plan.series_uids[series], SOP_PLACEHOLDER)
        record = extract(ds, metadata)
        instance = replace(
            record.instance, deid_method=template.deid_method, deid_flag=template.deid_flag
        )
        return template, replace(record, instance=instance)

    def _change(self, rows: _Rows, kind: ChangeType, uid: str, at: datetime) -> None:
        rows.add(
            "change",
            {
                "seq": self._next("change"),
                "change_type": kind,
                "resource_uid": uid,
                "created_at": at,
            },
        )

    def _study_rows(self, plan: StudyPlan, rows: _Rows) -> None:
        shape = self.shape
        at = plan.created_at
        study_pk = self._next("study")
        total_bytes = 0
        first = True
        for series in range(shape.series_per_study):
            template, record = self.record(plan, series)
            if first:
                self._parents(plan, record, study_pk, rows, at)
                first = False
            series_pk = self._next("series")
            series_values = asdict(record.series)
            rows.add(
                "series",
                {
                    **series_values,
                    "id": series_pk,
                    "study_pk": study_pk,
                    "series_description_ci": fold(record.series.series_description),
                    "number_of_instances": shape.instances_per_series,
                    "created_at": at,
                },
            )
            self._change(rows, ChangeType.NEW_SERIES, record.series.series_instance_uid, at)
            instance_values = asdict(record.instance)
            for number in range(1, shape.instances_per_series + 1):
                uid = sop_uid(plan, series, number)
                metadata = record.metadata_json.replace(SOP_PLACEHOLDER, uid)
                if number != 1:
                    metadata = metadata.replace(
                        _NUMBER_ONE, f'"00200013":{{"vr":"IS","Value":[{number}]}}', 1
                    )
                rows.add(
                    "instance",
                    {
                        **instance_values,
                        "id": self._next("instance"),
                        "sop_instance_uid": uid,
                        "instance_number": number,
                        "series_pk": series_pk,
                        "blob_key": blob_key(uid),
                        "sha256": hashlib.sha256(uid.encode()).hexdigest(),
                        "content_sha256": hashlib.sha256(
                            metadata.encode() + template.binary_tail
                        ).hexdigest(),
                        "earlier_content_sha256": None,
                        "size": template.size,
                        "version": 1,
                        "metadata_json": metadata,
                        "source_door": DOOR,
                        "source_aet": CALLING_AET,
                        "received_at": at,
                    },
                )
                self._change(rows, ChangeType.NEW_INSTANCE, uid, at)
                total_bytes += template.size
            if series == 0:
                self._vault(rows, "study", plan.study_uid, plan, at)
                self._vault(rows, "accession", plan.accession, plan, at)
            self._vault(rows, "series", record.series.series_instance_uid, plan, at)
        study_row = rows.by_table["study"][-1]
        study_row["number_of_instances"] = shape.series_per_study * shape.instances_per_series
        study_row["number_of_series"] = shape.series_per_study
        study_row["total_bytes"] = total_bytes
        self._audit(plan, rows, at)

    def _parents(
        self, plan: StudyPlan, record: InstanceRecord, study_pk: int, rows: _Rows, at: datetime
    ) -> None:
        """The patient (if new), study, its links and projects: the writer's first instance."""
        patient_pk = self._patients.get(plan.patient_index)
        if patient_pk is None:
            patient_pk = self._patients[plan.patient_index] = self._next("patient")
            rows.add(
                "patient",
                {
                    **asdict(record.patient),
                    "id": patient_pk,
                    "patient_name_ci": fold(record.patient.patient_name),
                    "patient_name_fuzzy": name_key(record.patient.patient_name),
                    "created_at": at,
                },
            )
            self._change(rows, ChangeType.NEW_PATIENT, record.patient.patient_id, at)
            self._vault(rows, "patient", plan.patient_id, plan, at)
        study = record.study
        rows.add(
            "study",
            {
                **asdict(study),
                "id": study_pk,
                "patient_pk": patient_pk,
                "study_description_ci": fold(study.study_description),
                "referring_physician_name_ci": fold(study.referring_physician_name),
                "referring_physician_name_fuzzy": name_key(study.referring_physician_name),
                "source": f"{DOOR}:{CALLING_AET}",
                "modalities_in_study": record.series.modality or "",
                "created_at": at,
                "updated_at": at,
            },
        )
        self._change(rows, ChangeType.NEW_STUDY, study.study_instance_uid, at)
        rows.add("study_patient", {"study_pk": study_pk, "patient_pk": patient_pk})
        projects, new_study_projects = self.projects
        for project in sorted({*projects, *new_study_projects}):
            rows.add("study_project", {"study_pk": study_pk, "project": project})

    def _vault(self, rows: _Rows, kind: str, pseudonym: str, plan: StudyPlan, at: datetime) -> None:
        """A vault row as de-identification writes it (originals: the generator's inputs)."""
        originals = {"kind": kind, "study": str(plan.index), "patient": str(plan.patient_index)}
        token = self.fernet.encrypt(json.dumps(originals, sort_keys=True).encode())
        rows.add(
            "deid_vault",
            {
                "kind": kind,
                "pseudonym": pseudonym,
                "patient_pseudonym": plan.patient_id,
                "token": token.decode("ascii"),
                "created_at": at,
            },
        )

    def _audit(self, plan: StudyPlan, rows: _Rows, at: datetime) -> None:
        """The store event of the study's association (``audit.StoreAudit``, aggregated)."""
        event = self._next("audit")
        stored = self.shape.series_per_study * self.shape.instances_per_series
        rows.add(
            "audit_event",
            {
                "id": event,
                "at": at,
                "actor": CALLING_AET,
                "action": "store",
                "target": f"called {CALLED_AET}",
                "outcome": "ok",
                "door": DOOR,
                "remote": "127.0.0.1",
                "detail": json.dumps({"stored": stored}, sort_keys=True),
            },
        )
        rows.add("audit_event_study", {"event_id": event, "study_uid": plan.study_uid})


_TABLES: Final[dict[str, Table]] = {
    model.__tablename__: model.__table__  # type: ignore[misc]
    for model in (
        Patient,
        Study,
        StudyPatient,
        StudyProject,
        Series,
        Instance,
        Change,
        VaultEntry,
        AuditEvent,
        AuditEventStudy,
    )
}
_COPIED: Final = ("instance", "change")
_SEQUENCES: Final = (
    ("patient", "id"),
    ("study", "id"),
    ("series", "id"),
    ("instance", "id"),
    ("change", "seq"),
    ("deid_vault", "id"),
    ("audit_event", "id"),
)


def write(connection: Connection, batch: _Rows) -> None:
    """Insert one batch, parents first (COPY for the big tables on PostgreSQL)."""
    postgres = connection.dialect.name == "postgresql"
    for name, table in _TABLES.items():
        rows = batch.by_table.get(name)
        if not rows:
            continue
        if postgres and name in _COPIED:
            columns = list(rows[0])
            raw: Any = connection.connection.driver_connection
            quoted = ", ".join(f'"{c}"' for c in columns)
            with raw.cursor() as cursor, cursor.copy(f"COPY {name} ({quoted}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row([_copy_value(row[c]) for c in columns])
        else:
            connection.execute(insert(table), rows)


def _copy_value(value: Any) -> Any:
    return str(value) if isinstance(value, ChangeType) else value


def make_generator(settings: Settings, shape: Shape) -> Generator:
    """Create the node's catalog in ``settings`` (migrated, empty) and a generator for it."""
    core = build_core(settings)  # the data folder, its secrets and the migrated schema
    core.close()
    with tempfile.TemporaryDirectory(prefix="catalog-gen-") as scratch:
        throwaway = build_core(load_settings(data_dir=Path(scratch), fsync=False))
        try:
            templates = make_templates(throwaway.deid)
        finally:
            throwaway.close()
    return Generator(shape, settings, templates)


def fill(url: str, generator: Generator, *, echo: bool = False) -> None:
    """Write ``generator``'s rows into the empty catalog at ``url`` (one transaction)."""
    started = time.perf_counter()
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            if connection.scalar(text("SELECT count(*) FROM study")):
                raise SystemExit(f"{url} already holds studies")
            if connection.dialect.name == "sqlite":
                connection.exec_driver_sql("PRAGMA synchronous=OFF")
            done = 0
            for batch in generator.batches():
                write(connection, batch)
                done += len(batch.by_table.get("instance", ()))
                if echo:
                    elapsed = time.perf_counter() - started
                    print(f"\r{done:,} instances, {elapsed:.0f} s ", end="", file=sys.stderr)
            if connection.dialect.name == "postgresql":
                for table, column in _SEQUENCES:
                    connection.execute(
                        text(
                            f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                            f"(SELECT max({column}) FROM {table}))"
                        )
                    )
        _analyze(engine)
    finally:
        engine.dispose()
    if echo:
        print(file=sys.stderr)


def load(settings: Settings, shape: Shape, *, echo: bool = True) -> float:
    """A catalog of ``shape`` in ``settings``' data folder and database; seconds taken."""
    started = time.perf_counter()
    fill(settings.catalog_url, make_generator(settings, shape), echo=echo)
    return time.perf_counter() - started


def _analyze(engine: Any) -> None:
    """Statistics for the planner, as a node that has run a while has them."""
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql("ANALYZE")
        else:
            connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "VACUUM ANALYZE"
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--database-url", help="default: the data folder's SQLite catalog")
    parser.add_argument("--studies", type=int, default=Shape.studies)
    parser.add_argument("--series-per-study", type=int, default=Shape.series_per_study)
    parser.add_argument("--instances-per-series", type=int, default=Shape.instances_per_series)
    args = parser.parse_args(argv)
    shape = Shape(args.studies, args.series_per_study, args.instances_per_series)
    settings = load_settings(data_dir=args.data_dir, database_url=args.database_url)
    seconds = load(settings, shape)
    print(f"{shape.instances:,} instances in {shape.studies:,} studies: {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
