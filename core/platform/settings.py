"""Application settings read from the environment and `.env`, with readable errors for bad values."""

from __future__ import annotations

import base64
import binascii
import json
import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class SandboxMode(StrEnum):
    AUTO = "auto"
    TRUE = "true"
    FALSE = "false"


class TelegramMode(StrEnum):
    POLLING = "polling"
    WEBHOOK = "webhook"


class LogFormat(StrEnum):
    CONSOLE = "console"
    JSON = "json"


class TierLimits(BaseModel):
    """What one tier allows; `markup_percent` is added on top of provider prices."""

    verifications_per_day: int = Field(ge=0)
    sms_per_day: int = Field(ge=0)
    numbers_owned: int = Field(ge=0)
    verifications_at_once: int = Field(ge=0)
    markup_percent: int = Field(ge=0, le=1000)
    ai_tokens_per_day: int = Field(ge=0)
    # What /subscribe charges a month for the tier (0: not sold); on Telegram in Stars at STARS_CENTS_PER_STAR.
    monthly_price_cents: int = Field(0, ge=0)


DEFAULT_TIERS: dict[str, TierLimits] = {
    "free": TierLimits(
        verifications_per_day=5, sms_per_day=20, numbers_owned=1, verifications_at_once=2,
        markup_percent=30, ai_tokens_per_day=20_000,
    ),
    "pro": TierLimits(
        verifications_per_day=50, sms_per_day=500, numbers_owned=5, verifications_at_once=5,
        markup_percent=20, ai_tokens_per_day=200_000, monthly_price_cents=999,
    ),
    "business": TierLimits(
        verifications_per_day=500, sms_per_day=5_000, numbers_owned=50, verifications_at_once=20,
        markup_percent=10, ai_tokens_per_day=2_000_000, monthly_price_cents=4999,
    ),
}
TIER_NAMES: tuple[str, ...] = tuple(DEFAULT_TIERS)

# Provider cost in cents per SMS segment by destination country, used to route each message through the
# cheapest configured provider. "*" is the fallback for countries not listed.
DEFAULT_SMS_COSTS: dict[str, dict[str, int]] = {
    "twilio": {"US": 1, "CA": 1, "GB": 4, "DE": 8, "*": 6},
    "vonage": {"US": 1, "CA": 1, "GB": 3, "DE": 7, "*": 5},
    "sandbox": {"*": 1},
}

# Provider cost in cents of one MMS (text and pictures) by destination country; Twilio sends MMS to the US and Canada.
DEFAULT_MMS_COSTS: dict[str, dict[str, int]] = {"twilio": {"US": 2, "CA": 2, "*": 2}, "sandbox": {"*": 2}}

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, int):
        return [value]
    return value


CsvInts = Annotated[list[int], NoDecode]
_TELEGRAM_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")


def _is_fernet_key(key: str) -> bool:
    if len(key) != 44:
        return False
    try:
        return len(base64.urlsafe_b64decode(key.encode("ascii"))) == 32
    except (ValueError, binascii.Error):
        return False


