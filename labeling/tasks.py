"""Label task definitions: a versioned TOML file (``labeling/data/tasks.toml`` by default)."""

from __future__ import annotations

import re
import tomllib
import unicodedata
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_TASKS_FILE = Path(__file__).parent / "data" / "tasks.toml"
CLASSES = (1, 0, 2, -1)
"""Every task answers with one of these; the order is the precedence inside one report."""

ReportType = Literal["radiology", "pathology"]


class TaskFileError(ValueError):
    """The task file cannot be used; the message names the file and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def normalise(text: str) -> str:
    """The form every phrase and every report is matched in: NFKC, lower case."""
    return unicodedata.normalize("NFKC", text).lower()


class Phrases(_Strict):
    zh: tuple[str, ...] = ()
    en: tuple[str, ...] = ()

    @field_validator("zh", "en")
    @classmethod
    def _normalised(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(normalise(v).strip() for v in values if v.strip())

    def all(self) -> tuple[str, ...]:
        return self.zh + self.en


class ClassDefinition(Phrases):
    meaning: str = ""
    meaning_zh: str = ""
    """The meaning in Chinese (the dashboard's other language)."""


class Category(_Strict):
    """A reporting system's category in the text (BI-RADS, Lung-RADS, LI-RADS)."""

    system: str
    pattern: str
    classes: dict[str, int]
    hints: tuple[str, ...] = ()
    """Substrings one of which a text must hold for the pattern to be tried (speed)."""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            if re.compile(value).groups != 1:
                raise ValueError("the pattern needs exactly one group (the category value)")
        except re.error as exc:
            raise ValueError(f"invalid pattern: {exc}") from None
        return value

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, values: dict[str, int]) -> dict[str, int]:
        for key, value in values.items():
            if value not in CLASSES:
                raise ValueError(f"category {key!r} maps to unknown class {value}")
        return {key.lower(): value for key, value in values.items()}


class TaskDefinition(_Strict):
    name: str = ""
    description: str = ""
    description_zh: str = ""
    precedence: tuple[ReportType, ...] = ("pathology", "radiology")
    review_below: float = Field(default=0.75, ge=0, le=1)
    radiology_malignant_requires_category: tuple[str, ...] = ()
    site: Phrases = Phrases()
    exclude: Phrases = Phrases()
    category: Category | None = None
    classes: dict[int, ClassDefinition]

    @field_validator("classes")
    @classmethod
    def _all_classes(cls, values: dict[int, ClassDefinition]) -> dict[int, ClassDefinition]:
        if set(values) != set(CLASSES):
            raise ValueError(f"classes must be exactly {sorted(CLASSES)}, got {sorted(values)}")
        return values

    def meanings(self) -> dict[int, str]:
        return {value: self.classes[value].meaning for value in CLASSES}


class Triggers(_Strict):
    negation_pre: tuple[str, ...]
    negation_post: tuple[str, ...]
    uncertainty_pre: tuple[str, ...]
    uncertainty_post: tuple[str, ...]
    history_pre: tuple[str, ...]
    history_post: tuple[str, ...]
    terminators: tuple[str, ...]
    pseudo: tuple[str, ...]

    @field_validator("*")
    @classmethod
    def _normalised(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(normalise(v).strip() for v in values if v.strip())


class Generic(_Strict):
    classes: dict[int, Phrases]
    other_sites: tuple[str, ...] = ()

    @field_validator("other_sites")
    @classmethod
    def _normalised(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(normalise(v).strip() for v in values if v.strip())


class Sections(_Strict):
    conclusion: tuple[str, ...]
    history: tuple[str, ...]
    findings: tuple[str, ...]


class Matching(_Strict):
    fuzzy_cutoff: float = Field(default=88, ge=50, le=100)
    min_word_length: int = Field(default=6, ge=3)


class TaskSet(_Strict):
    """Every task of a node, with the shared vocabulary, as read from one task file."""

    version: str
    matching: Matching = Matching()
    generic: Generic
    triggers: Triggers
    sections: Sections
    tasks: dict[str, TaskDefinition]

    @field_validator("tasks")
    @classmethod
    def _named(cls, values: dict[str, TaskDefinition]) -> dict[str, TaskDefinition]:
        if not values:
            raise ValueError("no tasks defined")
        for name in values:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name):
                raise ValueError(f"task name {name!r}: lower-case letters, digits and _ only")
        return {name: task.model_copy(update={"name": name}) for name, task in values.items()}


def load_tasks(path: Path | None = None) -> TaskSet:
    """Read and check a task file (default: the shipped one)."""
    path = path or DEFAULT_TASKS_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TaskFileError(f"task file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TaskFileError(f"task file {path}: {exc}") from None
    try:
        return TaskSet.model_validate(data)
    except ValidationError as exc:
        raise TaskFileError(f"task file {path}: {exc}") from None
