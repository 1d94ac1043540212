"""Read the tables ``pacsnode import`` prints."""

from __future__ import annotations

from collections import Counter


def import_outcomes(summary: str) -> Counter[str]:
    """Outcome -> files, from the import summary table (and reason -> files from the table
    of reasons: both are two-column rows of text and a count)."""
    counts: Counter[str] = Counter()
    for line in summary.splitlines():
        cells = [cell.strip() for cell in line.strip("│┃ ").replace("┃", "│").split("│")]
        if len(cells) == 2 and cells[1].replace(",", "").isdigit():
            counts[cells[0]] += int(cells[1].replace(",", ""))
    return counts