class Settings(BaseSettings):
    """Every setting of CONTRACT.md plus a few of our own; field names are the environment names, lower-cased."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False,
        env_ignore_empty=True,
    )

    database_url: str = "sqlite+aiosqlite:///./cumapp.db"
    # PostgreSQL connections one process keeps (and as many more at a peak); instances × 2 × this ≤ max_connections.
    database_pool_size: int = Field(20, ge=1, le=500)
    public_base_url: str = "http://localhost:8080"
    http_host: str = "0.0.0.0"
    http_port: int = Field(8080, ge=0, le=65535)  # 0: any free port (tests)
    http_max_body_bytes: int = Field(1_048_576, ge=1024)
    # What one slow or greedy client may hold on the webhook server (webhooks/limits.py).
    http_header_timeout_seconds: float = Field(10.0, gt=0, le=300)
    http_body_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    http_keepalive_seconds: float = Field(75.0, ge=0, le=3600)  # 0: close after each response
    http_max_connections_per_client: int = Field(128, ge=0)  # 0: no cap (behind a proxy that applies its own)
    # /readyz and /metrics: on their own address when METRICS_PORT is set, behind a bearer token when
    # METRICS_TOKEN is set.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(None, ge=0, le=65535)  # 0: any free port (tests)
    metrics_token: SecretStr | None = None
    sandbox: SandboxMode = SandboxMode.AUTO

    telegram_bot_token: SecretStr | None = None
    telegram_api_base_url: str = "https://api.telegram.org/bot"
    telegram_mode: TelegramMode = TelegramMode.POLLING
    telegram_webhook_secret: SecretStr | None = None

    discord_bot_token: SecretStr | None = None
    discord_guild_ids: CsvInts = []
    discord_api_base_url: str | None = None

    admin_telegram_ids: CsvInts = []
    admin_discord_ids: CsvInts = []

    textverified_api_key: SecretStr | None = None
    textverified_api_username: str | None = None
    textverified_base_url: str = "https://www.textverified.com"
    textverified_webhook_secret: SecretStr | None = None

    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_api_base_url: str | None = None

    vonage_api_key: str | None = None
    vonage_api_secret: SecretStr | None = None
    vonage_signature_secret: SecretStr | None = None

    groq_api_key: SecretStr | None = None
    groq_model: str = "openai/gpt-oss-20b"
    groq_base_url: str | None = None
    groq_timeout_seconds: float = Field(3.0, gt=0, le=60)

    verification_poll_seconds: int = Field(5, ge=1)
    signup_bonus_cents: int | None = Field(None, ge=0)
    stars_cents_per_star: int = Field(1, ge=1)
    topup_star_amounts: CsvInts = [50, 250, 500, 1000]

    tier_limits: dict[str, TierLimits] = Field(default_factory=lambda: dict(DEFAULT_TIERS))
    sms_costs: dict[str, dict[str, int]] = Field(default_factory=lambda: dict(DEFAULT_SMS_COSTS))
    # MMS (core/messaging/media.py): the cost of one MMS, as SMS_COSTS; pictures and files over the cap are named.
    mms_costs: dict[str, dict[str, int]] = Field(default_factory=lambda: dict(DEFAULT_MMS_COSTS))
    media_max_bytes: int = Field(5 * 1024 * 1024, ge=1024, le=50 * 1024 * 1024)
    sandbox_sms_success_rate: float = Field(0.95, ge=0, le=1)
    sandbox_code_delay_seconds: float = Field(2.0, ge=0, le=60)

    low_balance_threshold_cents: int = Field(1000, ge=0)
    telegram_allow_paid_broadcast: bool = False

    command_rate_limit: int = Field(30, ge=1)
    command_rate_window_seconds: int = Field(10, ge=1)

    # Integrator API (core.api, webhooks/api): requests a second per key on average, and at once.
    api_rate_per_second: float = Field(20.0, gt=0)
    api_rate_burst: int = Field(40, ge=1)
    api_webhooks_allow_private: bool = False

    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.CONSOLE

    # Comma-separated Fernet keys: the first encrypts, every one decrypts (rotation). Unset in sandbox: a key file.
    data_encryption_keys: SecretStr | None = None

    @field_validator(
        "discord_guild_ids", "admin_telegram_ids", "admin_discord_ids", "topup_star_amounts", mode="before"
    )
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: Any) -> Any:
        text = str(value).upper()
        if text not in LOG_LEVELS:
            raise ValueError(f"allowed: {', '.join(LOG_LEVELS)}")
        return text

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if value.startswith("postgres://") or value.startswith("postgresql://"):
            # Operators paste libpq URLs; the async driver is the only one we ship.
            return "postgresql+asyncpg://" + value.split("://", 1)[1]
        if not (value.startswith("sqlite+aiosqlite://") or value.startswith("postgresql+asyncpg://")):
            raise ValueError("allowed: sqlite+aiosqlite:///path or postgresql+asyncpg://user@host/db")
        return value

    @field_validator("public_base_url", "telegram_api_base_url", "textverified_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("allowed: an http:// or https:// URL")
        return value.rstrip("/") if not value.endswith("/bot") else value

    @field_validator("discord_api_base_url", "twilio_api_base_url", "groq_base_url")
    @classmethod
    def _optional_http_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("allowed: an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("telegram_webhook_secret")
    @classmethod
    def _telegram_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # Telegram's rule for setWebhook's secret_token; anything else fails only once the bot goes live.
        if value is not None and not _TELEGRAM_SECRET.fullmatch(value.get_secret_value()):
            raise ValueError("allowed: 1-256 characters, only A-Z, a-z, 0-9, _ and - (Telegram's rule)")
        return value

    @field_validator("data_encryption_keys")
    @classmethod
    def _encryption_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        keys = [key.strip() for key in value.get_secret_value().split(",") if key.strip()]
        if not keys:
            return None
        for position, key in enumerate(keys, start=1):
            if not _is_fernet_key(key):
                raise ValueError(
                    f"key {position} is not 32 random bytes in URL-safe base64 (44 characters, as "
                    "Fernet.generate_key() makes)"
                )
        return SecretStr(",".join(keys))

    def encryption_keys(self) -> list[str]:
        """The configured data keys, newest (encrypting) first; empty when unset."""
        if self.data_encryption_keys is None:
            return []
        return self.data_encryption_keys.get_secret_value().split(",")

    @field_validator("tier_limits", mode="before")
    @classmethod
    def _tiers(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = json.loads(value)
        merged: dict[str, Any] = {name: limits.model_dump() for name, limits in DEFAULT_TIERS.items()}
        for name, override in (value or {}).items():
            if name not in merged:
                raise ValueError(f"unknown tier {name!r}; allowed: {', '.join(TIER_NAMES)}")
            merged[name] = {**merged[name], **(override.model_dump() if isinstance(override, TierLimits) else override)}
        return merged

    @model_validator(mode="after")
    def _metrics_port_is_its_own(self) -> Settings:
        if self.metrics_port and self.metrics_port == self.http_port:
            raise ValueError("METRICS_PORT must differ from HTTP_PORT (leave it unset to serve /metrics there)")
        return self

    @model_validator(mode="after")
    def _webhook_mode_needs_secret(self) -> Settings:
        if self.telegram_mode is TelegramMode.WEBHOOK and self.telegram_bot_token and not self.telegram_webhook_secret:
            raise ValueError("TELEGRAM_WEBHOOK_SECRET is required when TELEGRAM_MODE=webhook")
        return self

    # --- derived facts -------------------------------------------------------------------------------------

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def verification_configured(self) -> bool:
        return bool(self.textverified_api_key and self.textverified_api_username)

    def twilio_configured(self) -> bool:
        return bool(self.twilio_account_sid and self.twilio_auth_token)

    def vonage_configured(self) -> bool:
        return bool(self.vonage_api_key and self.vonage_api_secret)

    def ai_configured(self) -> bool:
        return bool(self.groq_api_key)


class SettingsError(Exception):
    """Raised with one readable line per bad variable; the CLI prints them and exits with code 2."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


