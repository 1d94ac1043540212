"""C-STORE response status for each ingest outcome (PS3.4 Annex B.2.3, PS3.7 Annex C)."""

from __future__ import annotations

import enum

from pydicom.dataset import Dataset

from ingest import IngestResult, Outcome


class StoreStatus(enum.IntEnum):
    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700  # Refused: Out of Resources - the SCU should retry later
    DATA_SET_MISMATCH = 0xA900  # Error: Data Set does not match SOP Class
    CANNOT_UNDERSTAND = 0xC000  # Error: Cannot understand
    REFUSED_BY_POLICY = 0xC001  # Error: Cannot understand (sub-code: refused by de-id policy)
    PROCESSING_FAILURE = 0x0110  # Failure: Processing failure (PS3.7 C.4)


C_STORE_STATUS: dict[Outcome, StoreStatus] = {
    Outcome.STORED: StoreStatus.SUCCESS,
    Outcome.REPLACED: StoreStatus.SUCCESS,
    Outcome.DUPLICATE: StoreStatus.SUCCESS,
    Outcome.REJECTED_INVALID: StoreStatus.CANNOT_UNDERSTAND,
    Outcome.REJECTED_MISMATCH: StoreStatus.DATA_SET_MISMATCH,
    Outcome.REJECTED_DEID: StoreStatus.REFUSED_BY_POLICY,
    Outcome.FAILED_STORAGE: StoreStatus.OUT_OF_RESOURCES,
    Outcome.FAILED_INDEX: StoreStatus.OUT_OF_RESOURCES,
    Outcome.FAILED_INTERNAL: StoreStatus.PROCESSING_FAILURE,
}

_ERROR_COMMENT_LENGTH = 64  # LO


def store_response(result: IngestResult) -> Dataset:
    """The C-STORE response: Status, and an Error Comment saying why when it failed."""
    response = Dataset()
    response.Status = int(C_STORE_STATUS[result.outcome])
    if not result.outcome.success and result.reason:
        response.ErrorComment = result.reason[:_ERROR_COMMENT_LENGTH]
    return response


class QueryRetrieveStatus(enum.IntEnum):
    """C-FIND, C-MOVE and C-GET statuses (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4)."""

    SUCCESS = 0x0000
    PENDING = 0xFF00
    CANCEL = 0xFE00
    WARNING_SUB_OPERATIONS = 0xB000  # some sub-operations failed (set by pynetdicom)
    OUT_OF_RESOURCES = 0xA700  # C-FIND: too many matches, or the catalog cannot answer now
    CANNOT_COUNT_MATCHES = 0xA701  # C-MOVE/C-GET: the catalog cannot answer now
    CANNOT_PERFORM_SUB_OPERATIONS = 0xA702  # C-MOVE/C-GET: too many matches
    MOVE_DESTINATION_UNKNOWN = 0xA801
    IDENTIFIER_DOES_NOT_MATCH = 0xA900  # level or unique keys wrong for the model
    UNABLE_TO_PROCESS = 0xC000  # a key the node cannot match on, or an unreadable identifier


def status_dataset(status: QueryRetrieveStatus, comment: str) -> Dataset:
    """A response status with an Error Comment (never a value from the request)."""
    response = Dataset()
    response.Status = int(status)
    response.ErrorComment = comment[:_ERROR_COMMENT_LENGTH]
    return response
