"""The one ingest pipeline every door calls: :meth:`Ingestor.accept`."""

from ingest.model import Door, Expected, IngestResult, Outcome, ReviewError, Source
from ingest.pipeline import Ingestor, ResultListener

__all__ = [
    "Door",
    "Expected",
    "IngestResult",
    "Ingestor",
    "Outcome",
    "ResultListener",
    "ReviewError",
    "Source",
]
