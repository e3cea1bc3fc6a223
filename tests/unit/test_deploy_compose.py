"""The production deployment, rendered as Docker would run it (issue 8, finding 3).

There is no Docker engine here, so this renders ``docker-compose.yml`` itself, in the two steps
production takes:

1. ``docker compose`` interpolates ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` from the
   operator's ``.env`` (here a dict of test values);
2. the official image (``orthancteam/orthanc``: ``docker-entrypoint.sh`` →
   ``generateConfiguration.py`` → ``configurator.py`` of orthanc-server/orthanc-builder) reads
   every ``/etc/orthanc/*.json``,
   substitutes ``$VAR``/``${VAR}`` from the container's environment with the ``envsubst``
   package (an unset variable becomes an empty string), merges the files, then merges
   ``ORTHANC_JSON`` and every ``ORTHANC__SETTING`` variable over them (dicts recursively,
   values overwritten), then fills what is still unset with the image's defaults
   (``orthanc-defaults.json``: ``RemoteAccessAllowed`` and ``AuthenticationEnabled`` true);
   Orthanc's own defaults apply to the rest (``DicomAlwaysAllowStore`` true,
   ``DicomCheckCalledAet`` false).

The security-relevant settings of every Orthanc service are then asserted on the result. On the
compose file before issue 8 (no config mounted, port 4242 published on every interface, no
memory limit) the first assertion already fails: ``DicomAlwaysAllowStore`` came out true.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
ORTHANC_DOCKERFILE = "docker/orthanc.Dockerfile"

# What an operator's .env would hold: secrets drawn for each run (none committed), each at least
# 16 characters.
OPERATOR_ENV = {
    "PIXL_HASH_KEY": secrets.token_hex(32),
    "PIXL_DB_PASSWORD": secrets.token_hex(16),
    "PIXL_ORTHANC_PASSWORD": secrets.token_hex(16),
    "PIXL_ORTHANC_RAW_PASSWORD": secrets.token_hex(16),
    "PIXL_ORTHANC_OPERATOR_PASSWORD": secrets.token_hex(16),
    "PIXL_ORTHANC_RAW_DB_PASSWORD": secrets.token_hex(16),
    "PIXL_ORTHANC_ANON_DB_PASSWORD": secrets.token_hex(16),
    "PIXL_EHR_TOKEN": secrets.token_hex(24),
    "PIXL_VNA_AET": "HOSPVNA",
    "PIXL_VNA_HOST": "10.20.30.40",
    "PIXL_VNA_PORT": "11112",
    "PIXL_RAW_DICOM_HOST_IP": "10.20.30.5",
    "PIXL_EMAP_URL": "postgresql://emap.example/emap",
    "PIXL_COGSTACK_URL": "https://cogstack.example:5000",
}

# The image's own defaults (orthanc-defaults.json), applied to what is still unset.
IMAGE_DEFAULTS = {
    "StorageDirectory": "/var/lib/orthanc/db",
    "RemoteAccessAllowed": True,
    "AuthenticationEnabled": True,
    "HttpsCACertificates": "/etc/ssl/certs/ca-certificates.crt",
    "Plugins": ["/usr/share/orthanc/plugins/"],
}
# Orthanc's built-in defaults of the settings checked here.
ORTHANC_DEFAULTS = {
    "DicomAlwaysAllowStore": True,
    "DicomAlwaysAllowEcho": True,
    "DicomCheckCalledAet": False,
    "RemoteAccessAllowed": False,
    "AuthenticationEnabled": False,
    "RegisteredUsers": {},
    "DicomPort": 4242,
    "HttpPort": 8042,
}


class RenderError(ValueError):
    """The compose file does not render (a required variable is missing)."""


# --- step 1: docker compose ------------------------------------------------------------------

_COMPOSE_VARIABLE = re.compile(r"\$(?:\$|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


def compose_interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-d}``, ``${VAR-d}``,
    ``${VAR:?error}``, ``${VAR?error}``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, argument = match.group(2), match.group(3) or ""
        value = env.get(name)
        missing = value is None or (value == "" and operator is not None and ":" in operator)
        if operator in {":?", "?"} and missing:
            raise RenderError(f"required variable {name} is missing: {argument}")
        if operator in {":-", "-"} and missing:
            return compose_interpolate(argument, env)
        return value or ""

    return _COMPOSE_VARIABLE.sub(replace, text)


def _interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [_interpolate_tree(value, env) for value in node]
    if isinstance(node, str):
        return compose_interpolate(node, env)
    return node


def load_compose(env: Mapping[str, str]) -> dict[str, Any]:
    """``docker compose config``: the YAML (anchors and ``<<`` merges resolved) interpolated."""
    return _interpolate_tree(yaml.safe_load(COMPOSE.read_text()), env)


def container_env(service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    return {key: "" if value is None else str(value) for key, value in environment.items()}


def orthanc_services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if (service.get("build") or {}).get("dockerfile") == ORTHANC_DOCKERFILE
        or str(service.get("image", "")).startswith(("orthancteam/orthanc", "jodogne/orthanc"))
    }


def mounted_configs(service: Mapping[str, Any]) -> list[Path]:
    """Repository files bind-mounted where the image reads its configuration."""
    configs = []
    for volume in service.get("volumes", []):
        source, _, rest = volume.partition(":")
        target = rest.split(":")[0]
        if re.fullmatch(r"/(etc/orthanc|run/secrets)/[^/]+\.json", target):
            configs.append((REPO / source).resolve())
    return configs


# --- step 2: the orthancteam/orthanc image ---------------------------------------------------

_SIMPLE = re.compile(r"(?<!\\)\$([A-Za-z0-9_]+)")
_EXTENDED = re.compile(r"(?<!\\)\$\{([A-Za-z0-9_]+)((:?-)([^}]+))?\}")


def image_envsubst(text: str, env: Mapping[str, str]) -> str:
    """The ``envsubst`` package the image runs on each file: an unset variable becomes ''."""
    text = _SIMPLE.sub(lambda m: env.get(m.group(1), ""), text)

    def extended(match: re.Match[str]) -> str:
        value = env.get(match.group(1))
        if match.group(3) == ":-":
            return value or match.group(4)
        if match.group(3) == "-":
            return match.group(4) if value is None else value
        return value or ""

    return _EXTENDED.sub(extended, text)


def _merge(first: dict[str, Any], second: Mapping[str, Any], *, overwrite: bool) -> None:
    for key, value in second.items():
        if isinstance(value, dict) and isinstance(first.get(key), dict):
            _merge(first[key], value, overwrite=overwrite)
        elif key not in first or overwrite:
            first[key] = value


def _camel(token: str) -> str:
    return "".join(word[0] + word[1:].lower() for word in token.split("_") if word)


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def image_configuration(configs: list[Path], env: Mapping[str, str]) -> dict[str, Any]:
    """The ``/tmp/orthanc.json`` the image generates, with Orthanc's own defaults filled in."""
    configuration: dict[str, Any] = {}
    for path in configs:
        _merge(configuration, json.loads(image_envsubst(path.read_text(), env)), overwrite=True)
    for key, value in env.items():
        if key == "ORTHANC_JSON":
            _merge(configuration, json.loads(value), overwrite=True)
        elif key.startswith("ORTHANC__"):
            tokens = [_camel(token) for token in key[len("ORTHANC__") :].split("__")]
            nested: Any = _json_or_text(value)
            for token in reversed(tokens):
                nested = {token: nested}
            _merge(configuration, nested, overwrite=True)
    _merge(configuration, IMAGE_DEFAULTS, overwrite=False)
    _merge(configuration, ORTHANC_DEFAULTS, overwrite=False)
    return configuration


