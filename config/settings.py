"""The one typed settings object of a node.

Values come, highest priority first, from explicit overrides (the CLI), ``PACSNODE_*``
environment variables, a TOML config file, and the defaults below.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from config.access import AccessSettings
from config.aetitle import check_ae_title
from config.alerts import AlertSettings
from config.audit import AuditSettings
from config.deid import DeidSettings
from config.dicom_access import CallingAE, DicomTlsSettings
from config.dicomweb import DicomwebSettings
from config.export import ExportSettings
from config.https import HttpsSettings
from config.imports import ImportSettings
from config.labeling import LabelingSettings
from config.orthanc_sync import OrthancSyncSettings
from config.qr import QueryRetrieveSettings
from config.scheduler import SchedulerSettings
from config.storage import StorageSettings

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class Settings(BaseSettings):
    """Configuration of one pacsnode.

    Every field can be set in the TOML file given with ``--config``, or through an
    environment variable named ``PACSNODE_<FIELD>`` (for example ``PACSNODE_DICOM_PORT``).
    """

    model_config = SettingsConfigDict(
        env_prefix="PACSNODE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        hide_input_in_errors=True,
    )

    data_dir: Path = Field(
        Path("pacsnode-data"),
        description="Folder holding the SQLite catalog, the blobs and the secrets.",
    )
    database_url: str | None = Field(
        None,
        description=(
            "SQLAlchemy URL of the catalog, e.g. postgresql+psycopg://user@host/db. "
            "Default: SQLite file catalog.sqlite in the data folder."
        ),
    )
    sqlite_synchronous: Literal["NORMAL", "FULL"] = Field(
        "FULL",
        description=(
            "SQLite WAL synchronous mode. FULL survives power loss for every acknowledged "
            "instance; NORMAL survives a crash of the process but may lose the last "
            "commits on power loss."
        ),
    )
    blob_dir: Path | None = Field(
        None, description="Folder of the filesystem blob store. Default: <data_dir>/blobs."
    )
    fsync: bool = Field(
        True,
        description="fsync each blob and its folder before acknowledging. Turn off only for tests.",
    )

    ae_title: str = Field("PACSNODE", description="DICOM Application Entity title of the node.")
    dicom_host: str = Field(
        "127.0.0.1",
        description=(
            "Address the DICOM port listens on. Another than loopback (e.g. 0.0.0.0 for the "
            "modalities) needs allowed_calling_aets."
        ),
    )
    dicom_port: int = Field(11112, ge=0, le=65535, description="DICOM (DIMSE) port.")
    allowed_calling_aets: list[CallingAE] = Field(
        default_factory=list,
        description=(
            "Calling AE titles allowed to associate (on the plain and the TLS port): AE titles, "
            "or entries {ae_title, hosts, max_associations, projects, require_tls}. Empty: any "
            "AE may associate and sees every project."
        ),
    )
    require_called_aet: bool = Field(
        True,
        description="Reject associations whose Called AE Title is not the node's ae_title.",
    )
    max_pdu_size: int = Field(
        1_048_576,
        ge=0,
        description="Maximum PDU size the node advertises as a receiver (0 = unlimited).",
    )
    spool_threshold: int = Field(
        8 * 1024 * 1024,
        ge=0,
        description=(
            "Received instances (C-STORE data sets, STOW-RS parts) larger than this many "
            "bytes go to an encrypted spool file and through ingest in bounded memory; "
            "smaller ones are handled in memory, where one costs about four times its size "
            "at its peak (received, parsed, encoded, copied). 8 MiB keeps that near 32 MiB "
            "above the node's own ~220 MiB, so a node stays under 300 MB, while CT and MR "
            "instances (under 1 MiB) skip the spool's extra encryption pass and disk write. "
            "The spool folder is dicomweb.spool_dir."
        ),
    )
    dimse_timeout: float = Field(60.0, gt=0, description="Seconds to wait for a DIMSE message.")
    network_timeout: float = Field(60.0, gt=0, description="Seconds of network silence allowed.")
    acse_timeout: float = Field(
        10.0,
        gt=0,
        description=(
            "Seconds a DICOM connection may take to complete association negotiation; a "
            "connection that has not by then (e.g. one that sent a few bytes and stopped) is "
            "closed."
        ),
    )
    max_associations: int = Field(
        64,
        ge=1,
        description=(
            "Associations served at once; one more is rejected as 'local limit exceeded'. "
            "Connections that have not sent an A-ASSOCIATE-RQ yet do not count."
        ),
    )
    shutdown_grace: float = Field(
        30.0, ge=0, description="Seconds to let running associations finish on shutdown."
    )
    workers: int = Field(
        0,
        ge=0,
        description=(
            "Processes accepting DICOM associations on the DICOM ports (SO_REUSEPORT), each "
            "with its own ingest pipeline; HTTP, MLLP and the scheduler stay in the main "
            "process. 0: one per CPU core; 1: everything in one process."
        ),
    )

    http_host: str = Field("127.0.0.1", description="Address of the HTTP server.")
    http_port: int = Field(8042, ge=0, le=65535, description="HTTP port (DICOMweb, API, /metrics).")
    http_keep_alive_timeout: int = Field(
        5, ge=1, description="Seconds an idle keep-alive HTTP connection is kept open."
    )
    http_header_timeout: float = Field(
        10.0,
        gt=0,
        description=(
            "Seconds a client has to send a request's line and headers, from the connection "
            "or its first byte; slower clients (and connections that send nothing) are closed."
        ),
    )
    http_body_timeout: float = Field(
        30.0,
        gt=0,
        description=(
            "A request body that brings less than 1 KiB in this many seconds (while the node "
            "is reading) is dropped and its connection closed."
        ),
    )
    http_max_header_bytes: int = Field(
        65536, ge=1024, description="Largest request line and headers, in bytes (431 above)."
    )
    health_min_free_bytes: int = Field(
        268_435_456,
        ge=0,
        description=(
            "Free space the blob store's filesystem needs for /healthz to say ok; below it "
            "/healthz answers 503 degraded (0: no check)."
        ),
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    https: HttpsSettings = Field(default_factory=lambda: HttpsSettings.model_validate({}))

    storage: StorageSettings = Field(default_factory=lambda: StorageSettings.model_validate({}))
    qr: QueryRetrieveSettings = Field(default_factory=QueryRetrieveSettings)
    orthanc_sync: OrthancSyncSettings = Field(default_factory=OrthancSyncSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    dicomweb: DicomwebSettings = Field(default_factory=lambda: DicomwebSettings.model_validate({}))
    deid: DeidSettings = Field(default_factory=DeidSettings)
    labeling: LabelingSettings = Field(default_factory=LabelingSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)
    imports: ImportSettings = Field(default_factory=ImportSettings)
    access: AccessSettings = Field(default_factory=lambda: AccessSettings.model_validate({}))
    dicom_tls: DicomTlsSettings = Field(default_factory=lambda: DicomTlsSettings.model_validate({}))
    audit: AuditSettings = Field(default_factory=lambda: AuditSettings.model_validate({}))
    alerts: AlertSettings = Field(default_factory=lambda: AlertSettings.model_validate({}))

    @field_validator("ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        return check_ae_title(value)

    @field_validator("allowed_calling_aets")
    @classmethod
    def _unique_calling_aets(cls, entries: list[CallingAE]) -> list[CallingAE]:
        titles = [entry.ae_title for entry in entries]
        duplicated = sorted({t for t in titles if titles.count(t) > 1})
        if duplicated:
            raise ValueError(
                f"allowed_calling_aets lists {', '.join(duplicated)} twice: give one entry per "
                "AE title, with all its hosts"
            )
        return entries

    @model_validator(mode="after")
    def _refuse_open_listeners(self) -> Settings:
        """A listener beyond loopback needs a way to tell callers apart: the node would
        otherwise serve the archive to anyone on the network.

        The DICOM ports tell callers apart by ``allowed_calling_aets``, the TLS port also by
        client certificates when it requires them. An entry without hosts trusts the AE title
        alone, which anyone can send: the node starts, and warns (:mod:`scp.peers`).
        """
        problems = []
        if self.http_host not in LOOPBACK_HOSTS and not self.access.enabled:
            problems.append(
                f"http_host {self.http_host!r} is not a loopback address and HTTP callers are "
                "not authenticated: set access.methods (token, password, oidc)"
            )
        if self.dicom_host not in LOOPBACK_HOSTS and not self.allowed_calling_aets:
            problems.append(
                f"dicom_host {self.dicom_host!r} is not a loopback address and any AE may "
                "associate: set allowed_calling_aets (AE titles with their hosts)"
            )
        tls = self.dicom_tls
        if (
            tls.enabled
            and tls.host not in LOOPBACK_HOSTS
            and not tls.require_client_certificate
            and not self.allowed_calling_aets
        ):
            problems.append(
                f"dicom_tls.host {tls.host!r} is not a loopback address and any AE may "
                "associate over TLS: set dicom_tls.require_client_certificate or "
                "allowed_calling_aets"
            )
        labeling = self.labeling
        if (
            labeling.mllp_enabled
            and labeling.mllp_host not in LOOPBACK_HOSTS
            and not labeling.mllp_allowed_sources
        ):
            problems.append(
                f"labeling.mllp_host {labeling.mllp_host!r} is not a loopback address and any "
                "host may send reports: set labeling.mllp_allowed_sources"
            )
        if self.https.behind_proxy and not self.dicomweb.trust_forwarded_headers:
            problems.append(
                "https.behind_proxy needs dicomweb.trust_forwarded_headers: the proxy's "
                "X-Forwarded-Proto is how the node knows a request came over HTTPS"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def catalog_url(self) -> str:
        """The SQLAlchemy URL of the catalog database."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'catalog.sqlite').resolve()}"

    @property
    def dicom_workers(self) -> int:
        """The number of DICOM worker processes (``workers``, 0 resolved to the CPU cores
        this process may run on)."""
        return self.workers or len(os.sched_getaffinity(0))

    @property
    def blob_root(self) -> Path:
        """The folder of the filesystem blob store."""
        return self.blob_dir if self.blob_dir is not None else self.data_dir / "blobs"

    @property
    def spool_root(self) -> Path:
        """The folder of the encrypted spool files of transfers being received."""
        return self.dicomweb.spool_dir or self.data_dir / "spool"

    @property
    def secrets_root(self) -> Path:
        """The folder of the node's secrets (HMAC key, vault key)."""
        return self.deid.secrets_dir or self.data_dir / "secrets"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # TomlConfigSettingsSource reads nothing when model_config has no toml_file.
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which value and why."""


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from ``config_file`` (TOML), the environment and ``overrides``.

    ``overrides`` whose value is ``None`` are ignored, so CLI options left unset fall through
    to the environment and the file.
    """
    explicit = {k: v for k, v in overrides.items() if v is not None}
    settings_cls: type[Settings] = Settings
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"config file {config_file} does not exist")

        class FileSettings(Settings):
            model_config = SettingsConfigDict(toml_file=config_file)

        settings_cls = FileSettings
    try:
        return settings_cls(**explicit)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