_SECRET_FIELDS = {name for name, field in Settings.model_fields.items() if "SecretStr" in str(field.annotation)}
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_SECRET_QUERY = re.compile(r"(?i)([?&;](?:password|passwd|pwd|pass|secret|token|api_?key|key|auth|sig|signature)=)[^&;#]*")


def mask_url(text: str) -> str:
    """`text` with the password of any `scheme://user:password@host` and secret query values shown as `***`.

    For every URL that is echoed or logged (a bad DATABASE_URL, the start-up banner): the user and host stay
    readable, which is what an operator needs to spot the mistake."""
    match = _URL_SCHEME.match(text)
    if match is None:
        return text
    scheme, rest = text[: match.end()], text[match.end() :]
    # The last "@" ends the credentials: an unencoded "@" or "/" in a pasted password stays hidden too.
    credentials, at, host = rest.rpartition("@")
    if at and ":" in credentials:
        rest = f"{credentials.split(':', 1)[0]}:***@{host}"
    return scheme + _SECRET_QUERY.sub(r"\1***", rest)


def describe_validation_error(error: ValidationError) -> list[str]:
    """Turn pydantic's error list into `NAME='value': what is allowed` lines, secrets masked."""
    lines: list[str] = []
    for item in error.errors():
        loc = item.get("loc") or ()
        field = str(loc[0]) if loc else ""
        name = field.upper() if field else "settings"
        value = item.get("input")
        if field in _SECRET_FIELDS:
            shown = "'***'"
        elif isinstance(value, dict | list) or value is None or not loc:
            shown = ""
        else:
            shown = repr(mask_url(value) if isinstance(value, str) else value)
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        lines.append(f"{name}={shown}: {message}" if shown else f"{name}: {message}")
    return lines


def load_settings(**overrides: Any) -> Settings:
    """Read settings, raising SettingsError (never a traceback) for bad values."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error)) from None
    except json.JSONDecodeError as error:
        raise SettingsError([f"settings: invalid JSON ({error})"]) from None