def render_orthancs(env: Mapping[str, str] = OPERATOR_ENV) -> dict[str, dict[str, Any]]:
    """Per Orthanc service: its compose entry, container env, mounted files and final config."""
    compose = load_compose(env)
    rendered = {}
    for name, service in orthanc_services(compose).items():
        environment = container_env(service)
        configs = mounted_configs(service)
        rendered[name] = {
            "service": service,
            "env": environment,
            "configs": configs,
            "config": image_configuration(configs, environment),
        }
    return rendered


def published(service: Mapping[str, Any]) -> list[tuple[str | None, str, str]]:
    """``(host_ip, host_port, container_port)`` of every published port (short syntax)."""
    ports = []
    for entry in service.get("ports", []):
        parts = str(entry).split(":")
        host_ip = parts[0] if len(parts) == 3 else None
        host_port = parts[-2] if len(parts) >= 2 else ""
        ports.append((host_ip or None, host_port, parts[-1].split("/")[0]))
    return ports


# --- the tests -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orthancs() -> dict[str, dict[str, Any]]:
    return render_orthancs()


def test_every_orthanc_service_runs_the_hardened_config(orthancs):
    """Finding 3: the Orthancs of production must run orthanc-config/, not the image's
    defaults (DicomAlwaysAllowStore true, DicomCheckCalledAet false)."""
    assert set(orthancs) == {"orthanc-raw", "orthanc-raw-2", "orthanc-anon"}
    for name, rendered in orthancs.items():
        config = rendered["config"]
        short = name.removeprefix("orthanc-").removesuffix("-2")  # a replica: its role's file
        assert rendered["configs"] == [REPO / "orthanc-config" / f"{short}.json"], name
        assert config["DicomAlwaysAllowStore"] is False, name
        assert config["DicomCheckCalledAet"] is True, name
        assert config["AuthenticationEnabled"] is True, name
        aet = f"PIXL{short.upper()}" + name.removeprefix(f"orthanc-{short}").lstrip("-")
        assert config["Name"] == name and config["DicomAet"] == aet


