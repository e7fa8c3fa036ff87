"""The operator's files agree with each other and with the code: README's settings table, .env.example, Settings,
docker-compose.yml (through `docker compose config`), deploy/Caddyfile (through `caddy`) and docs/DEPLOY.md."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.platform.settings import Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
ENV_EXAMPLE = ROOT / ".env.example"
COMPOSE = ROOT / "docker-compose.yml"
CADDYFILE = ROOT / "deploy" / "Caddyfile"
DEPLOY = ROOT / "docs" / "DEPLOY.md"
DOMAIN = "bot.example.org"
SETTING_LINE = re.compile(r"^(?:# ?)?([A-Z][A-Z0-9_]+)=(.*)$")


def _readme_settings() -> list[str]:
    table = README.read_text(encoding="utf-8").split("## Configuration", 1)[1].split("###", 1)[0]
    return re.findall(r"^\| `([A-Z0-9_]+)` \|", table, flags=re.MULTILINE)


def _example_lines() -> list[tuple[str, str, bool]]:
    """(name, value, active) for each `NAME=value` line of .env.example, commented out (`# NAME=…`) or not."""
    found = []
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = SETTING_LINE.match(line)
        if match:
            found.append((match.group(1), match.group(2), not line.startswith("#")))
    return found


def _compose_only() -> set[str]:
    """Variables compose reads from .env for itself (`${NAME…}` in docker-compose.yml) that are no setting."""
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE.read_text(encoding="utf-8")))
    return used - {name.upper() for name in Settings.model_fields}


def test_env_example_lists_exactly_the_readme_settings() -> None:
    readme = _readme_settings()
    settings = {name.upper() for name in Settings.model_fields}
    assert len(readme) == len(set(readme)) and set(readme) == settings, (
        f"README table vs Settings: undocumented {settings - set(readme)}, unknown {set(readme) - settings}"
    )
    names = [name for name, _, _ in _example_lines()]
    duplicates = {name for name in names if names.count(name) > 1}
    assert not duplicates, f".env.example lists these twice: {duplicates}"
    extra = set(names) - settings
    assert extra == {"CUMAPP_DOMAIN"} and extra <= _compose_only(), (
        f".env.example names no setting: {extra - _compose_only()}"
    )
    missing = settings - set(names)
    assert not missing, f".env.example lacks README settings: {sorted(missing)}"
    guide = DEPLOY.read_text(encoding="utf-8")
    assert all(f"`{name}`" in guide for name in extra)


def test_every_env_example_value_is_a_valid_setting(tmp_path: Path) -> None:
    """Uncommented, every line of .env.example together makes settings that load, and say what the lines say."""
    lines = _example_lines()
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value, _ in lines), encoding="utf-8")
    try:
        loaded = load_settings(_env_file=env_file)
    except SettingsError as error:  # pragma: no cover - the message is the point
        pytest.fail(f".env.example holds bad values: {error.lines}")
    assert loaded.metrics_port == 9100 and loaded.tier_limits["free"].sms_per_day == 50
    active = {name: value for name, value, on in lines if on}
    assert active["SANDBOX"] == "" and active["DATA_ENCRYPTION_KEYS"] == ""  # nothing decided for the operator


@pytest.mark.parametrize("secret", ["has space", "dots.are.not.allowed", "x" * 257, "contraseña", "a+b/c="])
def test_telegram_webhook_secret_outside_telegrams_rule_is_one_line(secret: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(_env_file=None, telegram_webhook_secret=secret)
    assert len(raised.value.lines) == 1
    line = raised.value.lines[0]
    assert line.startswith("TELEGRAM_WEBHOOK_SECRET=") and "A-Z, a-z, 0-9, _ and -" in line and secret not in line


def test_telegram_webhook_secret_within_the_rule_loads_and_the_cli_names_a_bad_one() -> None:
    for secret in ("a", "x" * 256, "AZaz09_-"):
        assert load_settings(_env_file=None, telegram_webhook_secret=secret).telegram_webhook_secret is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM", "DISCORD", "TWILIO", "GROQ"))}
    env["TELEGRAM_WEBHOOK_SECRET"] = "my secret!"
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "migrate"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "cumapp: TELEGRAM_WEBHOOK_SECRET='***': allowed: 1-256 characters, only A-Z, a-z, 0-9, _ and - "
        "(Telegram's rule)"
    ]


def _compose_command() -> list[str] | None:
    """`docker compose` (the v2 plugin), else a standalone v2 `docker-compose`; v1 cannot read this file."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        version = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=30)
        if version.returncode == 0 and re.search(r"v?2\.\d+", version.stdout):
            return command
    return None


