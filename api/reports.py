"""HTTP routes of reports and labels (mounted under ``/api``).

- ``POST /api/reports``: one report as JSON, through the same intake as HL7 and files.
- ``GET /api/reports/{id}``: a stored (de-identified) report with its links and labels.
- ``GET /api/studies/{study_uid}/labels``: a study's labels with their evidence.
- ``GET /api/labels/review``: labels waiting for a person.
- ``PUT /api/labels/{id}``, ``PUT /api/reports/{id}/labels/{task}``: confirm or override.

Answers never echo what was sent: validation errors name the field and the problem only.
An id in a path that is not a whole number is refused with 400, one no row can have (too
large) is answered 404, like an id that is free.

Projects: a caller scoped to projects sees a study's labels only for studies of their
projects, a report only when it is linked to one of those studies (and only those links),
and a label to review only of such a study; anything else is ``404``, as if it did not
exist. The answer to ``POST /api/reports`` names only the linked studies the sender sees.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from access import Permission
from api.security import caller_projects, require
from catalog.models import Label, Report, ReportLabel, ReportLink, Study
from catalog.projects import in_projects
from labeling.intake import (
    IncomingReport,
    ReportIntake,
    ReportRejectedError,
    ReportStoreError,
)
from labeling.labels import ReviewError, apply_review
from labeling.linking import linked_in_projects


class ReportIn(BaseModel):
    """A report sent to ``POST /api/reports``."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    report_type: Literal["radiology", "pathology"] = "radiology"
    patient_id: str = Field(min_length=1, max_length=256)
    accession_number: str = Field(default="", max_length=256)
    patient_name: str = Field(default="", max_length=512)
    birth_date: date | None = None
    exam_date: date | None = None
    modality: str = Field(default="", max_length=16)
    findings: str = Field(default="", max_length=200_000)
    impression: str = Field(default="", max_length=200_000)


