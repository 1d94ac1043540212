"""Typed configuration of a node (pydantic-settings: TOML file + ``PACSNODE_*`` environment)."""

from config.aetitle import check_ae_title
from config.deid import BurnedInPolicy, DeidSettings
from config.dicomweb import DicomwebSettings
from config.https import HttpsSettings
from config.imports import ImportSettings
from config.orthanc_sync import OrthancSyncSettings
from config.qr import DicomDestination, QueryRetrieveSettings
from config.scheduler import SchedulerSettings
from config.settings import ConfigError, Settings, load_settings

__all__ = [
    "BurnedInPolicy",
    "ConfigError",
    "DeidSettings",
    "DicomDestination",
    "DicomwebSettings",
    "HttpsSettings",
    "ImportSettings",
    "OrthancSyncSettings",
    "QueryRetrieveSettings",
    "SchedulerSettings",
    "Settings",
    "check_ae_title",
    "load_settings",
]
