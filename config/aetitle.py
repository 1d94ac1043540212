"""DICOM Application Entity titles (PS3.5 AE value representation)."""

from __future__ import annotations


def check_ae_title(value: str) -> str:
    """Return ``value`` if it is a valid AE title (PS3.5 AE VR), else raise ``ValueError``."""
    stripped = value.strip()
    if not stripped or len(stripped) > 16 or "\\" in stripped or not stripped.isprintable():
        raise ValueError(f"invalid AE title {value!r}: 1 to 16 printable characters, no backslash")
    return stripped
