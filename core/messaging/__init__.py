"""Owned numbers and two-way SMS: the number shop, sending with holds, inbound relay, delivery status, conversations, templates."""
