"""Encryption at rest: the data keyring (DATA_ENCRYPTION_KEYS, or the sandbox key file) and column types using it.

Each `Database` carries its keyring on its engine's dialect, the one object SQLAlchemy hands a column type when it
converts a value; so several databases with different keys live side by side in one process (tests), and an engine
made without a keyring (Alembic, a test's bare engine) stores plain text and reads plain text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import JSON, Text, TypeDecorator
from sqlalchemy.engine import Dialect, make_url

from core.platform.settings import Settings, SettingsError

log = logging.getLogger(__name__)

# The token written: "ag1:" and, in URL-safe base64, the key id, a 12-byte nonce, and the AES-256-GCM ciphertext with
# its 16-byte tag (the key id is also the associated data). The key id names the key that wrote it, so a read goes
# straight to that key and `rotate-keys` sees without decrypting whether a row is under the first key.
_GCM_PREFIX = "ag1:"
_KEY_ID_BYTES = 4
_NONCE_BYTES = 12
_GCM_OVERHEAD = _KEY_ID_BYTES + _NONCE_BYTES + 16
# Tokens of the first version (Fernet: version byte 0x80, an 8-byte timestamp whose high bytes are zero for the next
# few thousand years, a 16-byte IV, whole AES blocks and a 32-byte HMAC, in URL-safe base64) still read.
_FERNET_PREFIX = "gAAAAA"
_FERNET_OVERHEAD = 1 + 8 + 16 + 32
_DIALECT_ATTRIBUTE = "cumapp_keyring"

# What keys are derived for (HKDF "info"): never the data key itself, and one label per purpose, so a fingerprint
# can never be replayed as a cipher key or the other way round.
_GCM_LABEL = b"cumapp/aes-256-gcm/v1"
_KEY_ID_LABEL = b"cumapp/key-id/v1"
_FINGERPRINT_LABEL = b"cumapp/fingerprint/v1"
# Without data keys the text is stored in plain anyway; its fingerprint is then an HMAC under this public key.
_NO_KEY = hashlib.sha256(_FINGERPRINT_LABEL).digest()

MAKE_A_KEY = 'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'


class DataKeyError(Exception):
    """A stored value is encrypted but no configured key opens it; the message says what to check."""


def _b64decode(text: str) -> bytes | None:
    if len(text) % 4:
        return None
    try:
        return base64.urlsafe_b64decode(text.encode("ascii"))
    except (ValueError, binascii.Error):
        return None


def looks_encrypted(value: str) -> bool:
    """True for a token (this version's, or a Fernet token of the first). Plain text written before encryption was
    turned on fails this at the first characters; a plain text passing it would have to be a well-formed token,
    which no SMS is by chance."""
    if value.startswith(_GCM_PREFIX):
        raw = _b64decode(value[len(_GCM_PREFIX):])
        return raw is not None and len(raw) >= _GCM_OVERHEAD
    if not value.startswith(_FERNET_PREFIX):
        return False
    raw = _b64decode(value)
    return raw is not None and len(raw) >= _FERNET_OVERHEAD + 16 and (len(raw) - _FERNET_OVERHEAD) % 16 == 0


def _derive(raw_key: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(raw_key)


class Keyring:
    """The data keys of one database, newest first: the first encrypts, every one decrypts (rotation).
    Without keys it stores plain text, and refuses, clearly, to read what was encrypted."""

    def __init__(self, keys: Sequence[str | bytes] = ()) -> None:
        self._count = len(keys)
        raws = [base64.urlsafe_b64decode(key.encode("ascii") if isinstance(key, str) else key) for key in keys]
        self._fernet = MultiFernet([Fernet(key) for key in keys]) if keys else None
        self._ciphers = [(_derive(raw, _KEY_ID_LABEL)[:_KEY_ID_BYTES], AESGCM(_derive(raw, _GCM_LABEL))) for raw in raws]
        self._by_id: dict[bytes, list[AESGCM]] = {}
        for key_id, cipher in self._ciphers:
            self._by_id.setdefault(key_id, []).append(cipher)
        self._hash_keys = [_derive(raw, _FINGERPRINT_LABEL) for raw in raws] or [_NO_KEY]

    @property
    def encrypts(self) -> bool:
        return bool(self._ciphers)

    def encrypt(self, text: str) -> str:
        if not self._ciphers:
            return text
        key_id, cipher = self._ciphers[0]
        nonce = os.urandom(_NONCE_BYTES)
        sealed = cipher.encrypt(nonce, text.encode("utf-8"), key_id)
        return _GCM_PREFIX + base64.urlsafe_b64encode(key_id + nonce + sealed).decode("ascii")

    def decrypt(self, stored: str) -> str:
        """The text of a token; anything that is not a token (a row from before encryption) comes back as is."""
        if not looks_encrypted(stored):
            return stored
        if not self._ciphers:
            raise DataKeyError(
                "a stored value is encrypted but DATA_ENCRYPTION_KEYS is unset (in sandbox: was the key file beside "
                "the SQLite database deleted?)"
            )
        if stored.startswith(_GCM_PREFIX):
            raw = base64.urlsafe_b64decode(stored[len(_GCM_PREFIX):].encode("ascii"))
            key_id, nonce, sealed = raw[:_KEY_ID_BYTES], raw[_KEY_ID_BYTES:_KEY_ID_BYTES + _NONCE_BYTES], raw[
                _KEY_ID_BYTES + _NONCE_BYTES:]
            for cipher in self._by_id.get(key_id, ()):
                try:
                    return cipher.decrypt(nonce, sealed, key_id).decode("utf-8")
                except InvalidTag:
                    continue
        else:
            assert self._fernet is not None
            try:
                return self._fernet.decrypt(stored.encode("ascii")).decode("utf-8")
            except InvalidToken:
                pass
        raise DataKeyError(
            f"a stored value opens with none of the {self._count} key(s) in DATA_ENCRYPTION_KEYS: keep the key "
            "that wrote it in the list (after the new one) until `cumapp rotate-keys` has re-encrypted everything"
        )

    def rotate(self, stored: str) -> str:
        """The value encrypted with the first key, whatever key (or none) it was stored with."""
        return self.encrypt(self.decrypt(stored))

    def is_current(self, stored: str) -> bool:
        """True when `stored` needs no rotation: a token naming the first key (a Fernet token of the first version
        never is), or, without keys, any text."""
        if not self._ciphers:
            return True
        if not stored.startswith(_GCM_PREFIX) or not looks_encrypted(stored):
            return False
        raw = base64.urlsafe_b64decode(stored[len(_GCM_PREFIX):].encode("ascii"))
        return raw[:_KEY_ID_BYTES] == self._ciphers[0][0]

    def fingerprint(self, text: str) -> str:
        """A keyed hash (HMAC-SHA256 under a key derived from the first data key) for finding equal texts with
        SQL without storing them: a database dump alone cannot test a guess of the text against it."""
        return _hmac(self._hash_keys[0], text)

    def fingerprints(self, text: str) -> list[str]:
        """The fingerprint of `text` under every key, and without a key: what an equal text stored before a
        rotation (or before encryption was turned on) carries."""
        found = [_hmac(key, text) for key in self._hash_keys]
        if self._hash_keys[0] is not _NO_KEY:
            found.append(_hmac(_NO_KEY, text))
        return list(dict.fromkeys(found))


def _hmac(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


PLAIN_TEXT = Keyring()


def bind_keyring(dialect: Dialect, keyring: Keyring) -> None:
    """Make every encrypted column read and written through this dialect's engine use `keyring`."""
    setattr(dialect, _DIALECT_ATTRIBUTE, keyring)


def keyring_of(dialect: Dialect) -> Keyring:
    return getattr(dialect, _DIALECT_ATTRIBUTE, PLAIN_TEXT)


class EncryptedText(TypeDecorator[str]):
    """Text stored as a token (Keyring.encrypt). The column stays TEXT, so the schema does not change; the database
    cannot compare, sort or search it, so filters on such a column belong in Python."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else keyring_of(dialect).encrypt(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else keyring_of(dialect).decrypt(value)


# json.dumps with any option builds a new encoder per call; every outbox row and API event passes through here.
_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class EncryptedJSON(TypeDecorator[Any]):
    """A JSON value stored as one JSON string holding a token of its serialised form; the column stays
    JSON. A row written before encryption (an object, not a string) reads as it was."""

    impl = JSON
    cache_ok = True
    hashable = False  # as JSON: dicts and lists cannot be hashed

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        keyring = keyring_of(dialect)
        if value is None or not keyring.encrypts:
            return value
        return keyring.encrypt(_COMPACT_JSON.encode(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if isinstance(value, str) and looks_encrypted(value):
            return json.loads(keyring_of(dialect).decrypt(value))
        return value


# --- where the keys come from ----------------------------------------------------------------------------------


def sandbox_key_path(database_url: str) -> Path | None:
    """`<database file>.key` beside an SQLite file; None for PostgreSQL and for an in-memory SQLite."""
    url = make_url(database_url)
    if not url.drivername.startswith("sqlite"):
        return None
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:") or url.query.get("mode") == "memory":
        return None
    path = Path(database)
    return path.with_name(path.name + ".key")


def read_key_file(path: Path) -> str:
    key = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        Fernet(key)
    except (ValueError, binascii.Error):
        raise SettingsError([
            f"DATA_ENCRYPTION_KEYS: the sandbox key file {path.resolve()} does not hold a key (44 characters of "
            "URL-safe base64); restore it, or set DATA_ENCRYPTION_KEYS"
        ]) from None
    return key


def read_or_create_key_file(path: Path) -> str:
    """The key in `path`, made (mode 0600) when missing. Two processes starting at once agree on one key: each
    writes its own temporary file and links it into place, and the loser reads the winner's."""
    if path.exists():
        return read_key_file(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(Fernet.generate_key().decode("ascii") + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
            log.info("made the sandbox data key file %s", path.resolve())
        except FileExistsError:
            pass  # another process made it first: its key is the key
    except OSError as error:
        raise SettingsError([f"DATA_ENCRYPTION_KEYS: cannot make the sandbox key file {path.resolve()}: {error}"]) from None
    finally:
        temporary.unlink(missing_ok=True)
    return read_key_file(path)


def keyring_for(settings: Settings, *, all_sandbox: bool, strict: bool = False) -> Keyring:
    """The keyring settings call for: DATA_ENCRYPTION_KEYS when set; with every provider simulated on SQLite, a key
    file beside the database (made on first start); otherwise plain text (the caller warns), or with `strict`
    (start-up of `cumapp`) a SettingsError when real providers are configured.

    Raises SettingsError for a key file that cannot be read or made."""
    keys = settings.encryption_keys()
    if keys:
        return Keyring(keys)
    if not all_sandbox and strict:
        raise SettingsError([
            "DATA_ENCRYPTION_KEYS: unset, but real providers are configured and SMS bodies and AI notes are stored "
            f"encrypted with it; make a key with {MAKE_A_KEY}"
        ])
    if all_sandbox and settings.is_sqlite:
        path = sandbox_key_path(settings.database_url)
        if path is None:
            # An in-memory database dies with the process, and so may its key.
            return Keyring([Fernet.generate_key()])
        return Keyring([read_or_create_key_file(path)])
    return PLAIN_TEXT
