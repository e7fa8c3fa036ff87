"""Inbound SMS: stored once, relayed to the owner's chats through the outbox, STOP/START honoured, long texts
joined from their parts, and webhooks' SMS written together in group commits."""