def test_http_access_needs_real_credentials(orthancs):
    for name, rendered in orthancs.items():
        config = rendered["config"]
        if config["RemoteAccessAllowed"] is False:
            continue
        users = config["RegisteredUsers"]
        assert users, f"{name} accepts remote HTTP clients but registers no user"
        for user, password in users.items():
            assert len(password) >= 16 and "$" not in password, (name, user)


def test_raw_and_anon_have_separate_credentials_and_a_read_only_operator(orthancs):
    """Finding 9: a leaked orthanc-anon password does not open orthanc-raw, and the user
    operator of both is limited by the Lua filter the image gets."""
    raw = orthancs["orthanc-raw"]["config"]["RegisteredUsers"]
    anon = orthancs["orthanc-anon"]["config"]["RegisteredUsers"]
    assert raw["pixl"] == OPERATOR_ENV["PIXL_ORTHANC_RAW_PASSWORD"]
    assert anon["pixl"] == OPERATOR_ENV["PIXL_ORTHANC_PASSWORD"] != raw["pixl"]
    assert "PIXL_ORTHANC_RAW_PASSWORD" not in orthancs["orthanc-anon"]["env"]
    dockerfile = (REPO / ORTHANC_DOCKERFILE).read_text()
    operator_password = OPERATOR_ENV["PIXL_ORTHANC_OPERATOR_PASSWORD"]
    for rendered in orthancs.values():
        assert rendered["config"]["RegisteredUsers"]["operator"] == operator_password
        for script in rendered["config"]["LuaScripts"]:
            relative = Path(script).relative_to("/pixl")
            assert (REPO / relative).is_file() and str(relative) in dockerfile, script


def test_every_placeholder_of_a_mounted_config_is_set(orthancs):
    """The image replaces an unset ${VAR} by nothing: a port would vanish from the JSON, a
    password would become empty. Every placeholder must come from the container's env."""
    for name, rendered in orthancs.items():
        for path in rendered["configs"]:
            names = set(re.findall(r"\$\{(\w+)\}", path.read_text()))
            missing = {n for n in names if not rendered["env"].get(n)}
            assert not missing, f"{name}: {path.name} needs {sorted(missing)}"


def test_the_plugin_scripts_exist_in_the_image(orthancs):
    for rendered in orthancs.values():
        script = Path(rendered["config"]["PythonScript"])
        assert (REPO / script.relative_to("/pixl")).is_file(), script
        assert rendered["env"].get("PYTHON_PLUGIN_ENABLED") == "true"


def test_the_vna_is_the_hospital_archive_with_the_reviewed_rights(orthancs):
    """ORTHANC_JSON points raw.json's "vna" at the archive and keeps what the file lets it do."""
    raw = orthancs["orthanc-raw"]
    vna = raw["config"]["DicomModalities"]["vna"]
    in_file = json.loads(image_envsubst(raw["configs"][0].read_text(), raw["env"]))
    in_file = in_file["DicomModalities"]["vna"]
    assert (vna["AET"], vna["Host"], vna["Port"]) == ("HOSPVNA", "10.20.30.40", 11112)
    for key, value in in_file.items():
        if key not in {"AET", "Host", "Port"}:
            assert vna[key] == value, key


