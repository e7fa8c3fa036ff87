"""The shape and planner settings of a claim on PostgreSQL, so that it reads what it claims, not the backlog.

A claim picks due deliveries whose chat has nothing earlier waiting or being sent. It walks the pending rows in claim
order (ix_outbox_deliveries_pending_order) and, for each, looks for an earlier active row of its chat
(ix_outbox_deliveries_active_chat: only those rows, by chat and id), stopping at its limit. The check stays a
subquery run per candidate (OFFSET 0 keeps PostgreSQL from turning it into a join): as a join, the planner hashed
the whole backlog on every claim and compared each row with every active row of its chat, 0.4 s a claim with 30,000
waiting in 100 chats and 11.5 s with them in 3 chats (bench/claim_backlog.py); with statistics that saw no pending
rows it picked nested loops that rescanned them per candidate instead. Sorting and sequential scans are off while
a claim plans (set_config's is_local: for its transaction only), so that no statistics can make it read every
pending row to sort them, or scan the table once per candidate.
"""

from __future__ import annotations

# For a SELECT list, so that a claim's transaction can take them with another check in the same round trip.
CLAIM_PLAN_SETTINGS = "set_config('enable_sort', 'off', true), set_config('enable_seqscan', 'off', true)"
