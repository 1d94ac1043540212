"""Reading an element of a data set without reading a value pydicom deferred.

A large instance is parsed with pydicom's ``defer_size``: its pixel data stays in the spool
as a raw element with no value (:mod:`ingest.spooled`). ``Dataset.get_item`` would read it
(a gigabyte); ``keep_deferred=True`` alone would also leave empty raw elements unconverted,
which ``get_item`` converts. :func:`element_of` keeps only the deferred ones as they are.
"""

from __future__ import annotations

from typing import TypeGuard

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import TagType


def element_of(ds: Dataset, tag: TagType) -> DataElement | RawDataElement:
    """``ds.get_item(tag)``, except that a deferred value (one with a length) is not read;
    ``KeyError`` when ``ds`` has no such element."""
    element = ds.get_item(tag, keep_deferred=True)
    if element is None:
        raise KeyError(tag)
    if isinstance(element, RawDataElement) and element.value is None and not element.length:
        return ds[tag]
    return element


def is_deferred(element: DataElement | RawDataElement | None) -> TypeGuard[RawDataElement]:
    """Whether ``element``'s value was left in the stream it was read from."""
    return isinstance(element, RawDataElement) and element.value is None and bool(element.length)


def tag_of(key: int | str) -> int | str:
    """``key``, a keyword resolved to its tag: pydicom's ``Tag()`` first reads a keyword as
    a hexadecimal number and catches the error, which cost more than the lookup it serves
    (dozens of keyword lookups per instance at ingest)."""
    if isinstance(key, str):
        tag = tag_for_keyword(key)
        if tag is not None:
            return tag
    return key
