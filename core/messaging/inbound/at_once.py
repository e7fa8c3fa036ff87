"""The inbound group commit's writes on PostgreSQL as one statement: the messages, their API events, the relays
and webhook deliveries, the threads' unread counts.

Run before anything began a transaction, the statement commits on its own: the batch is then two round trips
(the owners, this) where it was seven (BEGIN, owners, messages, events, relays, unread counts, COMMIT), each
waiting for the event loop's turn through the webhooks in flight (docs/PERFORMANCE.md). The ids of the messages
and events are taken from their sequences beforehand, since the relays and events carry them inside encrypted
payloads built here; a row that depends on a message is written only if that message was (a retried webhook's
SMS stored before is left out, with everything that hangs on it)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Dialect

from core.api import events as api_events
from core.models import ApiEvent, Message, OutboxDelivery
from core.platform import bulk, outbox
from core.platform.clock import utcnow

# The column that ties an event or a delivery row to its message: the row is written only if the message was.
_KEYED = (("of_message", "bigint"),)
EVENT_COLUMNS = ("id", "user_id", "type", "data", "dedupe_key", "created_at")
# An express claim's columns are laid over a row's own, so every delivery row has these, in this order.
_DELIVERY_COLUMNS = tuple(outbox.delivery_row(
    user_id=0, platform="", chat_id="", kind="", payload={}, dedupe_key="", priority=0, source_received_at=None,
    now=utcnow(), origin=None,
))


@dataclass(frozen=True)
class Written:
    """What the statement added: message ids, event ids, and delivery ids by dedupe key."""

    messages: set[int]
    events: set[int]
    deliveries: dict[str, int]


@dataclass(frozen=True)
class _Statement:
    sql: str
    parts: tuple[bulk.Arrays, bulk.Arrays, bulk.Arrays]


@functools.cache
def _statement(message_columns: tuple[str, ...], dialect: Dialect) -> _Statement:
    delivery_columns = _DELIVERY_COLUMNS
    messages_from, messages = bulk.unnest_source(Message.__table__, message_columns, dialect)
    first = len(messages.columns) + 1
    events_from, events = bulk.unnest_source(ApiEvent.__table__, EVENT_COLUMNS, dialect, first, _KEYED)
    first += len(events.columns) + 1
    deliveries_from, deliveries = bulk.unnest_source(
        OutboxDelivery.__table__, delivery_columns, dialect, first, _KEYED)
    first += len(deliveries.columns) + 1
    counted, channel = f"${first}::bigint[]", f"${first + 1}"
    only_added = "WHERE u.of_message IN (SELECT id FROM added)"
    sql = (
        f"WITH added AS (INSERT INTO messages ({', '.join(message_columns)}) SELECT * FROM {messages_from} "
        "ON CONFLICT (provider, provider_message_id) DO NOTHING RETURNING id, conversation_id, received_at), "
        f"events AS (INSERT INTO api_events ({', '.join(EVENT_COLUMNS)}) SELECT {', '.join(EVENT_COLUMNS)} "
        f"FROM {events_from} {only_added} ON CONFLICT (dedupe_key) DO NOTHING RETURNING id, user_id), "
        f"deliveries AS (INSERT INTO outbox_deliveries ({', '.join(delivery_columns)}) "
        f"SELECT {', '.join(delivery_columns)} FROM {deliveries_from} {only_added} "
        "ON CONFLICT (dedupe_key) DO NOTHING RETURNING id, dedupe_key), "
        # The threads' rows are locked in id order, as the row-at-a-time path's sorted updates do, so that two
        # instances' batches never wait on each other in a circle; the UPDATE takes the same (NO KEY) lock.
        "counted AS (UPDATE conversations c SET unread_count = c.unread_count + k.n, last_message_at = k.at "
        "FROM (SELECT t.id, s.n, s.at FROM conversations t JOIN (SELECT conversation_id, count(*) AS n, "
        f"max(received_at) AS at FROM added WHERE id = ANY({counted}) GROUP BY conversation_id) s "
        "ON s.conversation_id = t.id ORDER BY t.id FOR NO KEY UPDATE OF t) k WHERE c.id = k.id) "
        "SELECT 0 AS part, id, NULL::text AS key, NULL::void AS notified FROM added "
        # The NOTIFY of each event, as record_many's: other instances' WebSockets hear it once this commits.
        f"UNION ALL SELECT 1, id, NULL, pg_notify({channel}, user_id || ':' || id) FROM events "
        "UNION ALL SELECT 2, id, dedupe_key, NULL FROM deliveries"
    )
    return _Statement(sql, (messages, events, deliveries))


async def write(
    driver: Any, dialect: Dialect, messages: Sequence[Mapping[str, Any]],
    events: Sequence[tuple[int, Mapping[str, Any]]], deliveries: Sequence[tuple[int, Mapping[str, Any]]],
    counted: Sequence[int],
) -> Written:
    """Write it all in one statement on the asyncpg connection `driver`: `messages` are Message rows with their
    ids, `events` (ApiEvent rows) and `deliveries` (outbox.delivery_row()s) come each after the id of the message
    it depends on; the unread count of each thread is raised by its messages in `counted` that were added."""
    if deliveries and bulk.columns_of([row for _message_id, row in deliveries]) != _DELIVERY_COLUMNS:
        raise ValueError("deliveries must be outbox.delivery_row()s")
    statement = _statement(bulk.columns_of(messages), dialect)
    messages_part, events_part, deliveries_part = statement.parts
    arrays = [
        *messages_part.arrays(messages),
        *events_part.arrays([row for _message_id, row in events]), [message_id for message_id, _row in events],
        *deliveries_part.arrays([row for _message_id, row in deliveries]),
        [message_id for message_id, _row in deliveries],
    ]
    written = Written(set(), set(), {})
    for part, row_id, key, _notified in await driver.fetch(
            statement.sql, *arrays, list(counted), api_events.NOTIFY_CHANNEL):
        if part == 0:
            written.messages.add(row_id)
        elif part == 1:
            written.events.add(row_id)
        else:
            written.deliveries[key] = row_id
    return written