class ReviewIn(BaseModel):
    """A person's decision: ``value`` null confirms the class in force; ``reviewer``
    defaults to the caller's name."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    reviewer: str | None = Field(default=None, min_length=1, max_length=128)
    value: Literal[1, 0, 2, -1] | None = None
    note: str | None = Field(default=None, max_length=4000)


JsonBody = Annotated[Any, Body()]

MAX_ROW_ID: Final = 2**63 - 1
"""The largest primary key a catalog row can have (a signed 64-bit integer)."""


def row_id(text: str, what: str) -> int:
    """The row id written in a path segment: 400 unless it is ASCII digits, 404 when no row
    can have it (beyond a 64-bit integer); the database never sees such a value."""
    if not (text.isascii() and text.isdigit()):
        raise HTTPException(400, detail=f"a {what} id is a whole number from 1 to {MAX_ROW_ID}")
    digits = text.lstrip("0")
    if not digits or len(digits) > len(str(MAX_ROW_ID)) or int(digits) > MAX_ROW_ID:
        shown = text if len(text) <= 24 else f"{text[:20]}... ({len(text)} digits)"
        raise HTTPException(404, detail=f"no {what} {shown}")
    return int(digits)


def _validated(model: type[BaseModel], body: Any) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in error['loc']) or 'body'}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)
        ]
        raise HTTPException(422, detail="; ".join(problems)) from None


def reviewer(request: Request, review: ReviewIn) -> str:
    """Who made the decision: as the body names them, else the caller."""
    principal = getattr(request.state, "principal", None)
    return review.reviewer or (str(principal.name) if principal is not None else "anonymous")


def _sees_report(session: Session, report_pk: int, projects: frozenset[str] | None) -> bool:
    """Whether a caller of ``projects`` (``None``: all) sees the report: it is linked to a
    study of theirs (an unlinked report: only callers who see every project)."""
    return projects is None or bool(session.scalar(select(linked_in_projects(report_pk, projects))))


def create_router(intake: ReportIntake) -> APIRouter:
    """The router; ``node.app`` mounts it under ``/api`` with the node's dependencies."""
    router = APIRouter(tags=["reports and labels"])
    db = intake.db
    tasks = intake.tasks

    def meaning(task: str, value: int) -> str:
        definition = tasks.tasks.get(task)
        return definition.meanings().get(value, "") if definition else ""

    def label_json(label: Label | ReportLabel) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": label.id,
            "task": label.task,
            "value": label.effective_value,
            "meaning": meaning(label.task, label.effective_value),
            "extracted_value": label.value,
            "confidence": label.confidence,
            "rule": label.rule,
            "evidence": label.span_text,
            "category": label.category,
            "size_mm": label.size_mm,
            "needs_review": label.needs_review,
            "review_status": label.review_status,
            "reviewed_by": label.reviewed_by,
            "reviewed_at": label.reviewed_at.isoformat() if label.reviewed_at else None,
            "review_note": label.review_note,
        }
        if isinstance(label, Label):
            data["review_reason"] = label.review_reason
            data["report_id"] = label.report_pk
            data["rules_version"] = label.rules_version
        else:
            data["report_id"] = label.report_pk
            # where the evidence is in the report's text (findings, a newline, impression),
            # as indexes into its NFKC-normalised form
            data["span_start"] = label.span_start
            data["span_end"] = label.span_end
        return data

    @router.post(
        "/reports", status_code=201, dependencies=[Depends(require(Permission.REPORTS_WRITE))]
    )
    def post_report(request: Request, response: Response, body: JsonBody) -> dict[str, Any]:
        """Store one report (de-identified), extract its labels and link it to its study."""
        report = _validated(ReportIn, body)
        incoming = IncomingReport(
            report_type=report.report_type,
            patient_id=report.patient_id,
            findings=report.findings,
            impression=report.impression,
            accession_number=report.accession_number,
            patient_names=(report.patient_name,) if report.patient_name else (),
            birth_date=report.birth_date,
            exam_date=report.exam_date,
            modality=report.modality,
        )
        try:
            result = intake.accept(incoming, "rest", caller_projects(request))
        except ReportRejectedError as exc:
            raise HTTPException(422, detail=str(exc)) from None
        except ReportStoreError as exc:
            raise HTTPException(503, detail=str(exc)) from None
        if result.duplicate:
            response.status_code = 200
        return {
            "report_id": result.report_id,
            "duplicate": result.duplicate,
            "links": [
                {"study_instance_uid": uid, "method": method, "confidence": confidence}
                for uid, method, confidence in result.links
            ],
            "labels": result.labels,
        }

    @router.get("/reports/{report_id}", dependencies=[Depends(require(Permission.REPORTS_READ))])
    def get_report(request: Request, report_id: str) -> dict[str, Any]:
        """A stored report: de-identified text, links and labels with their evidence."""
        pk = row_id(report_id, "report")
        projects = caller_projects(request)
        with db.read() as session:
            report = session.get(Report, pk)
            if report is None or not _sees_report(session, pk, projects):
                raise HTTPException(404, detail=f"no report {pk}")
            query = (
                select(Study.study_instance_uid, ReportLink.method, ReportLink.confidence)
                .join(ReportLink, ReportLink.study_pk == Study.id)
                .where(ReportLink.report_pk == report.id)
            )
            if projects is not None:
                query = query.where(in_projects(Study.id, projects))
            links = session.execute(query).all()
            labels = session.scalars(
                select(ReportLabel).where(ReportLabel.report_pk == report.id)
            ).all()
            return {
                "report_id": report.id,
                "report_type": report.report_type,
                "modality": report.modality,
                "exam_date": report.exam_date,
                "findings": report.findings,
                "impression": report.impression,
                "links": [
                    {"study_instance_uid": u, "method": m, "confidence": c} for u, m, c in links
                ],
                "labels": [label_json(label) for label in labels],
            }

    @router.get(
        "/studies/{study_uid}/labels", dependencies=[Depends(require(Permission.LABELS_READ))]
    )
    def study_labels(request: Request, study_uid: str) -> dict[str, Any]:
        """A study's label per task (empty while no report is linked), with evidence."""
        projects = caller_projects(request)
        with db.read() as session:
            query = select(Study.id).where(Study.study_instance_uid == study_uid)
            if projects is not None:
                query = query.where(in_projects(Study.id, projects))
            study_pk = session.scalar(query)
            if study_pk is None:
                raise HTTPException(404, detail="no such study")
            labels = session.scalars(
                select(Label).where(Label.study_pk == study_pk).order_by(Label.task)
            ).all()
            reports = session.execute(
                select(Report.id, Report.report_type, ReportLink.method, ReportLink.confidence)
                .join(ReportLink, ReportLink.report_pk == Report.id)
                .where(ReportLink.study_pk == study_pk)
                .order_by(Report.id)
            ).all()
            return {
                "study_instance_uid": study_uid,
                "labels": [label_json(label) for label in labels],
                "reports": [
                    {"report_id": r, "report_type": t, "method": m, "confidence": c}
                    for r, t, m, c in reports
                ],
            }

    @router.get("/labels/review", dependencies=[Depends(require(Permission.LABELS_REVIEW))])
    def review_list(
        request: Request, limit: int = Query(100, ge=1, le=1000), task: str | None = None
    ) -> dict[str, Any]:
        """Labels of the caller's studies waiting for a person (low confidence or
        conflicting reports)."""
        projects = caller_projects(request)
        with db.read() as session:
            query = (
                select(Label, Study.study_instance_uid)
                .join(Study, Study.id == Label.study_pk)
                .where(Label.needs_review.is_(True))
            )
            if projects is not None:
                query = query.where(in_projects(Study.id, projects))
            if task:
                query = query.where(Label.task == task)
            rows = session.execute(query.order_by(Label.confidence, Label.id).limit(limit)).all()
            return {
                "labels": [{**label_json(label), "study_instance_uid": uid} for label, uid in rows]
            }

    @router.put("/labels/{label_id}", dependencies=[Depends(require(Permission.LABELS_REVIEW))])
    def review_label(request: Request, label_id: str, body: JsonBody) -> dict[str, Any]:
        """Confirm (``value`` null) or override a study label; who and when are kept."""
        pk = row_id(label_id, "label")
        review = _validated(ReviewIn, body)
        projects = caller_projects(request)
        try:
            with db.write() as session:
                label = session.get(Label, pk)
                if label is None or not (
                    projects is None
                    or session.scalar(select(in_projects(label.study_pk, projects)))
                ):
                    raise HTTPException(404, detail=f"no label {pk}")
                apply_review(
                    label, reviewer=reviewer(request, review), value=review.value, note=review.note
                )
                session.flush()
                return label_json(label)
        except ReviewError as exc:
            raise HTTPException(422, detail=str(exc)) from None
        except SQLAlchemyError as exc:
            raise HTTPException(503, detail=f"catalog unavailable ({type(exc).__name__})") from None

    @router.put(
        "/reports/{report_id}/labels/{task}",
        dependencies=[Depends(require(Permission.LABELS_REVIEW))],
    )
    def review_report_label(
        request: Request, report_id: str, task: str, body: JsonBody
    ) -> dict[str, Any]:
        """Confirm or override one report's label; the linked studies are relabelled."""
        pk = row_id(report_id, "report")
        review = _validated(ReviewIn, body)
        projects = caller_projects(request)
        try:
            with db.write() as session:
                label = session.scalar(
                    select(ReportLabel).where(ReportLabel.report_pk == pk, ReportLabel.task == task)
                )
                if label is None or not _sees_report(session, pk, projects):
                    raise HTTPException(404, detail=f"report {pk} has no {task[:64]} label")
                apply_review(
                    label, reviewer=reviewer(request, review), value=review.value, note=review.note
                )
                session.flush()
                intake.relabel_studies_of(session, pk)
                return label_json(label)
        except ReviewError as exc:
            raise HTTPException(422, detail=str(exc)) from None
        except SQLAlchemyError as exc:
            raise HTTPException(503, detail=f"catalog unavailable ({type(exc).__name__})") from None

    return router
