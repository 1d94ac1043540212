"""Where pynetdicom writes a C-STORE data set as it arrives: memory, then an encrypted spool.

pynetdicom's chunked receive (``_config.STORE_RECV_CHUNKED_DATASET``) writes each data set
to a ``NamedTemporaryFile`` in the clear (PHI on disk before de-identification), and
without it the whole data set is held in memory (a 1 GB instance: 1 GB, then more while
it is parsed and encoded). pynetdicom decides which when the command set arrives, before
the size is known, so the chunked receive is on (for the node's own AEs only) and its file factory
(``pynetdicom.dimse_messages.NamedTemporaryFile``, the only hook it has) is replaced by
:class:`ReceiveBuffer`: bytes stay in memory up to a threshold, and beyond it everything
goes to an :class:`ingest.spool.EncryptedSpool` in the spool folder (named, so ``pacsnode
verify`` finds what a crash leaves). The store handler takes the buffer by the path
pynetdicom gives it (:func:`take`); the spool is removed when the handler ends, whatever
its outcome, and :func:`discard_partial` removes the spool of a data set whose
association ended before its last fragment.
"""

from __future__ import annotations

import io
import threading
import weakref
from pathlib import Path

from pynetdicom import AE, dimse_messages
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

from ingest.spool import EncryptedSpool, spool_path

_SLICE = 1 << 20
_live: dict[str, ReceiveBuffer] = {}
_lock = threading.Lock()
_receivers: weakref.WeakKeyDictionary[AE, tuple[Path, int]] = weakref.WeakKeyDictionary()


class ReceiveBuffer:
    """A write-only file for pynetdicom: memory up to ``threshold`` bytes, then a spool."""

    def __init__(self, folder: Path, threshold: int) -> None:
        self._path = spool_path(folder)
        self.name = str(self._path)  # pynetdicom makes its ``dataset_path`` of it
        self.file = self  # pynetdicom flushes ``.file``
        self._threshold = threshold
        self._memory: io.BytesIO | None = io.BytesIO()
        self.spool: EncryptedSpool | None = None
        self._closed = False
        self._lock = threading.Lock()
        with _lock:
            _live[self.name] = self

    def write(self, data: bytes) -> int:
        with self._lock:
            if self._closed:
                return len(data)  # the association ended meanwhile: nothing to keep
            if self.spool is not None:
                return self.spool.write(data)
            assert self._memory is not None
            self._memory.write(data)
            if self._memory.tell() > self._threshold:
                self.spool = EncryptedSpool(path=self._path)
                with self._memory.getbuffer() as held:
                    for start in range(0, len(held), _SLICE):
                        self.spool.write(held[start : start + _SLICE])  # one copy at a time
                self._memory = None
            return len(data)

    def flush(self) -> None:
        """Nothing to do: a spool is read back through the same file."""

    def getvalue(self) -> bytes:
        """The data set, when it stayed in memory."""
        assert self._memory is not None
        return self._memory.getvalue()

    def close(self) -> None:
        """Forget the data set and remove its spool (again: nothing)."""
        with _lock:
            _live.pop(self.name, None)
        with self._lock:
            self._closed = True
            self._memory = None
            if self.spool is not None:
                self.spool.close()


def install(ae: AE, folder: Path, threshold: int) -> None:
    """Make pynetdicom receive the C-STORE data sets of ``ae``'s associations into a
    :class:`ReceiveBuffer` with that spool folder and threshold. Every other AE of the
    process (a test's own receiver, say) keeps pynetdicom's default: the data set in memory,
    read by its handlers through ``event.dataset``."""
    with _lock:
        _receivers[ae] = (folder, threshold)
    pynetdicom_config.STORE_RECV_CHUNKED_DATASET = _CHUNKED  # type: ignore[assignment]
    dimse_messages.NamedTemporaryFile = _factory  # type: ignore[attr-defined,assignment]


def _receiver() -> tuple[Path, int] | None:
    """The spool folder and threshold of the association being decoded on this thread, if
    its AE installed one: pynetdicom decodes P-DATA on the association's DUL thread."""
    thread = threading.current_thread()
    if not isinstance(thread, DULServiceProvider):
        return None
    with _lock:
        return _receivers.get(thread.assoc.ae)


class _ChunkedForInstalledAEs:
    """pynetdicom's ``STORE_RECV_CHUNKED_DATASET``, which it tests once per C-STORE request
    as it starts decoding one: true only for the associations of an installed AE."""

    def __bool__(self) -> bool:
        return _receiver() is not None


_CHUNKED = _ChunkedForInstalledAEs()


def _factory(*_args: object, **_kwargs: object) -> ReceiveBuffer:
    receiver = _receiver()
    if receiver is None:  # the AE was collected between the test and now
        raise RuntimeError("no spool for this association")
    return ReceiveBuffer(*receiver)


def take(path: Path | None) -> ReceiveBuffer | None:
    """The buffer pynetdicom named ``path`` (a C-STORE request's ``dataset_path``)."""
    with _lock:
        return _live.get(str(path)) if path is not None else None


def discard_partial(assoc: Association) -> None:
    """Remove the buffer of a data set ``assoc`` was receiving when it ended (an abort
    mid-transfer: pynetdicom drops its message and never closes the file)."""
    message = getattr(assoc.dimse, "message", None)
    buffer = getattr(message, "_data_set_file", None)
    if isinstance(buffer, ReceiveBuffer):
        buffer.close()
