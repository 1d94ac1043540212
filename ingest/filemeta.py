"""Where a Part 10 file meta ends, read from the bytes without pydicom (the common case)."""

from __future__ import annotations

import struct
from typing import Final

from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

_TAG: Final = struct.Struct("<HH")
_LENGTH_16: Final = struct.Struct("<H")
_LENGTH_32: Final = struct.Struct("<L")
_VRS: Final = frozenset(vr.value for vr in VR)
_UNDEFINED_LENGTH: Final = 0xFFFFFFFF


def group_after_meta(raw: bytes) -> int | None:
    """The group of the first element after the file meta of ``raw``, read as pydicom reads
    a meta (explicit VR little endian); ``None`` where there is no meta or it is unusual (an
    unknown VR, an undefined length, a short stream): pydicom's own reader decides then."""
    if raw[128:132] != b"DICM":
        return None
    position = 132
    while position + 8 <= len(raw):
        group, _element = _TAG.unpack_from(raw, position)
        if group != 2:
            return int(group)
        vr = raw[position + 4 : position + 6].decode("latin-1")
        if vr not in _VRS:
            return None
        if vr in EXPLICIT_VR_LENGTH_32:
            if position + 12 > len(raw):
                return None
            (length,) = _LENGTH_32.unpack_from(raw, position + 8)
            if length == _UNDEFINED_LENGTH:
                return None
            position += 12 + length
        else:
            (length,) = _LENGTH_16.unpack_from(raw, position + 6)
            position += 8 + length
    return None
