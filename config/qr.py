"""Settings of Query/Retrieve: where C-MOVE and ``pacsnode send`` may send instances, and
where Storage Commitment results go."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator, model_validator

from config.aetitle import check_ae_title


class DicomDestination(BaseModel):
    """A DICOM peer pacsnode may send to (a C-MOVE destination, an Orthanc, a workstation)."""

    model_config = {"extra": "forbid", "frozen": True}

    ae_title: str = Field(description="The peer's AE title (the C-MOVE Move Destination).")
    host: str = Field(description="The peer's host name or address.")
    port: int = Field(ge=1, le=65535, description="The peer's DICOM port.")

    @field_validator("ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        return check_ae_title(value)


class QueryRetrieveSettings(BaseModel):
    """C-FIND, C-MOVE, C-GET and Storage Commitment (section ``[qr]``)."""

    model_config = {"extra": "forbid"}

    destinations: list[DicomDestination] = Field(
        default_factory=list,
        description=(
            "Peers that C-MOVE and `pacsnode send` may send to, each with ae_title, host and "
            "port. A C-MOVE to an AE title not listed is refused (0xA801). A modality's entry "
            "(its AE title as it calls) is also where its Storage Commitment results go."
        ),
    )
    max_find_results: int = Field(
        default=10_000,
        ge=1,
        description=(
            "Most matches one C-FIND may answer; a query matching more is refused with 0xA700 "
            "(Out of resources) and a comment asking for narrower keys, before any match is sent."
        ),
    )
    send_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds to wait for a peer when sending (association, DIMSE).",
    )
    commitment_same_association: bool = Field(
        default=True,
        description=(
            "Storage Commitment: send the result (N-EVENT-REPORT) on the association that "
            "carried the request while the modality keeps it open, and over a new association "
            "to the calling AE title's destination only when that fails; false: always over a "
            "new association (a request from an AE title without a destination is then "
            "refused with 0x0124)."
        ),
    )
    commitment_delay: float = Field(
        default=1.0,
        ge=0,
        description=(
            "Seconds after answering a Storage Commitment N-ACTION before its result may go on "
            "the requesting association: a modality that releases it at once (expecting the "
            "result on a new association) has done so by then. A longer check is not delayed."
        ),
    )
    commitment_timeout: float = Field(
        default=10.0,
        gt=0,
        description=(
            "Seconds to wait for the modality to answer a Storage Commitment result: on the "
            "requesting association (unanswered, it is aborted and a new association is "
            "tried), and over a new association (connection, association, answer)."
        ),
    )

    @model_validator(mode="after")
    def _unique_destinations(self) -> QueryRetrieveSettings:
        titles = [d.ae_title for d in self.destinations]
        duplicated = sorted({t for t in titles if titles.count(t) > 1})
        if duplicated:
            raise ValueError(f"destination AE titles listed twice: {', '.join(duplicated)}")
        return self

    def destination(self, ae_title: str) -> DicomDestination | None:
        """The destination called ``ae_title`` (surrounding spaces ignored), if configured."""
        wanted = ae_title.strip()
        return next((d for d in self.destinations if d.ae_title == wanted), None)
