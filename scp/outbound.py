"""What every outbound transfer shares (C-MOVE, C-GET, ``pacsnode send``): stored instances
read back as data sets, and the presentation contexts that carry them as they are stored."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext

from catalog import StoredInstance
from storage import BlobStore

MAX_CONTEXTS = 128  # presentation contexts one association may propose (PS3.8 9.3.2.2)


def load_dataset(blobs: BlobStore, instance: StoredInstance) -> Dataset:
    """The stored file of ``instance`` as a data set, with its file meta (transfer syntax).

    Raises ``storage.BlobNotFoundError`` when its blob is gone, and pydicom's errors when the
    blob cannot be read.
    """
    with blobs.open(instance.blob_key) as stream:
        # pydicom seeks; an S3 object is a stream that cannot
        return dcmread(stream if stream.seekable() else BytesIO(stream.read()))


def unsendable(instance: StoredInstance) -> Dataset:
    """A stand-in for an instance whose blob cannot be read: it names the instance but has no
    transfer syntax, so pynetdicom fails its C-STORE sub-operation and lists its UID in the
    Failed SOP Instance UID List, as the standard asks."""
    placeholder = Dataset()
    placeholder.SOPClassUID = instance.sop_class_uid
    placeholder.SOPInstanceUID = instance.sop_instance_uid
    return placeholder


def storage_contexts(instances: Iterable[StoredInstance]) -> list[PresentationContext]:
    """Contexts that carry ``instances`` as stored, without transcoding.

    One context per SOP class and stored transfer syntax, so that the peer can take each
    instance exactly as it is; then, per SOP class stored uncompressed, one context offering
    explicit and implicit VR little endian, in case the peer accepts neither stored syntax
    (pynetdicom converts losslessly between uncompressed syntaxes). At most
    :data:`MAX_CONTEXTS`, exact ones first.
    """
    exact: dict[tuple[str, str], None] = {}
    uncompressed: dict[str, None] = {}
    for instance in instances:
        exact[instance.sop_class_uid, instance.transfer_syntax_uid] = None
        if not UID(instance.transfer_syntax_uid).is_compressed:
            uncompressed[instance.sop_class_uid] = None
    contexts = [build_context(sop_class, [syntax]) for sop_class, syntax in exact]
    contexts += [
        build_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        for sop_class in uncompressed
    ]
    return contexts[:MAX_CONTEXTS]


def set_nodelay(assoc: Association) -> None:
    """Send each PDU at once: with Nagle's algorithm on, every response or C-STORE waits for
    the peer's delayed ACK (about 40 ms on Linux)."""
    raw = getattr(assoc.dul.socket, "socket", None)
    if raw is not None:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def on_connection_open(event: Event) -> None:
    """``EVT_CONN_OPEN`` handler of outbound associations: see :func:`set_nodelay`."""
    set_nodelay(event.assoc)