COMPOSE_COMMAND = _compose_command()


@pytest.mark.skipif(
    COMPOSE_COMMAND is None,
    reason="the Docker Compose v2 plugin is not installed (`docker compose version` fails); "
    "deploy/install-compose-plugin.sh installs it",
)
def test_docker_compose_config_accepts_the_file_and_only_the_proxy_publishes() -> None:
    assert COMPOSE_COMMAND is not None
    env = {**os.environ, "CUMAPP_DOMAIN": DOMAIN}
    done = subprocess.run(
        [*COMPOSE_COMMAND, "-f", str(COMPOSE), "config", "--format", "json"], capture_output=True, text=True,
        env=env, cwd=ROOT, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    assert set(services) == {"db", "migrate", "app", "proxy"}
    published = {name: [p.get("published") for p in service.get("ports", [])] for name, service in services.items()}
    assert published == {"db": [], "migrate": [], "app": [], "proxy": ["80", "443", "443"]}
    app = services["app"]
    assert app["environment"]["PUBLIC_BASE_URL"] == f"https://{DOMAIN}"
    assert services["proxy"]["environment"]["CUMAPP_DOMAIN"] == DOMAIN
    assert app["environment"]["HTTP_MAX_CONNECTIONS_PER_CLIENT"] == "0"
    assert app["environment"]["METRICS_PORT"] not in published["proxy"]
    assert any(v["target"] == "/etc/caddy/Caddyfile" and v["source"].endswith("deploy/Caddyfile")
               for v in services["proxy"]["volumes"])


def _caddy(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    assert CADDY is not None
    env = {**os.environ, "CUMAPP_DOMAIN": DOMAIN, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data"),
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    return subprocess.run([CADDY, *args, "--config", str(CADDYFILE), "--adapter", "caddyfile"], capture_output=True,
                          text=True, env=env, timeout=60)


CADDY = shutil.which("caddy")


@pytest.mark.skipif(CADDY is None, reason="caddy is not installed (apt-get install caddy)")
def test_caddyfile_is_valid_and_proxies_to_the_app_below_its_keepalive(tmp_path: Path) -> None:
    validated = _caddy("validate", tmp_path=tmp_path)
    assert validated.returncode == 0, validated.stderr
    adapted = _caddy("adapt", tmp_path=tmp_path)
    assert adapted.returncode == 0, adapted.stderr
    server = json.loads(adapted.stdout)["apps"]["http"]["servers"]["srv0"]
    route = server["routes"][0]
    assert route["match"] == [{"host": [DOMAIN]}]
    handlers = route["handle"][0]["routes"]
    private = handlers[0]
    assert private["handle"] == [{"handler": "static_response", "status_code": 404}]
    assert {"/metrics", "/readyz"} <= set(private["match"][0]["path"])
    proxy = handlers[1]["handle"][0]
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert proxy["dynamic_upstreams"] == {"name": "app", "port": str(defaults.http_port), "refresh": 5_000_000_000,
                                          "source": "a"}
    # An instance that pauses gets fewer requests rather than half of them (docs/perf/process.md, two instances).
    assert proxy["load_balancing"]["selection_policy"] == {"policy": "least_conn"}
    idle_ns = proxy["transport"]["keep_alive"]["idle_timeout"]
    assert idle_ns < defaults.http_keepalive_seconds * 1e9  # never reuses a connection the app has closed


def test_deploy_guide_is_linked_and_names_what_the_operator_sets() -> None:
    readme = README.read_text(encoding="utf-8")
    assert "(docs/DEPLOY.md)" in readme
    guide = DEPLOY.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", guide):
        assert (DEPLOY.parent / target).exists(), f"DEPLOY.md links a missing file: {target}"
    assert "(FAULTS.md)" in guide and '"Several instances"' in guide
    secrets = {name.upper() for name, field in Settings.model_fields.items() if "SecretStr" in str(field.annotation)}
    credentials = {"TEXTVERIFIED_API_USERNAME", "TWILIO_ACCOUNT_SID", "VONAGE_API_KEY", "CUMAPP_DOMAIN"}
    for name in secrets | credentials | {"SANDBOX", "METRICS_PORT", "METRICS_HOST", "LOG_FORMAT", "TELEGRAM_MODE"}:
        assert f"`{name}" in guide, f"DEPLOY.md does not mention {name}"
    for words in ("SANDBOX=false", "cumapp migrate", "--scale app=2", "pg_restore", "Let's Encrypt", "Signed webhooks"):
        assert words in guide