def test_ports_are_published_only_where_needed(orthancs):
    """Only orthanc-raw's DICOM port is published beyond the host (the VNA's C-MOVE lands
    there), on the address the operator names; HTTP only on the host's loopback."""
    for name, rendered in orthancs.items():
        for host_ip, _host_port, target in published(rendered["service"]):
            assert host_ip is not None, f"{name} publishes {target} on every interface"
            if target == "4242":
                assert name.startswith("orthanc-raw"), f"{name} publishes its DICOM port"
                assert host_ip == OPERATOR_ENV["PIXL_RAW_DICOM_HOST_IP"]
            else:
                assert host_ip == "127.0.0.1", f"{name} publishes {target} beyond loopback"
    compose = load_compose(OPERATOR_ENV)
    for name in ("postgres", "ehr"):
        assert not compose["services"][name].get("ports"), name
    without = {k: v for k, v in OPERATOR_ENV.items() if k != "PIXL_RAW_DICOM_HOST_IP"}
    with pytest.raises(RenderError, match="PIXL_RAW_DICOM_HOST_IP"):
        load_compose(without)


def test_every_orthanc_has_a_memory_limit_and_no_root(orthancs):
    """Finding 2's last sentence: a malformed instance must not take the host down."""
    for name, rendered in orthancs.items():
        service = rendered["service"]
        assert service.get("mem_limit") or (
            service.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory")
        ), name
        assert service.get("user") not in {None, "", "root", "0"}, name


def test_missing_secrets_stop_the_deployment():
    """A missing password must fail `docker compose up`, never run with an empty one."""
    for variable in (
        "PIXL_ORTHANC_PASSWORD",
        "PIXL_ORTHANC_RAW_PASSWORD",
        "PIXL_ORTHANC_OPERATOR_PASSWORD",
        "PIXL_EHR_TOKEN",
    ):
        env = {k: v for k, v in OPERATOR_ENV.items() if k != variable}
        with pytest.raises(RenderError, match=variable):
            load_compose(env)


def test_the_ehr_service_listens_on_loopback_as_an_unprivileged_user():
    """Finding 6: the container no longer binds 0.0.0.0; the CLI in it sends the token."""
    dockerfile = (REPO / "docker/ehr.Dockerfile").read_text()
    entrypoint = next(line for line in dockerfile.splitlines() if line.startswith("ENTRYPOINT"))
    assert "0.0.0.0" not in entrypoint
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.MULTILINE)
    ehr = container_env(load_compose(OPERATOR_ENV)["services"]["ehr"])
    assert ehr["PIXL_EHR_TOKEN"] == OPERATOR_ENV["PIXL_EHR_TOKEN"]
    assert ehr["PIXL_EHR_URL"].startswith("http://127.0.0.1:")
    assert "PIXL_EHR_HOST" not in ehr


def test_replicas_share_their_role_s_orthanc_database_with_its_own_role(orthancs):
    """Issue 12: the index is in Postgres, one database per role, replicas sharing it (no
    lock), the password expanded from the container's environment; orthanc-raw replicas each
    have an AE title the VNA can move to."""
    databases = {}
    for name, rendered in orthancs.items():
        section = rendered["config"]["PostgreSQL"]
        assert section["EnableIndex"] is True and section["Lock"] is False, name
        assert section["Host"] == "postgres" and section["Username"] == section["Database"]
        assert section["Password"] and section["Password"] in OPERATOR_ENV.values(), name
        databases[name] = section["Database"]
    assert databases == {
        "orthanc-raw": "orthanc_raw",
        "orthanc-raw-2": "orthanc_raw",
        "orthanc-anon": "orthanc_anon",
    }
    aets = {orthancs[n]["config"]["DicomAet"] for n in ("orthanc-raw", "orthanc-raw-2")}
    assert aets == {"PIXLRAW", "PIXLRAW2"}
    compose = load_compose(OPERATOR_ENV)
    assert compose["services"]["orthanc-anon"]["deploy"]["replicas"] == "1"


def test_the_renderer_follows_the_image(tmp_path):
    """The emulation itself: an unset variable is emptied (so a missing password would be
    empty, which the tests above catch), and ORTHANC__ variables override the file."""
    config = tmp_path / "orthanc.json"
    config.write_text('{"A": "${UNSET}", "B": ${PORT}, "DicomAlwaysAllowStore": false}')
    rendered = image_configuration(
        [config], {"PORT": "4242", "ORTHANC__DICOM_ALWAYS_ALLOW_STORE": "true"}
    )
    assert rendered["A"] == "" and rendered["B"] == 4242
    assert rendered["DicomAlwaysAllowStore"] is True
    assert image_configuration([], {})["DicomAlwaysAllowStore"] is True
