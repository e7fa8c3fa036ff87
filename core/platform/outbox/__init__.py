"""The transactional outbox: messages to chats are written with what caused them and sent by a dispatcher.

messages: what is sent; wake: waking dispatchers after a commit; store: the table's SQL; attempts: one send and
its outcome; dispatcher: the loop that claims, sends and records.
"""

from core.platform.outbox.dispatcher import OutboxDispatcher
from core.platform.outbox.messages import (
    PAYLOAD_VERSION,
    ChatSender,
    DeliveryError,
    OutButton,
    OutgoingMessage,
)
from core.platform.outbox.store import (
    ACTIVE_STATES,
    enqueue,
    enqueue_for_user,
    outbox_health,
    prepare_claim_plan,
)
from core.platform.outbox.wake import (
    NOTIFY_CHANNEL,
    SENT_HOOKS,
    SentHook,
    Waker,
    register_sent_hook,
    register_waker,
)

__all__ = [
    "ACTIVE_STATES",
    "NOTIFY_CHANNEL",
    "PAYLOAD_VERSION",
    "SENT_HOOKS",
    "ChatSender",
    "DeliveryError",
    "OutButton",
    "OutboxDispatcher",
    "OutgoingMessage",
    "SentHook",
    "Waker",
    "enqueue",
    "enqueue_for_user",
    "outbox_health",
    "prepare_claim_plan",
    "register_sent_hook",
    "register_waker",
]
