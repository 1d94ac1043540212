"""Limits of ``pacsnode import`` (section ``[imports]``, environment ``PACSNODE_IMPORTS__*``).

Archives are expanded member by member, and a member is held in memory only while it is
ingested: these bound what one file or one zip (a zip bomb) can cost.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class ImportSettings(BaseModel):
    """How much a file or zip archive given to ``pacsnode import`` may expand to."""

    model_config = {"extra": "forbid"}

    max_file_bytes: int = Field(
        default=2_000_000_000,
        ge=1,
        description=(
            "Largest file or zip member imported (it is held in memory while ingested, as a "
            "STOW-RS body is); larger ones are refused."
        ),
    )
    max_archive_bytes: int = Field(
        default=20_000_000_000,
        ge=1,
        description=(
            "Most bytes one zip archive given to import may expand to, nested archives and "
            "their members included; members beyond it are refused."
        ),
    )
    max_zip_depth: int = Field(
        default=4,
        ge=1,
        description=(
            "How many zip archives deep import reads (1: the members of a zip, not the zips "
            "inside it); deeper archives are refused."
        ),
    )
