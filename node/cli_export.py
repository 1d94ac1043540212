"""``pacsnode cohort define|preview|freeze|list|show`` and ``pacsnode export``.

A thin layer over :mod:`export`: it builds a definition from options (or a JSON file), calls
the core and prints what came back. Every command works while the node runs.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from node.cli_common import (
    ConfigOpt,
    DatabaseOpt,
    DataDirOpt,
    JsonOpt,
    cli_actor,
    cli_settings,
    command_group,
    err,
    fail,
    out,
    progress_bar,
    use_archive,
)

if TYPE_CHECKING:
    from config import Settings
    from export import CohortInfo, Cohorts, Exporter

cohort_app = command_group(
    "Cohorts: saved, versioned queries over the catalog (modality, sequence, body part, "
    "sex, age, dates, institution, size, labels), balanced and split by patient, frozen "
    "so that an export can be repeated identically.",
    name="cohort",
)

CohortArg = Annotated[
    str,
    typer.Argument(help="Cohort: NAME (its latest version), NAME@VERSION, or its numeric id."),
]


def _load(config: Path | None, data_dir: Path | None, database_url: str | None) -> Settings:
    settings = cli_settings(config, data_dir, database_url)
    use_archive(settings)
    return settings


@contextmanager
def _services(
    config: Path | None, data_dir: Path | None, database_url: str | None
) -> Iterator[tuple[Cohorts, Exporter]]:
    """The core's cohort and export services; core errors become one ``Error:`` line."""
    from sqlalchemy.exc import SQLAlchemyError

    from export import Cohorts, Exporter, ExportError
    from node.app import build_core, build_label_source

    settings = _load(config, data_dir, database_url)
    logging.basicConfig(level="ERROR", stream=sys.stderr, force=True)
    try:
        core = build_core(settings)
    except (OSError, SQLAlchemyError) as exc:
        raise fail(f"cannot open the catalog: {type(exc).__name__}") from None
    try:
        cohorts = Cohorts(core.db, settings.export, build_label_source(core.report_intake.tasks))
        yield cohorts, Exporter(core.db, core.blobs, cohorts, settings.export)
    except ExportError as exc:
        raise fail(str(exc)) from None
    finally:
        core.close()


# ---------------------------------------------------------------------------------- define


