"""The transactional outbox: messages to chats are written with what caused them and sent by a dispatcher.

messages: what is sent; wake: waking dispatchers after a commit; liveness: which instances are alive, so the
claims of a dead one are taken over in seconds; store: the table's SQL; attempts: one send and its outcome;
dispatcher: the loop that claims, sends and records.
"""

from core.platform.outbox.dispatcher import DEFAULT_RETRY_FOR, OutboxDispatcher
from core.platform.outbox.liveness import InstanceLiveness
from core.platform.outbox.media import Fetched, register_media_fetcher
from core.platform.outbox.messages import (
    PAYLOAD_VERSION,
    Attachment,
    ChatSender,
    DeliveryError,
    MediaRef,
    OutButton,
    OutgoingMessage,
)
from core.platform.outbox.store import (
    ACTIVE_STATES,
    chat_busy,
    count_retryable_parked,
    delivery_row,
    enqueue,
    enqueue_for_user,
    enqueue_many,
    enqueued,
    outbox_health,
    prepare_claim_plan,
    requeue_parked,
)
from core.platform.outbox.wake import (
    NOTIFY_CHANNEL,
    SENT_HOOKS,
    ExpressClaim,
    SentHook,
    Waker,
    express_claim,
    origin_of,
    register_sent_hook,
    register_waker,
)

__all__ = [
    "ACTIVE_STATES",
    "DEFAULT_RETRY_FOR",
    "NOTIFY_CHANNEL",
    "PAYLOAD_VERSION",
    "SENT_HOOKS",
    "Attachment",
    "ChatSender",
    "DeliveryError",
    "Fetched",
    "MediaRef",
    "InstanceLiveness",
    "OutButton",
    "OutboxDispatcher",
    "OutgoingMessage",
    "SentHook",
    "Waker",
    "chat_busy",
    "count_retryable_parked",
    "delivery_row",
    "ExpressClaim",
    "express_claim",
    "enqueue",
    "enqueue_many",
    "enqueued",
    "enqueue_for_user",
    "origin_of",
    "outbox_health",
    "prepare_claim_plan",
    "register_media_fetcher",
    "register_sent_hook",
    "requeue_parked",
    "register_waker",
]
