"""Class balancing and the patient-level, stratified train/validation/test split.

Both are pure functions of the matched rows and a seed: the same catalog content and the same
definition always give the same cohort.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

from export.definition import Balance
from export.query import SeriesRow

UNGROUPED = ""
"""The stratum of a patient without a value for the split's grouping."""


def balance(rows: Sequence[SeriesRow], spec: Balance, seed: int) -> list[SeriesRow]:
    """Keep the same number of series per class (``undersample``: the smallest class's
    count; ``cap``: at most ``spec.cap``). Series without a class are left out.

    Which series of a larger class are kept is drawn with ``seed``; the result keeps the
    input order.
    """
    by_class: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        value = row.group(spec.by)
        if value is not None:
            by_class[value].append(index)
    if not by_class:
        return []
    if spec.mode == "undersample":
        quota = min(len(members) for members in by_class.values())
    else:
        assert spec.cap is not None  # checked by Balance
        quota = spec.cap
    keep: set[int] = set()
    rng = random.Random(f"balance:{seed}")
    for value in sorted(by_class):
        members = by_class[value]
        keep.update(members if len(members) <= quota else rng.sample(members, quota))
    return [row for index, row in enumerate(rows) if index in keep]


def split(
    rows: Sequence[SeriesRow], fractions: Mapping[str, float], by: str | None, seed: int
) -> list[SeriesRow]:
    """Assign every row a split so that all series of a patient share one split.

    Patients are stratified by their most frequent class of ``by`` (ties: the smallest
    value); within each stratum they are shuffled with ``seed`` and each goes to the split
    furthest below its share of that stratum's series. Each split thus gets about its
    fraction of every class, and no patient is in two splits.
    """
    names = list(fractions)
    per_patient: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        per_patient[row.patient_id].append(index)
    strata: dict[str, list[str]] = defaultdict(list)
    for patient, indices in per_patient.items():
        strata[_stratum([rows[i] for i in indices], by)].append(patient)

    rng = random.Random(f"split:{seed}")
    assignment: dict[str, str] = {}
    for stratum in sorted(strata):
        patients = sorted(strata[stratum])
        rng.shuffle(patients)
        total = sum(len(per_patient[p]) for p in patients)
        given: Counter[str] = Counter()
        for patient in patients:
            size = len(per_patient[patient])
            # the split with the largest shortfall against its target, first name on ties
            target = max(
                names,
                key=lambda name: (fractions[name] * total - given[name], -names.index(name)),
            )
            assignment[patient] = target
            given[target] += size
    return [row.with_split(assignment[row.patient_id]) for row in rows]


def _stratum(rows: Sequence[SeriesRow], by: str | None) -> str:
    if by is None:
        return UNGROUPED
    counts = Counter(value for row in rows if (value := row.group(by)) is not None)
    if not counts:
        return UNGROUPED
    return min(counts, key=lambda value: (-counts[value], value))
