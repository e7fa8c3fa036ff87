"""The foundation: settings errors, the CLI, the web server's health routes, README, compose file, import rules."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from core.platform.settings import Settings, SettingsError, load_settings
from core.providers.plan import MissingCredentials, plan_providers, signup_bonus_cents
from core.services import Services
from tests.conftest import make_settings
from tests.readme_commands import quick_start_commands
from webhooks.server import create_app

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM", "DISCORD", "TWILIO", "GROQ"))}
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args], capture_output=True, text=True, env=clean, cwd=cwd or ROOT,
        timeout=60,
    )


def test_bad_settings_give_one_line_each_and_exit_code_2(tmp_path: Path) -> None:
    result = _cli(
        "run",
        env={"HTTP_PORT": "abc", "SANDBOX": "maybe", "VERIFICATION_POLL_SECONDS": "0", "TWILIO_AUTH_TOKEN": "x",
             "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, result.stderr
    assert any(line.startswith("cumapp: HTTP_PORT='abc'") for line in lines)
    assert any("SANDBOX='maybe'" in line and "'auto', 'true' or 'false'" in line for line in lines)
    assert any("VERIFICATION_POLL_SECONDS='0'" in line and "greater than or equal to 1" in line for line in lines)
    assert "Traceback" not in result.stderr


def test_secret_values_are_masked_in_errors() -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(_env_file=None, telegram_bot_token=["not", "a", "string"], http_port="x")
    assert all("not" not in line for line in error.value.lines)


def test_help_and_version() -> None:
    help_text = _cli("--help", env={"PYTHONPATH": str(ROOT)})
    assert help_text.returncode == 0
    for command in ("run", "migrate"):
        assert command in help_text.stdout
    version = _cli("--version", env={"PYTHONPATH": str(ROOT)})
    assert version.stdout.startswith("cumapp ")


def test_migrate_works_from_any_folder(tmp_path: Path) -> None:
    result = _cli("migrate", env={"PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cumapp.db").exists()


def test_sandbox_switch_per_kind() -> None:
    none = Settings(_env_file=None)  # type: ignore[call-arg]
    plan = plan_providers(none)
    assert plan.all_sandbox and signup_bonus_cents(none, plan) == 500
    some = Settings(_env_file=None, twilio_account_sid="AC1", twilio_auth_token="t")  # type: ignore[call-arg]
    plan = plan_providers(some)
    assert plan.sms == ("twilio",) and plan.verification == "sandbox" and signup_bonus_cents(some, plan) == 0
    strict = Settings(_env_file=None, sandbox="false", groq_api_key="g")  # type: ignore[call-arg]
    with pytest.raises(MissingCredentials) as missing:
        plan_providers(strict)
    assert len(missing.value.lines) == 2
    assert any("TEXTVERIFIED_API_KEY" in line for line in missing.value.lines)


def test_sandbox_false_refuses_to_start_naming_what_is_missing(tmp_path: Path) -> None:
    result = _cli("run", env={"SANDBOX": "false", "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    assert result.returncode == 2
    assert "TWILIO_ACCOUNT_SID" in result.stderr and "GROQ_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr


async def test_health_ready_and_metrics(services: Services) -> None:
    async with TestClient(TestServer(create_app(services))) as client:
        health = await client.get("/healthz")
        assert health.status == 200 and (await health.json())["status"] == "ok"
        ready = await client.get("/readyz")
        assert ready.status == 200 and (await ready.json())["database"] is True
        metrics = await client.get("/metrics")
        assert "cumapp_webhooks_total" in await metrics.text()


async def test_readyz_is_503_when_the_database_is_gone(tmp_path: Path) -> None:
    from core.platform.db import Database
    from core.services import build_services

    settings = make_settings("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    services = build_services(settings, db=Database(settings.database_url))
    async with TestClient(TestServer(create_app(services))) as client:
        ready = await client.get("/readyz")
        assert ready.status == 503
    await services.close()


async def test_oversized_body_gets_413(services: Services) -> None:
    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=str(len(await request.read())))

    def routes(app: web.Application) -> None:
        app.router.add_post("/echo", echo)

    async with TestClient(TestServer(create_app(services, [routes]))) as client:
        small = await client.post("/echo", data=b"x" * 10)
        assert small.status == 200
        big = await client.post("/echo", data=b"x" * (services.settings.http_max_body_bytes + 1))
        assert big.status == 413


def test_readme_quick_start_has_exactly_two_commands() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2
    assert "cumapp run" in commands[0]
    assert "pytest" in commands[1]


def test_readme_configuration_table_matches_settings() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("## Configuration", 1)[1].split("###", 1)[0]
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", table, flags=re.MULTILINE))
    settings = {name.upper() for name in Settings.model_fields}
    assert documented == settings, f"undocumented: {settings - documented}; unknown: {documented - settings}"


def test_readme_tier_table_matches_defaults() -> None:
    from core.platform.settings import DEFAULT_TIERS

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for name, limits in DEFAULT_TIERS.items():
        row = re.search(rf"^\| `{name}` \|(.*)$", text, flags=re.MULTILINE)
        assert row is not None
        cells = [c.strip().replace(",", "").rstrip("%") for c in row.group(1).split("|") if c.strip()]
        assert [int(c) for c in cells] == [
            limits.verifications_per_day, limits.verifications_at_once, limits.sms_per_day, limits.numbers_owned,
            limits.markup_percent, limits.ai_tokens_per_day,
        ]


def test_contract_names_exist_in_settings() -> None:
    contract = ROOT.parent / "shared" / "CONTRACT.md"
    if not contract.exists():
        pytest.skip("shared/CONTRACT.md is not beside the checkout")
    section = contract.read_text(encoding="utf-8").split("## Command line", 1)[0]
    names = set(re.findall(r"^\| `([A-Z][A-Z0-9_]{2,})`", section, flags=re.MULTILINE))
    names |= set(re.findall(r"`, `([A-Z][A-Z0-9_]{2,})`", section))
    assert "DATABASE_URL" in names
    settings = {name.upper() for name in Settings.model_fields}
    assert names <= settings, names - settings


def test_compose_file_sets_only_real_settings_and_matches_defaults() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    app = compose["services"]["app"]
    settings = {name.upper() for name in Settings.model_fields}
    assert set(app["environment"]) <= settings
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    port = int(app["environment"]["HTTP_PORT"])
    assert port == defaults.http_port
    assert "ports" not in app  # only the TLS proxy publishes ports (tests/test_deploy_docs.py)
    assert f"127.0.0.1:{port}/healthz" in " ".join(app["healthcheck"]["test"])
    assert compose["services"]["db"]["healthcheck"]
    assert app["depends_on"]["db"]["condition"] == "service_healthy"
    assert compose["services"]["migrate"]["command"] == ["cumapp", "migrate"] and "--no-migrate" in app["command"]
    assert app["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "pgdata" in compose["volumes"]
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    active = {line.split("=", 1)[0] for line in example.splitlines() if "=" in line and not line.startswith("#")}
    assert active - {"CUMAPP_DOMAIN"} <= settings  # CUMAPP_DOMAIN is read by compose only


def test_dockerfile_runs_as_non_root_with_health_check() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^USER (?!root)\S+", dockerfile, flags=re.MULTILINE)
    assert "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile
    assert f"EXPOSE {Settings(_env_file=None).http_port}" in dockerfile  # type: ignore[call-arg]


def test_import_rules_hold() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports")], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
