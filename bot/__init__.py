"""Chat front ends (Telegram, Discord, terminal) and the `cumapp` command."""
