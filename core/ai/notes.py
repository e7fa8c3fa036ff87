"""Wording shared by every place that shows an AI answer: who produced it, and the note under a relayed SMS."""

from __future__ import annotations

from core.ai.answers import RULES_ENGINE
from core.platform.i18n import Html, escape, t
from core.providers.ai import Analysis


def engine_label(locale: str, engine: str) -> Html:
    """"Groq (openai/gpt-oss-20b)" or "offline rules": who produced an answer, as the user reads it."""
    if engine.startswith("groq:"):
        return t(locale, "ai_engine_groq", model=engine.split(":", 1)[1])
    if engine == RULES_ENGINE:
        return t(locale, "ai_engine_rules")
    return escape(engine)


def relay_note(locale: str, analysis: Analysis) -> Html:
    """The line automatic analysis adds under a relayed SMS: a warning for a scam, else a short summary."""
    engine = engine_label(locale, analysis.engine)
    if analysis.intent == "spam_phishing" or analysis.warning:
        warning = analysis.warning or t(locale, "ai_intent_spam_phishing")
        return t(locale, "ai_relay_warning", warning=warning, engine=engine)
    return t(
        locale, "ai_relay_note", intent=t(locale, f"ai_intent_{analysis.intent}"),
        urgency=t(locale, f"ai_urgency_{analysis.urgency}"), engine=engine,
    )
