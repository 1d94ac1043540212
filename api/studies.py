"""The study list and label views the dashboard reads (mounted under ``/api``).

- ``GET /api/studies``: studies as QIDO-RS answers them (the same matching of
  :mod:`catalog.query`, the same DICOM JSON rows), also filtered by what DICOM cannot ask
  (label class, age group, source: :mod:`catalog.facets`), with the number that match and
  each study's labels.
- ``GET /api/labels/reviewed``: labels a person confirmed or changed, newest first, by whom.
- ``GET /api/labels/tasks``: the label tasks and their classes' meanings, in both languages.

Projects: a caller scoped to projects finds only studies of those projects, counts only
them, and sees only their reviewed labels.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import func, select

from access import Permission, Principal
from api.audited import note_audit
from api.security import require
from audit import Action
from catalog import Database
from catalog.facets import FacetError, StudyFacets
from catalog.models import Label, Study
from catalog.projects import in_projects
from catalog.query import QueryError, QueryLevel, count_query, parse_query, run_query, study_uids
from labeling.tasks import CLASSES, TaskSet

MAX_PAGE: Final = 500
_SHOWN: Final = ("PatientAge",)
"""Returned beside QIDO's required study keys (what the study list shows)."""

Text = Annotated[str | None, Query(max_length=256)]


def studies_router(db: Database, tasks: TaskSet) -> APIRouter:
    """The router; ``node.app`` mounts it under ``/api``."""
    router = APIRouter(tags=["dashboard"])

    @router.get("/studies")
    async def studies(
        request: Request,
        principal: Annotated[Principal, Depends(require(Permission.DICOMWEB_READ))],
        PatientName: Text = None,  # noqa: N803 - QIDO's key names
        PatientID: Text = None,  # noqa: N803
        StudyDate: Text = None,  # noqa: N803
        ModalitiesInStudy: Text = None,  # noqa: N803
        AccessionNumber: Text = None,  # noqa: N803
        StudyDescription: Text = None,  # noqa: N803
        fuzzymatching: bool = False,
        modality: Text = None,
        sex: Text = None,
        age: Annotated[str | None, Query(max_length=16, description="Years: 40-49.")] = None,
        task: Text = None,
        label_class: Annotated[
            str | None, Query(alias="class", max_length=2, description="1, 0, 2 or -1.")
        ] = None,
        month: Annotated[str | None, Query(max_length=7, description="YYYY-MM.")] = None,
        source: Annotated[
            str | None, Query(max_length=64, description="Calling AE title, or door.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 25,
        offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    ) -> dict[str, Any]:
        """Studies matching QIDO-RS keys and the dashboard's filters, a page of them as QIDO
        answers (DICOM JSON), with ``total`` and, for a caller who may read labels, each
        study's labels (task -> class in force)."""
        keys = {
            name: value
            for name, value in (
                ("PatientName", PatientName),
                ("PatientID", PatientID),
                ("StudyDate", StudyDate),
                ("ModalitiesInStudy", ModalitiesInStudy),
                ("AccessionNumber", AccessionNumber),
                ("StudyDescription", StudyDescription),
            )
            if value
        }
        try:
            facets = StudyFacets.parse(
                modality=modality,
                sex=sex,
                age=age,
                task=task,
                value=label_class,
                month=month,
                source=source,
            )
            query = parse_query(
                QueryLevel.STUDY,
                keys,
                include=_SHOWN,
                fuzzy=fuzzymatching,
                limit=limit,
                offset=offset,
            )
        except (QueryError, FacetError) as exc:
            raise HTTPException(400, str(exc)) from None
        query = replace(query, projects=principal.projects, where=facets.conditions())
        with_labels = principal.allows(Permission.LABELS_READ)

        def read() -> dict[str, Any]:
            result = run_query(db, query)
            shown = [str(row["0020000D"]["Value"][0]) for row in result.rows]
            return {
                "total": count_query(db, query),
                "offset": offset,
                "limit": limit,
                "studies": result.rows,
                "labels": _labels_of(db, shown) if with_labels else None,
            }

        answer = await run_in_threadpool(read)
        note_audit(
            request,
            Action.QUERY,
            studies=study_uids(answer["studies"]),
            detail={
                "level": "STUDY",
                "keys": sorted(keys)
                + [name for name, given in vars(facets).items() if given is not None],
                "matches": len(answer["studies"]),
            },
        )
        return answer

    @router.get("/labels/reviewed")
    async def reviewed(
        principal: Annotated[Principal, Depends(require(Permission.LABELS_READ))],
        task: Annotated[str | None, Query(max_length=64)] = None,
        reviewer: Annotated[str | None, Query(max_length=128)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    ) -> dict[str, Any]:
        """Study labels a person confirmed or changed, newest review first: who, when, the
        class extracted and the class in force."""
        where = [Label.review_status != "auto"]
        if principal.projects is not None:
            where.append(in_projects(Label.study_pk, principal.projects))
        if task:
            where.append(Label.task == task)
        if reviewer:
            where.append(Label.reviewed_by == reviewer)

        def read() -> dict[str, Any]:
            with db.read() as session:
                total = session.scalar(select(func.count()).select_from(Label).where(*where))
                rows = session.execute(
                    select(Label, Study.study_instance_uid)
                    .join(Study, Study.id == Label.study_pk)
                    .where(*where)
                    .order_by(Label.reviewed_at.desc(), Label.id.desc())
                    .limit(limit)
                    .offset(offset)
                ).all()
                return {
                    "total": int(total or 0),
                    "labels": [
                        {
                            "id": label.id,
                            "study_instance_uid": uid,
                            "task": label.task,
                            "value": label.effective_value,
                            "extracted_value": label.value,
                            "review_status": label.review_status,
                            "reviewed_by": label.reviewed_by,
                            "reviewed_at": label.reviewed_at.isoformat()
                            if label.reviewed_at
                            else None,
                            "review_note": label.review_note,
                            "report_id": label.report_pk,
                        }
                        for label, uid in rows
                    ],
                }

        return await run_in_threadpool(read)

    @router.get("/labels/tasks", dependencies=[Depends(require(Permission.LABELS_READ))])
    def label_tasks() -> dict[str, Any]:
        """Every label task: its description and each class's meaning, in English and
        Chinese, in the order of the classes."""
        return {
            "version": tasks.version,
            "tasks": [
                {
                    "name": name,
                    "description": {"en": task.description, "zh": task.description_zh},
                    "classes": [
                        {
                            "value": value,
                            "meaning": {
                                "en": task.classes[value].meaning,
                                "zh": task.classes[value].meaning_zh,
                            },
                        }
                        for value in CLASSES
                    ],
                }
                for name, task in tasks.tasks.items()
            ],
        }

    return router


def _labels_of(db: Database, study_uids: list[str]) -> dict[str, dict[str, int]]:
    """Each study's labels: task -> class in force."""
    found: dict[str, dict[str, int]] = {uid: {} for uid in study_uids}
    if not study_uids:
        return found
    with db.read() as session:
        rows = session.execute(
            select(
                Study.study_instance_uid,
                Label.task,
                func.coalesce(Label.override_value, Label.value),
            )
            .join(Label, Label.study_pk == Study.id)
            .where(Study.study_instance_uid.in_(study_uids))
        ).all()
    for uid, task, value in rows:
        found[uid][task] = int(value)
    return found
