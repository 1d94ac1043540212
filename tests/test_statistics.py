"""The statistics of the overview and dataset pages (``catalog.statistics``), on SQLite and
PostgreSQL, against figures counted here from the catalog's rows.

The synthetic set goes in through the ingest pipeline: patients 0-3 over DIMSE from MOD_A
into project ``a``, patients 4-7 through the folder door into project ``b``; a report per
CT study labels lung cancer for three patients and clear lungs for the others.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from catalog.models import Label, Patient, ReportLink, Series, Study, StudyProject
from catalog.statistics import Bucket, Overview, Statistics, StatsFilter
from export.query import age_in_years
from ingest import Source
from labeling import IncomingReport
from labeling.labels import apply_review
from node.app import Core
from tests.synthetic import SyntheticDataset, SyntheticSpec, generate

SPEC = SyntheticSpec(patients=8, ct_slices=3, mr_slices=2, rows=8, columns=8, seed=13)
NEGATIVE = "Impression: No pulmonary nodules. The lungs are clear."
MALIGNANT = "Impression: Spiculated mass in the right upper lobe, consistent with lung cancer."
MALIGNANT_PATIENTS = (1, 4, 6)


def load(core: Core, synthetic: SyntheticDataset, folder: Path) -> None:
    """The synthetic set and its reports, as the module docstring says."""
    for file in synthetic.files:
        patient = int(file.relative_to(folder).parts[0])
        source = (
            Source(door="dimse", remote="test", calling_aet="MOD_A", projects=("a",))
            if patient < 4
            else Source(door="folder", remote="test", projects=("b",))
        )
        result = core.ingestor.accept(file.read_bytes(), source)
        assert result.outcome.success, result.reason
    for index, phi in enumerate(synthetic.patients):
        study_date = dcmread(folder / str(index) / "0" / "0" / "1.dcm").StudyDate
        core.report_intake.accept(
            IncomingReport(
                report_type="radiology",
                patient_id=phi.patient_id,
                patient_names=(phi.patient_name,),
                accession_number=phi.accession_numbers[0],
                exam_date=date(int(study_date[:4]), int(study_date[4:6]), int(study_date[6:])),
                modality="CT",
                impression=MALIGNANT if index in MALIGNANT_PATIENTS else NEGATIVE,
            ),
            "file",
        )


@dataclass(frozen=True)
class Row:
    """One study as the test counts it (from the catalog's rows, in Python)."""

    pk: int
    patient: int
    sex: str | None
    age: str | None
    month: str | None
    modalities: frozenset[str]
    body_parts: frozenset[str]
    labels: dict[str, int]
    projects: frozenset[str]
    series: int
    instances: int
    size: int
    reports: int


def rows_of(core: Core) -> list[Row]:
    found = []
    with core.db.read() as session:
        for study in session.scalars(select(Study)):
            patient = session.get_one(Patient, study.patient_pk)
            series = session.scalars(select(Series).where(Series.study_pk == study.id)).all()
            labels = session.scalars(select(Label).where(Label.study_pk == study.id)).all()
            age = age_in_years(study.patient_age, patient.patient_birth_date, study.study_date)
            found.append(
                Row(
                    pk=study.id,
                    patient=patient.id,
                    sex=patient.patient_sex,
                    age=None if age is None else str(int(age) // 10 * 10),
                    month=study.study_date[:6] if study.study_date else None,
                    modalities=frozenset(s.modality for s in series if s.modality),
                    body_parts=frozenset(
                        s.body_part_examined.upper() for s in series if s.body_part_examined
                    ),
                    labels={label.task: label.effective_value for label in labels},
                    projects=frozenset(
                        session.scalars(
                            select(StudyProject.project).where(StudyProject.study_pk == study.id)
                        )
                    ),
                    series=len(series),
                    instances=sum(s.number_of_instances for s in series),
                    size=study.total_bytes,
                    reports=len(
                        session.scalars(
                            select(ReportLink).where(ReportLink.study_pk == study.id)
                        ).all()
                    ),
                )
            )
    return found


def counted(values: list[str | None]) -> dict[str | None, int]:
    return dict(Counter(values))


def as_dict(buckets: list[Bucket]) -> dict[str | None, int]:
    return {b.key: b.count for b in buckets}


@pytest.fixture
def loaded(core: Core, tmp_path: Path) -> Core:
    folder = tmp_path / "synthetic"
    load(core, generate(folder, SPEC), folder)
    return core


def check(overview: Overview, rows: list[Row]) -> None:
    """Every figure of ``overview`` equals the one counted from ``rows``."""
    counts = overview.counts
    assert counts.studies == len(rows)
    assert counts.patients == len({r.patient for r in rows})
    assert counts.series == sum(r.series for r in rows)
    assert counts.instances == sum(r.instances for r in rows)
    assert counts.bytes == sum(r.size for r in rows)
    assert counts.reports == sum(r.reports for r in rows)
    assert counts.labelled_studies == sum(1 for r in rows if r.labels)


def test_counts_and_distributions_equal_the_catalogs_rows(loaded: Core) -> None:
    rows = rows_of(loaded)
    overview = Statistics(loaded.db).overview(StatsFilter(), None)
    check(overview, rows)
    assert overview.counts.studies == 16 and overview.counts.patients == 8
    assert overview.counts.reports == 8 and overview.counts.labelled_studies == 8
    assert as_dict(overview.sex) == counted([r.sex for r in rows])
    assert as_dict(overview.age) == counted([r.age for r in rows])
    assert None not in as_dict(overview.age)  # every study has an age
    assert as_dict(overview.month) == counted([r.month for r in rows])
    assert as_dict(overview.modality) == {"CT": 8, "MR": 8}
    assert as_dict(overview.body_part) == counted([b for r in rows for b in r.body_parts])
    assert as_dict(overview.source) == {"dimse:MOD_A": 8, "folder": 8}
    lung = {b.value: b.count for b in overview.labels if b.task == "lung_nodule"}
    assert lung == {1: 3, 0: 5}
    assert sum(b.count for b in overview.sequence) == overview.counts.series
    assert [b.key for b in overview.month] == sorted(b.key or "" for b in overview.month)


def test_every_filter_restricts_the_figures_and_not_its_own_distribution(loaded: Core) -> None:
    rows = rows_of(loaded)
    statistics = Statistics(loaded.db)
    some = rows[3]
    cases: list[tuple[StatsFilter, list[Row]]] = [
        (StatsFilter(modality="MR"), [r for r in rows if "MR" in r.modalities]),
        (StatsFilter(sex=some.sex), [r for r in rows if r.sex == some.sex]),
        (StatsFilter(age=int(some.age or 0)), [r for r in rows if r.age == some.age]),
        (StatsFilter(month=some.month), [r for r in rows if r.month == some.month]),
        (StatsFilter(source="folder"), [r for r in rows if "b" in r.projects]),
        (
            StatsFilter(labels=(("lung_nodule", 1),)),
            [r for r in rows if r.labels.get("lung_nodule") == 1],
        ),
        (
            StatsFilter(task="lung_nodule"),
            [r for r in rows if r.labels.get("lung_nodule", -1) >= 0],
        ),
        (
            StatsFilter(modality="CT", sex=some.sex),
            [r for r in rows if "CT" in r.modalities and r.sex == some.sex],
        ),
    ]
    everything = statistics.overview(StatsFilter(), None)
    for filters, expected in cases:
        overview = statistics.overview(filters, None)
        assert expected, filters
        check(overview, expected)
        if filters.modality is None:
            assert as_dict(overview.modality) == counted(
                [m for r in expected for m in r.modalities]
            )
        if filters.sex is None:
            assert as_dict(overview.sex) == counted([r.sex for r in expected])
    # a distribution keeps its own dimension's other values
    assert as_dict(statistics.overview(StatsFilter(modality="MR"), None).modality) == as_dict(
        everything.modality
    )
    labelled = statistics.overview(StatsFilter(labels=(("lung_nodule", 1),)), None)
    assert {b.value: b.count for b in labelled.labels if b.task == "lung_nodule"} == {1: 3, 0: 5}
    assert {b.value for b in labelled.labels if b.task == "liver_cancer"} == {-1}
    assert sum(b.count for b in labelled.labels if b.task == "liver_cancer") == 3


def test_a_reviewers_class_is_the_one_counted(loaded: Core) -> None:
    with loaded.db.write() as session:
        label = session.scalars(
            select(Label).where(Label.task == "lung_nodule", Label.value == 0)
        ).first()
        assert label is not None
        apply_review(label, reviewer="Dr. Review", value=1, note=None)
    overview = Statistics(loaded.db).overview(StatsFilter(labels=(("lung_nodule", 1),)), None)
    assert overview.counts.studies == 4


def test_projects_scope_every_figure(loaded: Core) -> None:
    rows = rows_of(loaded)
    statistics = Statistics(loaded.db)
    for project in ("a", "b"):
        overview = statistics.overview(StatsFilter(), frozenset({project}))
        check(overview, [r for r in rows if project in r.projects])
        assert as_dict(overview.source) == {"dimse:MOD_A" if project == "a" else "folder": 8}
    nothing = statistics.overview(StatsFilter(), frozenset({"c"}))
    assert nothing.counts.studies == 0 and nothing.counts.reports == 0
    assert nothing.labels == [] and nothing.modality == [] and nothing.sequence == []


def test_ingest_over_time_counts_studies_and_instances_by_arrival(loaded: Core) -> None:
    overview = Statistics(loaded.db).overview(StatsFilter(), None, days=3, hours=4)
    assert overview.ingest is not None
    today = datetime.now(UTC)
    assert [b.at for b in overview.ingest.per_day] == [today.strftime("%Y-%m-%d")]
    assert overview.ingest.per_day[0].studies == 16
    assert overview.ingest.per_day[0].instances == overview.counts.instances
    assert sum(b.instances for b in overview.ingest.per_hour) == overview.counts.instances
    assert all(b.at.startswith(today.strftime("%Y-%m-%d")) for b in overview.ingest.per_hour)
    later = Statistics(loaded.db).overview(
        StatsFilter(), None, days=3, now=datetime(2100, 1, 1, tzinfo=UTC)
    )
    assert later.ingest is not None and later.ingest.per_day == []


def test_sequence_families_use_the_classifier(loaded: Core) -> None:
    overview = Statistics(loaded.db, lambda d, p, s: "T1" if "T1" in (d or "") else None).overview(
        StatsFilter(modality="MR"), None
    )
    assert as_dict(overview.sequence) == {"T1": 8, None: 8}


def test_studies_stored_before_their_source_was_kept_get_it_from_their_first_instance(
    catalog_url: str,
) -> None:
    """Migration 0012 fills ``study.source`` from the first stored instance of each study."""
    from datetime import UTC, datetime

    from sqlalchemy import MetaData, insert, select

    from catalog.db import Database
    from catalog.models import Study
    from tests.test_two_patient_ids import _upgrade

    db = Database(catalog_url)
    try:
        _upgrade(db, "0011_audit_trail")
        old = MetaData()
        now = datetime.now(UTC)
        with db.write() as session:
            connection = session.connection()
            old.reflect(connection)
            patient = connection.execute(
                insert(old.tables["patient"]).values(
                    patient_id="P", issuer_of_patient_id="", created_at=now
                )
            ).inserted_primary_key[0]
            sent = {"2.25.1": [("dimse", "MOD_A"), ("stow", None)], "2.25.2": [("folder", None)]}
            for number, (uid, instances) in enumerate(sent.items()):
                study = connection.execute(
                    insert(old.tables["study"]).values(
                        patient_pk=patient,
                        study_instance_uid=uid,
                        modalities_in_study="CT",
                        number_of_series=1,
                        number_of_instances=len(instances),
                        total_bytes=len(instances),
                        created_at=now,
                        updated_at=now,
                    )
                ).inserted_primary_key[0]
                series = connection.execute(
                    insert(old.tables["series"]).values(
                        study_pk=study,
                        series_instance_uid=f"{uid}.1",
                        number_of_instances=len(instances),
                        created_at=now,
                    )
                ).inserted_primary_key[0]
                for index, (door, aet) in enumerate(instances):
                    connection.execute(
                        insert(old.tables["instance"]).values(
                            series_pk=series,
                            sop_instance_uid=f"{uid}.1.{index}",
                            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                            transfer_syntax_uid="1.2.840.10008.1.2.1",
                            blob_key=f"{number}{index}".ljust(32, "0"),
                            sha256="0" * 64,
                            size=1,
                            version=1,
                            metadata_json="{}",
                            source_door=door,
                            source_aet=aet,
                            received_at=now,
                        )
                    )
        db.migrate()
        with db.read() as session:
            found = dict(session.execute(select(Study.study_instance_uid, Study.source)).all())
        assert found == {"2.25.1": "dimse:MOD_A", "2.25.2": "folder"}
    finally:
        db.dispose()