@cohort_app.command()
def define(
    name: Annotated[str, typer.Argument(help="Cohort name: a letter, then letters, digits, _.-")],
    from_file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            help="JSON definition (as `pacsnode cohort show --json` prints); options below "
            "are added to it.",
        ),
    ] = None,
    modality: Annotated[
        list[str] | None, typer.Option(help="Modality to keep (repeat for several): CT, MR, ...")
    ] = None,
    sequence: Annotated[
        list[str] | None,
        typer.Option(help="Sequence/phase family (export.sequences): DWI, T1, T2, arterial, ..."),
    ] = None,
    body_part: Annotated[
        list[str] | None, typer.Option(help="Body Part Examined: HEAD, CHEST, ...")
    ] = None,
    sex: Annotated[list[str] | None, typer.Option(help="Patient sex: M, F or O.")] = None,
    age_min: Annotated[float | None, typer.Option(help="Youngest age at exam, in years.")] = None,
    age_max: Annotated[float | None, typer.Option(help="Oldest age at exam, in years.")] = None,
    study_date_from: Annotated[
        str | None, typer.Option(help="First study date, YYYY-MM-DD (stored dates).")
    ] = None,
    study_date_to: Annotated[
        str | None, typer.Option(help="Last study date, YYYY-MM-DD (stored dates).")
    ] = None,
    institution: Annotated[
        list[str] | None, typer.Option(help="Institution name, when de-identification keeps it.")
    ] = None,
    min_instances: Annotated[
        int | None, typer.Option(help="Keep series with at least this many instances.")
    ] = None,
    slice_thickness_min: Annotated[
        float | None, typer.Option(help="Thinnest Slice Thickness, mm.")
    ] = None,
    slice_thickness_max: Annotated[
        float | None, typer.Option(help="Thickest Slice Thickness, mm.")
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(
            help="Label filter TASK or TASK=CLASS[,CLASS...]: studies with a label of TASK "
            "(in those classes)."
        ),
    ] = None,
    min_confidence: Annotated[
        float | None, typer.Option(help="With --label: only labels at least this confident (0-1).")
    ] = None,
    reviewed_only: Annotated[
        bool, typer.Option(help="With --label: only labels a person reviewed.")
    ] = False,
    balance: Annotated[
        str | None,
        typer.Option(
            help="Balance classes of label:TASK, sex, modality, sequence or body_part "
            "(undersample to the smallest class, or --balance-cap)."
        ),
    ] = None,
    balance_cap: Annotated[
        int | None, typer.Option(help="With --balance: keep at most N series per class instead.")
    ] = None,
    split: Annotated[
        bool,
        typer.Option(help="Split by patient into train/validation/test (export.default_split)."),
    ] = False,
    split_fractions: Annotated[
        str | None,
        typer.Option(help="Split names and fractions, e.g. train=0.8,test=0.2 (implies --split)."),
    ] = None,
    split_by: Annotated[
        str | None,
        typer.Option(help="Stratify the split by label:TASK, sex, ... (default: --balance's)."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of balancing and split (export.default_seed).")
    ] = None,
    description: Annotated[str, typer.Option(help="What the cohort is for.")] = "",
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Save a cohort definition as the next version of NAME (version 1 if NAME is new)."""
    definition = _definition_file(from_file) if from_file is not None else {}
    filters = definition.get("filters", {})
    if not isinstance(filters, dict):
        raise fail("the definition's 'filters' is not a JSON object")
    for key, value in (
        ("modalities", modality),
        ("sequences", sequence),
        ("body_parts", body_part),
        ("sexes", [s.upper() for s in sex] if sex else None),
        ("institutions", institution),
    ):
        if value:
            before = filters.get(key, [])
            if not isinstance(before, list):
                raise fail(f"the definition's filters.{key} is not a list")
            filters[key] = [*before, *value]
    for key, scalar in (
        ("age_min", age_min),
        ("age_max", age_max),
        ("study_date_from", _date(study_date_from, "--study-date-from")),
        ("study_date_to", _date(study_date_to, "--study-date-to")),
        ("min_instances", min_instances),
        ("slice_thickness_min", slice_thickness_min),
        ("slice_thickness_max", slice_thickness_max),
    ):
        if scalar is not None:
            filters[key] = scalar
    if label and not isinstance(filters.setdefault("labels", []), list):
        raise fail("the definition's filters.labels is not a list")
    for text in label or []:
        task, _, classes = text.partition("=")
        filters["labels"].append(
            {
                "task": task.strip(),
                "classes": [c.strip() for c in classes.split(",") if c.strip()],
                "min_confidence": min_confidence,
                "reviewed_only": reviewed_only,
            }
        )
    definition["filters"] = filters
    if balance:
        mode = "cap" if balance_cap else "undersample"
        definition["balance"] = {"by": balance, "mode": mode, "cap": balance_cap}
    if split or split_fractions or split_by:
        definition["split"] = {
            "fractions": _fractions(split_fractions) if split_fractions else {},
            "by": split_by,
        }
    if seed is not None:
        definition["seed"] = seed
    with _services(config, data_dir, database_url) as (cohorts, _):
        info = cohorts.define(name, definition, description=description, actor=cli_actor())
    if as_json:
        out.print_json(json.dumps(info.as_json()))
    else:
        out.print(f"defined cohort {info.ref} (id {info.id})", highlight=False)


# ---------------------------------------------------------------------------------- preview


@cohort_app.command()
def preview(
    cohort: CohortArg,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Count what a cohort holds: per class, modality, sequence, sex, age, split. Copies nothing."""
    with _services(config, data_dir, database_url) as (cohorts, _):
        summary = cohorts.preview(cohort)
    if as_json:
        out.print_json(json.dumps(summary))
        return
    state = "frozen" if summary["frozen"] else "now, not frozen"
    out.print(
        f"cohort {summary['cohort']} ({state}): {summary['patients']} patients, "
        f"{summary['studies']} studies, {summary['series']} series, "
        f"{summary['instances']} instances",
        highlight=False,
    )
    for title in ("modality", "sequence", "body_part", "sex", "age_histogram"):
        _counts_table(title.replace("_", " "), summary[title])
    for task, counts in summary["classes"].items():
        _counts_table(f"label {task}", counts)
    if summary["splits"]:
        from rich.table import Table

        table = Table(title="splits (by patient)")
        for column in ("split", "patients", "series", "classes"):
            table.add_column(column)
        for name, entry in summary["splits"].items():
            classes = "; ".join(
                f"{task}: " + ", ".join(f"{k}={v}" for k, v in counts.items())
                for task, counts in entry["classes"].items()
            )
            table.add_row(name, str(entry["patients"]), str(entry["series"]), classes)
        out.print(table)
    if not summary["series"]:
        err.print("the cohort matches no series", highlight=False)


# ---------------------------------------------------------------------------------- freeze


@cohort_app.command()
def freeze(
    cohort: CohortArg,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Pin the cohort's exact instances and record the hash of its manifest.

    A frozen version never changes: it exports the same files and manifest later, even after
    new data arrived. Define the cohort again to make a new version.
    """
    with _services(config, data_dir, database_url) as (cohorts, _):
        info = cohorts.freeze(cohort, actor=cli_actor())
    if as_json:
        out.print_json(json.dumps(info.as_json()))
        return
    out.print(
        f"froze cohort {info.ref}: {info.series} series, {info.instances} instances, "
        f"manifest sha256 {info.manifest_sha256}",
        highlight=False,
        soft_wrap=True,
    )


# ---------------------------------------------------------------------------------- list / show


@cohort_app.command("list")
def list_(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List every version of every cohort, with its freeze state."""
    with _services(config, data_dir, database_url) as (cohorts, _):
        infos = cohorts.all_versions()
    if as_json:
        out.print_json(json.dumps([info.as_json() for info in infos]))
        return
    from rich.table import Table

    table = Table(title="cohorts")
    for column in ("cohort", "id", "created", "frozen", "series", "instances", "manifest sha256"):
        table.add_column(column)
    for info in infos:
        table.add_row(*_list_row(info))
    out.print(table)


@cohort_app.command()
def show(
    cohort: CohortArg,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Print a cohort version as JSON (its definition can be edited and given to --file)."""
    with _services(config, data_dir, database_url) as (cohorts, _):
        info = cohorts.get(cohort)
    out.print_json(json.dumps(info.as_json()))


# ---------------------------------------------------------------------------------- export


def export(
    cohort: CohortArg,
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Folder to write into (created; resumed if it holds "
            "an interrupted export of the same cohort and format).",
        ),
    ],
    format_name: Annotated[
        str,
        typer.Option(
            "--format",
            help="dicom: the de-identified files in patient/study/series folders; nifti: one "
            "volume per series; png: windowed slices.",
        ),
    ] = "dicom",
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Export a frozen cohort with its manifests (CSV, Parquet) and dataset.json.

    Interrupted (Ctrl-C, full disk)? Run the same command again: files already written and
    verified are kept.
    """
    from export import FORMATS

    if format_name not in FORMATS:
        raise fail(f"unknown format {format_name!r}: use one of {', '.join(FORMATS)}")
    with _services(config, data_dir, database_url) as (cohorts, exporter), _interruptible():
        frozen = cohorts.frozen(cohort)
        with progress_bar() as progress:
            task = progress.add_task(
                f"{frozen.info.ref} -> {format_name}", total=frozen.instance_count
            )
            summary = exporter.to_folder(
                cohort,
                format_name,
                out_dir,
                actor=cli_actor(),
                progress=lambda n: progress.advance(task, n),
            )
    out.print(
        f"exported cohort {summary.cohort} as {summary.format} to {out_dir}: "
        f"{summary.files:,} files, {summary.bytes / 1e6:,.1f} MB"
        + (f" ({summary.reused_series} series kept from before)" if summary.reused_series else ""),
        highlight=False,
    )
    for what, issues in (("skipped", summary.skipped), ("partly exported", summary.partial)):
        for series_uid, reason in issues:
            out.print(f"{what} series {series_uid}: {reason}", highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------------- helpers


@contextmanager
def _interruptible() -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        raise fail("interrupted; run the same command again to resume the export") from None


def _counts_table(title: str, counts: dict[str, int]) -> None:
    from rich.table import Table

    if not counts:
        return
    table = Table(title=title)
    table.add_column("value")
    table.add_column("count", justify="right")
    for value, count in counts.items():
        table.add_row(str(value), f"{count:,}")
    out.print(table)


def _list_row(info: CohortInfo) -> list[str]:
    return [
        info.ref,
        str(info.id),
        info.created_at.strftime("%Y-%m-%d %H:%M"),
        info.frozen_at.strftime("%Y-%m-%d %H:%M") if info.frozen_at else "no",
        "" if info.series is None else f"{info.series:,}",
        "" if info.instances is None else f"{info.instances:,}",
        info.manifest_sha256 or "",
    ]


SHOWN_KEYS = frozenset(
    {"id", "name", "version", "description", "definition", "created_at", "frozen_at"}
    | {"manifest_sha256", "series", "instances", "projects"}
)
"""The keys of ``pacsnode cohort show --json`` around its ``definition``."""


def _definition_file(path: Path) -> dict[str, Any]:
    """The definition in ``path``: a bare definition, or a cohort as ``show --json`` prints
    it. A key of neither kind is refused (a misspelled one would otherwise be dropped)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail(f"cannot read {path}: {exc}") from None
    if not isinstance(document, dict):
        raise fail(f"{path} holds no JSON object (a cohort definition is one)")
    if "definition" not in document:
        return document
    unknown = sorted(set(document) - SHOWN_KEYS)
    if unknown:
        raise fail(
            f"{path}: unknown key(s) {', '.join(map(repr, unknown))} beside 'definition' "
            "(a cohort as 'pacsnode cohort show --json' prints it has "
            f"{', '.join(sorted(SHOWN_KEYS))})"
        )
    inner = document["definition"]
    if not isinstance(inner, dict):
        raise fail(f"{path}: 'definition' is not a JSON object")
    return dict(inner)


def _date(value: str | None, option: str) -> str | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise fail(f"{option} {value!r} is not a date like 2024-01-31") from None


def _fractions(text: str) -> dict[str, float]:
    fractions: dict[str, float] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            fractions[name.strip()] = float(value)
        except ValueError:
            raise fail(f"--split-fractions: {part!r} is not NAME=FRACTION") from None
    return fractions
