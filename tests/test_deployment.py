"""docs/deployment.md, the Dockerfile and .dockerignore tell the truth: the node config is
valid settings (also with the image's environment), the haproxy config passes ``haproxy -c``,
the systemd unit and the image run real ``pacsnode`` commands with real options, the unit's
stop timeout covers the node's own graceful stop, and the image copies every package."""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from config import Settings, load_settings
from config.labeling import LabelingSettings
from node.cli import app
from tests.peers import REPO_ROOT
from tests.pki import Authority

DOC = REPO_ROOT / "docs" / "deployment.md"
DOCKERFILE = REPO_ROOT / "Dockerfile"
HAPROXY = Path("/usr/sbin/haproxy")
HAPROXY_PEM = "/etc/haproxy/pacsnode.pem"
"""Where the guide's haproxy config has its certificate."""


def blocks(language: str) -> list[str]:
    """The fenced code blocks of ``language`` in docs/deployment.md."""
    return re.findall(rf"^```{language}\n(.*?)^```$", DOC.read_text(), re.MULTILINE | re.DOTALL)


def haproxy_pem(authority: Authority) -> Path:
    """The certificate and key haproxy serves HTTPS with, in one PEM file (for 127.0.0.1)."""
    pair = authority.server("haproxy")
    pem = pair.certificate.with_name("haproxy.pem")
    pem.write_bytes(pair.certificate.read_bytes() + pair.key.read_bytes())
    return pem


def node_config(tmp_path: Path, env: dict[str, str] | None = None) -> Settings:
    [toml] = blocks("toml")
    file = tmp_path / "pacsnode.toml"
    file.write_text(toml)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        return load_settings(file)


def dockerfile_instructions(name: str) -> list[str]:
    """The arguments of every ``name`` instruction (continuation lines joined)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return [m.group(1).strip() for m in re.finditer(rf"^{name}\s+(.*)$", text, re.MULTILINE)]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in dockerfile_instructions("ENV"):
        env.update(dict(pair.split("=", 1) for pair in shlex.split(line)))
    return env


def assert_real_command(argv: list[str]) -> None:
    """``argv`` is ``.../pacsnode COMMAND --option ...`` with a command and options that exist."""
    assert Path(argv[0]).name == "pacsnode", argv
    words = [word for word in argv[1:] if not word.startswith("-")]
    command = words[:1]
    shown = CliRunner().invoke(app, [*command, "--help"])
    assert shown.exit_code == 0, shown.output
    for option in (word for word in argv[1:] if word.startswith("--")):
        assert option in shown.output, f"pacsnode {command[0]} has no option {option}"


def test_the_node_config_is_valid_settings_also_in_the_image(tmp_path: Path) -> None:
    settings = node_config(tmp_path)
    assert settings.database_url is not None
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.deid.secrets_dir is not None
    assert settings.https.behind_proxy
    in_image = node_config(tmp_path, image_env())
    assert in_image.dicom_host == "0.0.0.0"
    assert in_image.http_host == "0.0.0.0"
    assert in_image.labeling.mllp_host == "0.0.0.0"


def test_without_who_may_call_the_image_refuses_to_start(tmp_path: Path) -> None:
    from config import ConfigError

    with pytest.MonkeyPatch.context() as patch:
        for name, value in image_env().items():
            patch.setenv(name, value)
        with pytest.raises(ConfigError, match="allowed_calling_aets"):
            load_settings()


def test_the_haproxy_config_passes_haproxy_check(tmp_path: Path) -> None:
    if not HAPROXY.is_file():
        pytest.fail("haproxy is not installed: scripts/setup.sh installs it")
    [config] = blocks("haproxy")
    for word in ("mode tcp", "balance leastconn", "check port 8042", "option forwardfor"):
        assert word in config
    assert "X-Forwarded-Proto https" in config
    file = tmp_path / "haproxy.cfg"
    file.write_text(config.replace(HAPROXY_PEM, str(haproxy_pem(Authority(tmp_path, "lb")))))
    checked = subprocess.run(
        [str(HAPROXY), "-c", "-f", str(file)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_systemd_unit_runs_a_real_command_and_waits_for_the_graceful_stop(
    tmp_path: Path,
) -> None:
    [unit_text] = blocks("ini")
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(unit_text)
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert_real_command(argv)
    assert argv[argv.index("--config") + 1] == "/etc/pacsnode/pacsnode.toml"
    assert "-HUP" in service["ExecReload"]
    assert service["Type"] == "exec"
    assert service["Restart"] == "on-failure"
    assert int(service["LimitNOFILE"]) >= 4096
    settings = node_config(tmp_path)
    assert service["StateDirectory"] == settings.data_dir.name
    assert str(settings.blob_root) in service["ReadWritePaths"]
    # associations get shutdown_grace, HTTP up to shutdown_grace + 5 s more, then the rest
    assert float(service["TimeoutStopSec"]) >= 2 * settings.shutdown_grace + 10


def test_the_image_runs_the_node_as_a_user_with_a_health_check() -> None:
    [base, *_] = [line for line in dockerfile_instructions("FROM") if " AS " not in line]
    assert re.fullmatch(r"python:3\.\d+-slim\S*", base), base
    [user] = dockerfile_instructions("USER")
    assert user not in ("root", "0")
    [cmd] = dockerfile_instructions("CMD")
    argv = tomllib.loads(f"argv = {cmd}")["argv"]
    assert_real_command(argv)
    assert argv[argv.index("--config") + 1] == "/etc/pacsnode/pacsnode.toml"
    [health] = dockerfile_instructions("HEALTHCHECK")
    http_port = Settings.model_fields["http_port"].default
    assert f"127.0.0.1:{http_port}/healthz" in health
    [exposed] = dockerfile_instructions("EXPOSE")
    ports = {int(port) for port in exposed.split()}
    dicom_port = Settings.model_fields["dicom_port"].default
    mllp_port = LabelingSettings.model_fields["mllp_port"].default  # the tests' env says 0
    assert ports == {dicom_port, http_port, mllp_port}
    assert image_env()["PACSNODE_DATA_DIR"] in dockerfile_instructions("VOLUME")[0]


def test_the_image_copies_every_package_and_leaves_the_rest_out() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    included = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {name.rstrip("*") for name in included}
    copied = {line.split()[0] for line in dockerfile_instructions("COPY") if "--from" not in line}
    assert packages <= copied, packages - copied
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    for heavy in (".git", ".venv", "pacsnode-data", "tests", "bench"):
        assert heavy in ignored


def test_the_readme_names_the_deployment_guide() -> None:
    assert "docs/deployment.md" in (REPO_ROOT / "README.md").read_text()
