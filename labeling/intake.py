"""The one report intake every door calls (MLLP, files, REST): :meth:`ReportIntake.accept`.

validate -> pseudonymise identifiers and shift the exam date (same HMAC and offset as the
images) -> de-identify the text -> extract labels -> one transaction: report + labels +
links + the linked studies' labels. The original identifiers and text are never stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import Literal, Protocol

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from catalog import Database
from catalog.models import Report, ReportLabel, ReportLink, Study
from catalog.projects import in_projects
from config.labeling import LabelingSettings
from deid import Vault, VaultRecord
from labeling.extract import Extractor
from labeling.labels import refresh_study_labels, store_report_labels
from labeling.linking import accession_key, placeholder_keys, relink, reports_for_study
from labeling.tasks import TaskSet
from labeling.textdeid import TEXT_DEID_VERSION, Identifiers, deidentify_text

log = logging.getLogger(__name__)

Door = Literal["hl7", "file", "rest"]
REPORT_TYPES = ("radiology", "pathology")


class Pseudonyms(Protocol):
    """The part of ``deid.Pseudonymizer`` reports need (the images' keyed-HMAC pseudonyms)."""

    def patient_id(self, original: str, issuer: str = "") -> str: ...

    def accession_number(self, original: str, issuer: str = "") -> str: ...

    def date_offset_days(self, patient_id: str, issuer: str = "") -> int: ...

    def shift_date(self, value: str, patient_id: str, issuer: str = "") -> str: ...


class ReportRejectedError(ValueError):
    """The report cannot be accepted. The message says why and never quotes a value."""


class ReportStoreError(RuntimeError):
    """The catalog could not store the report (retry later); nothing was kept."""


@dataclass(frozen=True)
class IncomingReport:
    """A report as a door received it. Holds originals: keep it in memory only."""

    report_type: str
    patient_id: str
    findings: str = ""
    impression: str = ""
    accession_number: str = ""
    patient_names: tuple[str, ...] = ()
    birth_date: date | None = None
    exam_date: date | None = None
    modality: str = ""
    other_identifiers: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class IntakeResult:
    report_id: int
    duplicate: bool
    links: tuple[tuple[str, str, float], ...]
    """(study instance UID, method, confidence)"""
    labels: dict[str, int]


class ReportIntake:
    """Accepts reports from any door; links studies as they arrive. Thread-safe."""

    def __init__(
        self,
        *,
        db: Database,
        pseudonyms: Pseudonyms,
        tasks: TaskSet,
        settings: LabelingSettings,
        vault: Vault | None = None,
    ) -> None:
        self.db = db
        self.vault = vault
        self.pseudonyms = pseudonyms
        self.tasks = tasks
        self.settings = settings
        self.extractor = Extractor(tasks)
        self.placeholder_accessions = placeholder_keys(
            pseudonyms.accession_number, ("", settings.issuer_of_accession_number)
        )

    def accept(
        self, incoming: IncomingReport, door: Door, projects: frozenset[str] | None = None
    ) -> IntakeResult:
        """De-identify, label, store and link one report; a resend is a duplicate.

        The report links to its studies whoever sent it (it is visible through them); the
        result names only the linked studies of the sender's ``projects`` (``None``: all),
        so a scoped sender learns nothing of another project's studies.
        """
        report = self._prepare(incoming, door)
        labels = self.extractor.extract(report.text, report.report_type)
        if self.vault is not None:
            self._remember_patient(incoming, report.patient_id)
        try:
            with self.db.write() as session:
                existing = session.scalar(
                    select(Report).where(Report.content_sha256 == report.content_sha256)
                )
                if existing is not None:
                    return self._result(session, existing, projects, duplicate=True)
                session.add(report)
                session.flush()
                store_report_labels(session, report, labels.values(), self.tasks)
                for study_pk in relink(session, report, self.settings, self.placeholder_accessions):
                    refresh_study_labels(session, study_pk, self.tasks)
                result = self._result(session, report, projects, duplicate=False)
        except IntegrityError:
            # the same report, stored by another thread or node a moment ago
            with self.db.read() as session:
                existing = session.scalar(
                    select(Report).where(Report.content_sha256 == report.content_sha256)
                )
                if existing is None:
                    raise ReportStoreError("catalog refused the report") from None
                return self._result(session, existing, projects, duplicate=True)
        except SQLAlchemyError as exc:
            raise ReportStoreError(f"catalog unavailable ({type(exc).__name__})") from None
        log.info(
            "report %s (%s, %s) stored, %d link(s)",
            result.report_id,
            report.report_type,
            door,
            len(result.links),
        )
        return result

    def study_arrived(self, study_instance_uid: str) -> int:
        """Link waiting reports to a study that was just stored; the number of studies whose
        labels changed. Idempotent: calling it again for the same study changes nothing.
        When another node links the same report at the same moment, the loser tries again."""
        try:
            return self._link_study(study_instance_uid)
        except IntegrityError:
            return self._link_study(study_instance_uid)

    def _link_study(self, study_instance_uid: str) -> int:
        with self.db.write() as session:
            study_pk = session.scalar(
                select(Study.id).where(Study.study_instance_uid == study_instance_uid)
            )
            if study_pk is None:
                return 0
            changed: set[int] = set()
            for report in reports_for_study(session, study_pk, self.placeholder_accessions):
                changed |= relink(session, report, self.settings, self.placeholder_accessions)
            for pk in changed:
                refresh_study_labels(session, pk, self.tasks)
        if changed:
            log.info(
                "study %s: labels refreshed for %d study(ies)", study_instance_uid, len(changed)
            )
        return len(changed)

    def relabel_studies_of(self, session: Session, report_pk: int) -> None:
        """Derive again the labels of the studies ``report_pk`` is linked to."""
        for study_pk in session.scalars(
            select(ReportLink.study_pk).where(ReportLink.report_pk == report_pk)
        ).all():
            refresh_study_labels(session, study_pk, self.tasks)

    def reextract(self, batch: int = 500) -> Iterator[int]:
        """Extract every stored report's labels again with the current rules, keeping
        review decisions; yields the number of reports done after each batch."""
        last = 0
        while True:
            with self.db.write() as session:
                reports = list(
                    session.scalars(
                        select(Report).where(Report.id > last).order_by(Report.id).limit(batch)
                    )
                )
                if not reports:
                    return
                studies: set[int] = set()
                for report in reports:
                    labels = self.extractor.extract(report.text, report.report_type)
                    store_report_labels(session, report, labels.values(), self.tasks)
                    report.rules_version = self.tasks.version
                    studies.update(link.study_pk for link in report.links)
                for study_pk in studies:
                    refresh_study_labels(session, study_pk, self.tasks)
                last = reports[-1].id
            yield len(reports)

    # ------------------------------------------------------------------ helpers

    def _remember_patient(self, incoming: IncomingReport, pseudo_patient_id: str) -> None:
        """Put the patient's originals in the encrypted vault (first writer wins), so a
        patient known only from reports can be re-identified like one with images."""
        assert self.vault is not None
        try:
            self.vault.remember(
                [
                    VaultRecord(
                        "patient",
                        pseudo_patient_id,
                        pseudo_patient_id,
                        {
                            "patient_id": incoming.patient_id.strip(),
                            "issuer_of_patient_id": self.settings.issuer_of_patient_id,
                            "patient_name": incoming.patient_names[0]
                            if incoming.patient_names
                            else "",
                            "patient_birth_date": incoming.birth_date.strftime("%Y%m%d")
                            if incoming.birth_date
                            else "",
                        },
                    )
                ]
            )
        except SQLAlchemyError as exc:
            raise ReportStoreError(f"catalog unavailable ({type(exc).__name__})") from None

    def _prepare(self, incoming: IncomingReport, door: Door) -> Report:
        report_type = (incoming.report_type or "").strip().lower()
        if report_type not in REPORT_TYPES:
            raise ReportRejectedError("report type must be radiology or pathology")
        patient_id = (incoming.patient_id or "").strip()
        if not patient_id:
            raise ReportRejectedError("the report has no patient ID")
        if not (incoming.findings.strip() or incoming.impression.strip()):
            raise ReportRejectedError("the report has no text (empty report)")
        limit = self.settings.max_report_chars
        if len(incoming.findings) + len(incoming.impression) > limit:
            raise ReportRejectedError(
                f"the report text is longer than {limit} characters (labeling.max_report_chars)"
            )
        issuer = self.settings.issuer_of_patient_id
        accession = accession_key(incoming.accession_number)
        offset = self.pseudonyms.date_offset_days(patient_id, issuer)
        identifiers = Identifiers(
            patient_ids=(patient_id,),
            names=incoming.patient_names,
            accession_numbers=(accession,) if accession else (),
            birth_date=incoming.birth_date,
            other=incoming.other_identifiers,
        )
        findings = deidentify_text(incoming.findings.strip(), identifiers, offset)
        impression = deidentify_text(incoming.impression.strip(), identifiers, offset)
        pseudo_patient = self.pseudonyms.patient_id(patient_id, issuer)
        pseudo_accession = (
            self.pseudonyms.accession_number(accession, self.settings.issuer_of_accession_number)
            if accession
            else None
        )
        exam_date = (
            self.pseudonyms.shift_date(incoming.exam_date.strftime("%Y%m%d"), patient_id, issuer)
            if incoming.exam_date
            else None
        )
        modality = (incoming.modality or "").strip().upper()[:16] or None
        digest = hashlib.sha256(
            json.dumps(
                [pseudo_patient, pseudo_accession, report_type, exam_date, findings, impression],
                ensure_ascii=False,
            ).encode()
        ).hexdigest()
        return Report(
            content_sha256=digest,
            report_type=report_type,
            modality=modality,
            patient_id=pseudo_patient,
            accession_number=pseudo_accession,
            exam_date=exam_date,
            findings=findings,
            impression=impression,
            source_door=door,
            rules_version=f"{self.tasks.version}; {TEXT_DEID_VERSION}",
        )

    @staticmethod
    def _result(
        session: Session, report: Report, projects: frozenset[str] | None, *, duplicate: bool
    ) -> IntakeResult:
        links = (
            select(Study.study_instance_uid, ReportLink.method, ReportLink.confidence)
            .join(ReportLink, ReportLink.study_pk == Study.id)
            .where(ReportLink.report_pk == report.id)
        )
        if projects is not None:
            links = links.where(in_projects(Study.id, projects))
        rows = session.execute(links).all()
        labels = {
            label.task: label.effective_value
            for label in session.scalars(
                select(ReportLabel).where(ReportLabel.report_pk == report.id)
            )
        }
        return IntakeResult(report.id, duplicate, tuple((u, m, c) for u, m, c in rows), labels)
