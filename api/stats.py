"""HTTP API of the archive's statistics (``/api/stats``): the overview and dataset pages.

Figures come from :mod:`catalog.statistics` (aggregate SQL), restricted by the query
parameters (the filters a click on a chart adds) and by the caller's projects: a caller of
project A finds none of project B's studies in any figure.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from access import Permission
from api.security import caller_projects, require
from catalog.statistics import Overview, Statistics, StatsFilter
from export import Cohorts
from labeling.tasks import CLASSES, TaskDefinition, TaskSet


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class CountsOut(_Out):
    patients: int
    studies: int
    series: int
    instances: int
    bytes: int = Field(description="Bytes stored (the files as kept).")
    reports: int = Field(description="Reports linked to the studies.")
    labelled_studies: int = Field(description="Studies with a label of at least one task.")


class BucketOut(_Out):
    key: str | None = Field(description="The value (null: not recorded).")
    count: int


class LabelBucketOut(_Out):
    task: str
    value: int = Field(description="The class in force (1, 0, 2, -1).")
    count: int = Field(description="Studies.")


class TimeBucketOut(_Out):
    at: str = Field(description="YYYY-MM-DD (per day) or YYYY-MM-DD HH (per hour), UTC.")
    studies: int = Field(description="Studies first stored then.")
    instances: int = Field(description="Instances of the series that arrived then.")


class IngestOut(_Out):
    per_day: list[TimeBucketOut]
    per_hour: list[TimeBucketOut]
    days: int
    hours: int


class TaskNameOut(BaseModel):
    description: str
    description_zh: str


class OverviewOut(_Out):
    """Counts and distributions of the studies the filters keep; each distribution ignores
    the filter on its own dimension. Distributions count studies, ``sequence`` series."""

    counts: CountsOut
    labels: list[LabelBucketOut]
    modality: list[BucketOut]
    sex: list[BucketOut]
    age: list[BucketOut] = Field(description="Per decade: key 40 is 40-49 years.")
    body_part: list[BucketOut]
    sequence: list[BucketOut] = Field(description="Series per sequence family.")
    month: list[BucketOut] = Field(description="Per study month, YYYYMM.")
    source: list[BucketOut] = Field(
        description="Per door (door:AE for DIMSE) of each study's first instance."
    )
    ingest: IngestOut | None
    filters: dict[str, Any] = Field(description="The filters applied.")
    tasks: dict[str, TaskNameOut] = Field(
        default_factory=dict, description="The label tasks' names, in English and Chinese."
    )


class ClassOut(BaseModel):
    value: int
    meaning: str
    meaning_zh: str
    count: int = Field(description="Studies with this class in force.")


class TaskOut(BaseModel):
    task: str
    description: str
    description_zh: str
    classes: list[ClassOut]
    studies: int = Field(description="Studies that address the task (a class other than -1).")


class CohortOut(BaseModel):
    id: int
    ref: str = Field(description="name@version")
    description: str
    created_at: datetime
    frozen_at: datetime | None
    manifest_sha256: str | None
    series: int | None
    instances: int | None


class TaskDetailOut(TaskOut):
    overview: OverviewOut = Field(description="The figures of the studies addressing the task.")
    cohorts: list[CohortOut] = Field(description="Cohort versions whose definition uses it.")


def stats_filter(
    modality: Annotated[str | None, Query(max_length=16)] = None,
    sex: Annotated[str | None, Query(max_length=16)] = None,
    age: Annotated[int | None, Query(ge=0, le=200, description="Decade start: 40")] = None,
    label: Annotated[
        list[str] | None,
        Query(description="task:class, e.g. lung_nodule:1 (repeat: every one must hold)"),
    ] = None,
    month: Annotated[str | None, Query(pattern=r"^\d{6}$", description="YYYYMM")] = None,
    source: Annotated[str | None, Query(max_length=40, description="door or door:AE")] = None,
    body_part: Annotated[str | None, Query(max_length=64)] = None,
) -> StatsFilter:
    """The filters of the query string."""
    labels = []
    for text in label or ():
        task, _, value = text.partition(":")
        if not task or value.lstrip("-") not in {str(abs(c)) for c in CLASSES}:
            raise HTTPException(422, f"label filter {text!r}: task:class, class one of {CLASSES}")
        labels.append((task, int(value)))
    return StatsFilter(
        modality=modality,
        sex=sex,
        age=age,
        labels=tuple(labels),
        month=month,
        source=source,
        body_part=body_part,
    )


Filters = Annotated[StatsFilter, Depends(stats_filter)]


def stats_router(statistics: Statistics, tasks: TaskSet, cohorts: Cohorts) -> APIRouter:
    """The ``/stats`` routes over one :class:`Statistics`, the task file and the cohorts."""
    router = APIRouter(prefix="/stats", tags=["statistics"])
    names = {
        name: TaskNameOut(description=task.description, description_zh=task.description_zh)
        for name, task in tasks.tasks.items()
    }

    def figures(found: Overview) -> OverviewOut:
        return OverviewOut.model_validate(found).model_copy(update={"tasks": names})

    @router.get(
        "",
        dependencies=[Depends(require(Permission.DICOMWEB_READ))],
        summary="Counts, ingest over time and distributions of the archive",
    )
    def overview(
        request: Request,
        filters: Filters,
        days: Annotated[int, Query(ge=1, le=366, description="Ingest per day: days back")] = 30,
        hours: Annotated[int, Query(ge=1, le=168, description="Ingest per hour: hours back")] = 48,
    ) -> OverviewOut:
        """What the studies the filters keep hold, among the caller's projects."""
        found = statistics.overview(filters, caller_projects(request), days=days, hours=hours)
        return figures(found)

    def describe(name: str, task: TaskDefinition, counts: dict[int, int]) -> dict[str, Any]:
        return {
            "task": name,
            "description": task.description,
            "description_zh": task.description_zh,
            "classes": [
                ClassOut(
                    value=value,
                    meaning=task.classes[value].meaning,
                    meaning_zh=task.classes[value].meaning_zh,
                    count=counts.get(value, 0),
                )
                for value in CLASSES
            ],
            "studies": sum(n for value, n in counts.items() if value != -1),
        }

    @router.get(
        "/tasks",
        dependencies=[Depends(require(Permission.LABELS_READ))],
        summary="Every label task with its class counts",
    )
    def list_tasks(request: Request) -> list[TaskOut]:
        """One entry per task of the task file, with the caller's studies per class."""
        counts: dict[str, dict[int, int]] = {name: {} for name in tasks.tasks}
        for bucket in statistics.label_counts(StatsFilter(), caller_projects(request)):
            counts.setdefault(bucket.task, {})[bucket.value] = bucket.count
        return [TaskOut(**describe(name, task, counts[name])) for name, task in tasks.tasks.items()]

    @router.get(
        "/tasks/{task}",
        dependencies=[Depends(require(Permission.LABELS_READ))],
        summary="One label task as a dataset: classes, figures and cohorts",
    )
    def task_detail(request: Request, task: str, filters: Filters) -> TaskDetailOut:
        """The task's class counts, the modality, sequence, sex and age mix of the studies
        addressing it (with the filters of the query string), and the cohorts on it."""
        definition = tasks.tasks.get(task)
        if definition is None:
            raise HTTPException(404, f"no label task {task!r}")
        projects = caller_projects(request)
        counts = {
            b.value: b.count
            for b in statistics.label_counts(filters.without("label"), projects)
            if b.task == task
        }
        found = statistics.overview(
            StatsFilter(**{**vars(filters), "task": task}), projects, days=None
        )
        built_on = [
            CohortOut(
                id=info.id,
                ref=info.ref,
                description=info.description,
                created_at=info.created_at,
                frozen_at=info.frozen_at,
                manifest_sha256=info.manifest_sha256,
                series=info.series,
                instances=info.instances,
            )
            for info in cohorts.all_versions(projects)
            if task in info.definition.label_tasks()
        ]
        return TaskDetailOut(
            **describe(task, definition, counts),
            overview=figures(found),
            cohorts=built_on,
        )

    return router
