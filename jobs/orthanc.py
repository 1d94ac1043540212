"""The source Orthanc, through orthanc-api-client, with timeouts and retries with backoff.

Orthanc identifies resources by a hash of their original identifiers (PatientID,
StudyInstanceUID, ...), so these IDs are used in requests but never logged or stored.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orthanc_api_client.exceptions as orthanc_errors
import requests
from orthanc_api_client import OrthancApiClient
from orthanc_api_client.change import ChangeType
from urllib3.exceptions import ReadTimeoutError

from config import OrthancSyncSettings
from jobs.context import JobFailedError, JobInterruptedError

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_UNCOMPRESSED = {"Accept-Encoding": "identity"}
ORTHANC_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")
"""What an Orthanc resource ID looks like (a SHA-1 in five groups)."""


class OrthancUnavailableError(JobFailedError):
    """Orthanc did not answer usefully (down, 5xx, timeout) within the retries."""


class OrthancRefusedError(JobFailedError):
    """Orthanc refused the request (credentials, permissions, bad request): retrying will
    not help."""


class OrthancNotFoundError(JobFailedError):
    """The resource is not (or no longer) in Orthanc."""


@dataclass(frozen=True)
class OrthancChange:
    """One entry of Orthanc's change log."""

    seq: int
    change_type: str
    resource_id: str

    @property
    def is_stable_study(self) -> bool:
        return bool(self.change_type == ChangeType.STABLE_STUDY)


@dataclass(frozen=True)
class ChangePage:
    changes: list[OrthancChange]
    last: int
    done: bool


class OrthancSource:
    """One source Orthanc, as the sync job reads it.

    Every request waits at most ``settings.timeout`` seconds and is retried
    ``settings.retries`` times when Orthanc is unreachable, answers 5xx or times out, after
    ``backoff``, ``2 * backoff``, ``4 * backoff``... seconds; waiting stops early when
    ``stop`` is set.
    """

    PAGE = 100  # changes per /changes request

    def __init__(self, settings: OrthancSyncSettings, stop: threading.Event) -> None:
        self.url = settings.url
        self.settings = settings
        self._stop = stop
        password = settings.password.get_secret_value() if settings.password else None
        self._client = OrthancApiClient(settings.url, user=settings.username, pwd=password)

    @property
    def remote(self) -> str:
        """``host:port`` of the source, as ingest records where instances came from."""
        return urlsplit(self.url).netloc.rpartition("@")[2]

    def close(self) -> None:
        self._client.close()

    def changes(self, since: int) -> ChangePage:
        """Up to :attr:`PAGE` changes after ``since``."""
        answer = self._json("GET /changes", "changes", params={"since": since, "limit": self.PAGE})
        return ChangePage(
            changes=[
                OrthancChange(int(item["Seq"]), str(item.get("ChangeType")), str(item.get("ID")))
                for item in answer.get("Changes", [])
            ],
            last=int(answer.get("Last", since)),
            done=bool(answer.get("Done", True)),
        )

    def last_change(self) -> int:
        """The sequence number of Orthanc's newest change (0 when its log is empty)."""
        return int(self._json("GET /changes?last", "changes", params={"last": ""}).get("Last", 0))

    def study_instances(self, study_id: str) -> list[str]:
        """The Orthanc IDs of a study's instances."""
        answer = self._json("GET /studies/{id}/instances", f"studies/{study_id}/instances")
        return [str(item["ID"]) for item in answer]

    def instance_file(self, instance_id: str) -> bytes:
        """The DICOM file of an instance, as Orthanc stored it.

        Asked for uncompressed: requests accepts gzip by default, and Orthanc then deflates
        every file on the fly (about 90 ms for a 512 KB CT slice, 20 times the transfer).
        """
        return bytes(
            self._call(
                "GET /instances/{id}/file",
                lambda: self._client.get_binary(
                    f"instances/{instance_id}/file",
                    timeout=self.settings.timeout,
                    headers=_UNCOMPRESSED,
                ),
            )
        )

    def find_study(self, study: str) -> str:
        """The Orthanc ID of a study given by Orthanc ID or by Study Instance UID."""
        if ORTHANC_ID.match(study):
            return study
        found = self._call(
            "POST /tools/lookup",
            lambda: self._client.post(
                "tools/lookup", data=study, timeout=self.settings.timeout
            ).json(),
        )
        for item in found:
            if item.get("Type") == "Study":
                return str(item["ID"])
        raise OrthancNotFoundError(f"no such study in the Orthanc at {self.url}")

    def _json(self, what: str, endpoint: str, params: dict[str, Any] | None = None) -> Any:
        return self._call(
            what,
            lambda: self._client.get_json(endpoint, params=params, timeout=self.settings.timeout),
        )

    def _call(self, what: str, request: Callable[[], _T]) -> _T:
        """``request()``, retried with backoff on the failures retrying can cure."""
        attempts = self.settings.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return request()
            except orthanc_errors.ResourceNotFound:
                raise OrthancNotFoundError(f"{what}: not in the Orthanc at {self.url}") from None
            except orthanc_errors.HttpError as exc:
                status = exc.http_status_code
                if status is None or int(status) < 500:
                    raise OrthancRefusedError(
                        f"{what}: the Orthanc at {self.url} answered HTTP {status}"
                    ) from None
                problem = f"answered HTTP {status}"
            except (orthanc_errors.TimeoutError, orthanc_errors.ConnectionError) as exc:
                if _timed_out(exc):
                    problem = f"did not answer within {self.settings.timeout:g} s"
                else:
                    problem = "cannot be reached"
            except orthanc_errors.OrthancApiException as exc:
                problem = f"failed ({type(exc).__name__})"
            if attempt == attempts:
                raise OrthancUnavailableError(
                    f"{what}: the Orthanc at {self.url} {problem} ({attempts} attempts)"
                )
            delay = self.settings.backoff * 2 ** (attempt - 1)
            log.warning(
                "%s: the Orthanc at %s %s (attempt %d of %d); retrying in %.1f s",
                what,
                self.url,
                problem,
                attempt,
                attempts,
                delay,
            )
            if self._stop.wait(delay):
                raise JobInterruptedError("the node is stopping")
        raise AssertionError("unreachable")


def _timed_out(error: BaseException) -> bool:
    """Whether a failed request timed out. orthanc-api-client reports a read timeout that its
    own retries (urllib3's) gave up on as a connection error; the cause tells them apart."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, orthanc_errors.TimeoutError | requests.Timeout | ReadTimeoutError):
            return True
        reason = getattr(seen.args[0], "reason", None) if seen.args else None
        if isinstance(reason, ReadTimeoutError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
