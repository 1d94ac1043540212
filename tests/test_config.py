from pathlib import Path

import pytest

from config import ConfigError, load_settings


def test_defaults_are_the_embedded_node(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PACSNODE_DICOM_PORT", "PACSNODE_DATA_DIR", "PACSNODE_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert (settings.ae_title, settings.dicom_port, settings.http_port) == ("PACSNODE", 11112, 8042)
    assert settings.http_host == "127.0.0.1"
    assert settings.catalog_url.startswith("sqlite:///")
    assert settings.catalog_url.endswith("pacsnode-data/catalog.sqlite")
    assert settings.blob_root == Path("pacsnode-data/blobs")


def test_priority_cli_then_environment_then_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "pacsnode.toml"
    config.write_text('ae_title = "FROMFILE"\ndicom_port = 1104\nhttp_port = 9000\n')
    monkeypatch.setenv("PACSNODE_DICOM_PORT", "2104")
    settings = load_settings(config, http_port=None, ae_title="FROMCLI")
    assert settings.ae_title == "FROMCLI"
    assert settings.dicom_port == 2104
    assert settings.http_port == 9000


def test_list_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "PACSNODE_ALLOWED_CALLING_AETS", '["CT1", {"ae_title": "MR2", "hosts": ["10.0.3.0/24"]}]'
    )
    ct1, mr2 = load_settings().allowed_calling_aets
    assert (ct1.ae_title, ct1.hosts, mr2.ae_title) == ("CT1", [], "MR2")
    assert [str(net) for net in mr2.hosts] == ["10.0.3.0/24"]


def test_listeners_beyond_loopback_need_a_way_to_tell_callers_apart() -> None:
    with pytest.raises(ConfigError, match=r"access\.methods"):
        load_settings(http_host="0.0.0.0")
    open_http = load_settings(http_host="0.0.0.0", access={"methods": ["token"]})
    assert open_http.http_host == "0.0.0.0"
    with pytest.raises(ConfigError, match="allowed_calling_aets"):
        load_settings(dicom_host="0.0.0.0")
    assert load_settings(dicom_host="0.0.0.0", allowed_calling_aets=["CT1"]).dicom_host
    with pytest.raises(ConfigError, match="mllp_allowed_sources"):
        load_settings(labeling={"mllp_host": "0.0.0.0"})
    assert load_settings(labeling={"mllp_host": "0.0.0.0", "mllp_enabled": False})


@pytest.mark.parametrize("title", ["", "A" * 17, "BAD\\AE"])
def test_invalid_ae_title_is_refused(title: str) -> None:
    with pytest.raises(ConfigError, match="AE title"):
        load_settings(ae_title=title)


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "pacsnode.toml"
    config.write_text("dicom_prot = 104\n")
    with pytest.raises(ConfigError, match="dicom_prot"):
        load_settings(config)


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nowhere\.toml"):
        load_settings(tmp_path / "nowhere.toml")
