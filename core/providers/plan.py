"""The sandbox switch: per provider kind, the real provider when its credentials are set, else its sandbox twin."""

from __future__ import annotations

from dataclasses import dataclass

from core.platform.settings import SandboxMode, Settings


class MissingCredentials(Exception):
    """SANDBOX=false and some provider kind has no credentials; one line per missing kind."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


@dataclass(frozen=True)
class ProviderPlan:
    """Which provider serves each kind; `sms` may list several (messages are routed by cost)."""

    verification: str
    sms: tuple[str, ...]
    ai: str

    @property
    def all_sandbox(self) -> bool:
        return self.verification == "sandbox" and self.sms == ("sandbox",) and self.ai == "sandbox"

    @property
    def any_sandbox(self) -> bool:
        return self.verification == "sandbox" or "sandbox" in self.sms or self.ai == "sandbox"

    @property
    def simulated(self) -> tuple[str, ...]:
        """The kinds a sandbox twin serves, in a fixed order, e.g. ("verification", "ai")."""
        kinds = (("verification", self.verification == "sandbox"), ("sms", "sandbox" in self.sms),
                 ("ai", self.ai == "sandbox"))
        return tuple(kind for kind, simulated in kinds if simulated)

    def describe(self) -> str:
        return f"verification={self.verification}, sms={'+'.join(self.sms)}, ai={self.ai}"


def plan_providers(settings: Settings) -> ProviderPlan:
    """Decide each kind's provider; with SANDBOX=false, missing credentials are an error naming them."""
    forced = settings.sandbox is SandboxMode.TRUE
    verification = "textverified" if settings.verification_configured() and not forced else "sandbox"
    sms: list[str] = []
    if not forced:
        if settings.twilio_configured():
            sms.append("twilio")
        if settings.vonage_configured():
            sms.append("vonage")
    ai = "groq" if settings.ai_configured() and not forced else "sandbox"

    if settings.sandbox is SandboxMode.FALSE:
        missing: list[str] = []
        if verification == "sandbox":
            missing.append("verification: set TEXTVERIFIED_API_KEY and TEXTVERIFIED_API_USERNAME")
        if not sms:
            missing.append("sms: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN, or VONAGE_API_KEY and VONAGE_API_SECRET")
        if ai == "sandbox":
            missing.append("ai: set GROQ_API_KEY")
        if missing:
            raise MissingCredentials([f"SANDBOX=false but {line}" for line in missing])
    return ProviderPlan(verification=verification, sms=tuple(sms) or ("sandbox",), ai=ai)


def has_real_chat(settings: Settings) -> bool:
    """A Telegram or Discord token is set: strangers reach the bot, not only the operator at the terminal."""
    return bool(settings.telegram_bot_token or settings.discord_bot_token)


def simulated_for_real_users(settings: Settings, plan: ProviderPlan) -> tuple[str, ...]:
    """The simulated kinds people of a real chat could take for real: what they are sold from these says "sandbox",
    and no real money (Telegram Stars) is taken while any is simulated. Empty for the terminal-only sandbox, whose
    one user is the operator who started it."""
    return plan.simulated if has_real_chat(settings) else ()


def signup_bonus_cents(settings: Settings, plan: ProviderPlan) -> int:
    """SIGNUP_BONUS_CENTS when set; otherwise 500 when every provider is a sandbox twin, else 0."""
    if settings.signup_bonus_cents is not None:
        return settings.signup_bonus_cents
    return 500 if plan.all_sandbox else 0
