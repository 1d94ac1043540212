"""Every regular expression that sees text from outside runs in linear time.

Python's ``re`` backtracks: a pattern that can start at many places of a long run and scan
to its end each time is quadratic (one 500,000-character HL7 report held the whole node for
255 s), one with two adjacent ``\\s*`` is cubic. The rule these tests hold the code to: an
unbounded repetition that can begin a match is guarded (a look-behind keeps it from starting
inside a run it could have started earlier), and a repetition that must never give back what
it took is possessive (``*+``, ``++``).

Each module-level pattern of the modules that read report text, HL7 fields, CSV cells, DICOM
values or HTTP input, and the patterns built at run time from the shipped label tasks, is run
over adversarial texts: a literal of the pattern (or nothing) followed by a short unit
repeated (``"1x1x1x..."``, ``"name" + " " * n``). A screen on short texts finds the slowest
inputs of each pattern; those are then grown to 1,000,000 characters, and each size must take
no more than a linear budget (half a second at a million characters). A quadratic pattern
fails at a few thousand characters, before it takes long.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import re
import time
from collections.abc import Callable, Iterator
from datetime import date
from types import ModuleType

import pytest

from deid.clean import TextCleaner
from labeling.extract import Extractor
from labeling.tasks import load_tasks
from labeling.textdeid import Identifiers, deidentify_text

MODULES = (
    "labeling.textdeid",
    "labeling.extract",
    "labeling.vocabulary",
    "labeling.oru",
    "labeling.files",
    "labeling.tasks",
    "deid.clean",
    "deid.check",
    "deid.engine",
    "deid.pseudonym",
    "config.deid",
    "ingest.pipeline",
    "scp.retrieve",
    "scp.find",
    "jobs.orthanc",
    "export.definition",
    "export.query",
    "export.sequences",
    "export.writers.base",
    "catalog.attributes",
    "catalog.dicomjson",
    "catalog.normalize",
)
"""Modules whose patterns see outside text (``dicomweb/media.py`` and ``catalog/query.py``
are covered by their own tests)."""

ALPHABET = ("a", "A", "1", " ", ".", "-", "@", "/", "x", ":", "(", "+", ",", "_", "中", "\n")
PREFIXES = (
    "name",
    "Patient",
    "Dr.",
    "mrn",
    "患者",
    "报告医师",
    "病历号",
    "birads",
    "bi-",
    "lung-rads",
    "li-rads",
    "lr-",
    "+86",
    "+1",
    "1",
    "1.5",
    "12345678901",
    "a@",
    "a@b",
    "(",
    "impression",
    "2024",
)
BUDGET_FLOOR = 0.01
BUDGET_PER_CHAR = 0.5e-6
"""Seconds allowed: the floor plus this per character (0.5 s at 1,000,000 characters)."""
SIZES = (4_000, 32_000, 256_000, 1_000_000)


def _patterns_in(value: object) -> Iterator[re.Pattern[str]]:
    if isinstance(value, re.Pattern):
        yield value
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _patterns_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _patterns_in(item)


def _module_patterns(module: ModuleType) -> Iterator[tuple[str, re.Pattern[str]]]:
    for name, value in vars(module).items():
        for number, pattern in enumerate(_patterns_in(value)):
            yield f"{module.__name__}.{name}[{number}]", pattern


def _all_patterns() -> list[tuple[str, re.Pattern[str]]]:
    found = [
        item for module in MODULES for item in _module_patterns(importlib.import_module(module))
    ]
    extractor = Extractor(load_tasks(None))
    found.append(("Extractor headings", extractor._headings))
    for name, (pattern, _) in extractor._categories.items():
        found.append((f"task category {name}", pattern))
    for name in ("_word_pattern", "_other_pattern"):
        if (pattern := getattr(extractor.vocabulary, name)) is not None:
            found.append((f"vocabulary {name}", pattern))
    return found


PATTERNS = _all_patterns()


def _literals(pattern: re.Pattern[str]) -> list[str]:
    """Some words the pattern spells out, to put in front of the repeated unit."""
    source = pattern.pattern if isinstance(pattern.pattern, str) else pattern.pattern.decode()
    words = re.findall(r"[a-z]{2,}|[\u3400-\u9fff]{2,}", source)
    return list(dict.fromkeys(words))[:12]


def _seeds(pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    """(prefix, unit) pairs: every unit of one or two characters, and prefixes with a
    single-character unit."""
    units = [*ALPHABET, *("".join(pair) for pair in itertools.product(ALPHABET, repeat=2))]
    seeds = [("", unit) for unit in units]
    for prefix in (*PREFIXES, *_literals(pattern)):
        seeds.extend((prefix, unit) for unit in ALPHABET)
    return seeds


def _text(prefix: str, unit: str, size: int) -> str:
    return prefix + unit * ((size - len(prefix)) // len(unit) + 1)


def _run(pattern: re.Pattern[str], text: str) -> float:
    subject: str | bytes = text if isinstance(pattern.pattern, str) else text.encode()
    started = time.perf_counter()
    for _ in pattern.finditer(subject):  # type: ignore[arg-type]
        pass
    pattern.fullmatch(subject)  # type: ignore[arg-type]
    return time.perf_counter() - started


def _budget(size: int) -> float:
    return BUDGET_FLOOR + BUDGET_PER_CHAR * size


def _within_budget(run: Callable[[], float], size: int, budget: float | None = None) -> float:
    """The time of ``run``; a second and third try when the first is over budget (another
    process may have had the CPU), the best of them."""
    budget = _budget(size) if budget is None else budget
    best = run()
    for _ in range(2):
        if best <= budget:
            break
        best = min(best, run())
    return best


@pytest.mark.parametrize(("name", "pattern"), PATTERNS, ids=[name for name, _ in PATTERNS])
def test_pattern_runs_in_linear_time_on_adversarial_text(
    name: str, pattern: re.Pattern[str]
) -> None:
    screened = sorted(
        (
            (_run(pattern, _text(prefix, unit, 500)), prefix, unit)
            for prefix, unit in _seeds(pattern)
        ),
        reverse=True,
    )
    slowest = [(prefix, unit) for _, prefix, unit in screened[:6]]
    for step, size in enumerate(SIZES):
        for prefix, unit in slowest[: max(1, len(slowest) >> step)]:
            text = _text(prefix, unit, size)
            seconds = _within_budget(functools.partial(_run, pattern, text), size)
            assert seconds <= _budget(size), (
                f"{name} took {seconds:.3f} s on {size:,} characters "
                f"({prefix!r} + {unit!r} repeated); budget {_budget(size):.3f} s"
            )


# ------------------------------------------------------------------ whole text passes

UNITS = (
    "a",
    "1x",
    "a@",
    "a.",
    "ab",
    "1 ",
    "Dr. Smith ",
    "Zhang Wei ",
    "肝癌、",
    "(右乳肿物)",
    "no ",
    "mass, ",
    "肝 肿块 ",
    "lung nodule 5 mm. ",
    "liver metastasis and ",
    "birads 4 ",
    "1.5 x 2 cm ",
)
"""Report-like and adversarial texts: repeated phrases make clauses of thousands of them."""
LONG = ("a " * 5000)[:-1] + "b"
"""An identifier no standard allows (10,000 characters) that nearly matches everywhere."""


def _ladder(work: Callable[[str], object], sizes: tuple[int, ...], per_char: float) -> None:
    for unit in UNITS:
        for size in sizes:
            text = _text("", unit, size)

            def run(text: str = text) -> float:
                started = time.perf_counter()
                work(text)
                return time.perf_counter() - started

            budget = 0.05 + per_char * size
            seconds = _within_budget(run, size, budget)
            assert seconds <= budget, (
                f"{size:,} characters of {unit!r} took {seconds:.2f} s; budget {budget:.2f} s"
            )


def test_report_text_deidentification_is_linear() -> None:
    identifiers = Identifiers(
        patient_ids=("MRN884213", LONG),
        names=("Zhang^Wei", f"{LONG}^{LONG}"),
        accession_numbers=("CT2024031500123",),
        birth_date=date(1961, 7, 4),
    )
    _ladder(lambda text: deidentify_text(text, identifiers, 30), (16_000, 256_000), 8e-6)


def test_dicom_text_cleaning_is_linear_whatever_the_number_of_identifiers() -> None:
    words = ("".join(chr(97 + (i * 7 + j * 3) % 26) for j in range(20)) for i in range(2000))
    cleaner = TextCleaner([*words, LONG, "DOE^JOHN", "张伟"])
    _ladder(cleaner.clean, (16_000, 256_000), 5e-6)


def test_label_extraction_is_linear() -> None:
    extractor = Extractor(load_tasks(None))
    _ladder(lambda text: extractor.extract(text, "pathology"), (5_000, 40_000), 60e-6)
