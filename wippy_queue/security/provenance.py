"""Who published a message: a stamp in reserved headers, HMAC-signed when a key is set.

Keys have ids: ``x_signature`` is ``<key id>:<hex HMAC-SHA256>``, made with the key
that signs and checked with whichever listed key it names, so keys rotate (add the
new key everywhere, switch the signing id, later drop the old one). A signed stamp
carries its time (the ``timestamp`` header it covers): with a ``max_message_age``
a first delivery of an older one is stale. A stamp that no key can verify is believed only where the
message cannot have come from outside this process (the memory driver); from a
broker it is dropped, and the message is anonymous.

The signature covers the message id, the queue, the body and every header except
the signature itself, the ``x_dead_letter_*`` headers added when a message is
dead-lettered and the ttl expiry (``envelope.signed_bytes``: the canonical JSON of
id, queue and headers, then the body). A stamp signed over the earlier frame
(``signed_bytes_v1``) by a version before it still verifies. A message whose stamp
does not verify is forged: it is denied, never handled.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

from wippy_queue.identity import Actor
from wippy_queue.queue.envelope import signed_bytes, signed_bytes_v1
from wippy_queue.queue.message import EXPIRES_AT, PUBLISHER, PUBLISHER_TENANT, TIMESTAMP, Message
from wippy_queue.queue.settle import DL_QUEUE

SIGNATURE = "x_signature"
_UNSIGNED_PREFIX = "x_dead_letter_"
#: the stamp's headers: dropped from a broker's message that no key can verify
STAMP = frozenset((PUBLISHER, PUBLISHER_TENANT, SIGNATURE))


class ForgedProvenance(Exception):
    """The stamp is missing its signature or the signature does not match."""


class StaleProvenance(ForgedProvenance):
    """The stamp verifies but is older than ``max_message_age``: a replay, maybe."""


class Provenance(NamedTuple):
    """Who published (a named tuple: made for every verified delivery, and a frozen
    dataclass's ``__init__`` costs several times more)."""

    publisher: str | None
    tenant: str | None


ANONYMOUS = Provenance(None, None)


#: headers a signature does not cover: itself, the dead-letter bookkeeping (prefixed)
#: and the ttl expiry (which a dead-letter queue sets afresh)
_UNSIGNED = frozenset((SIGNATURE, EXPIRES_AT))


#: what a signature covers, as ``envelope.signed_bytes``
Frame = Callable[[Message, str, frozenset[str], str, str], bytes]


class HmacSha256:
    """HMAC-SHA256 (RFC 2104) from the key's two SHA-256 states, computed once.

    The construction ``hmac.py`` itself falls back to; copying two ``hashlib`` states
    costs half of copying an ``hmac.HMAC`` through its Python wrapper (about 1 µs, paid
    at every signed publish and every verified delivery). Tests hold it equal to
    ``hmac.new``.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(hmac.trans_36))
        self._outer = hashlib.sha256(key.translate(hmac.trans_5C))

    def sign(self, message: Message, queue_id: str, frame: Frame = signed_bytes) -> str:
        """The hex MAC of the message's canonical bytes (``queue/envelope.py``)."""
        inner = self._inner.copy()
        inner.update(frame(message, queue_id, _UNSIGNED, _UNSIGNED_PREFIX, DL_QUEUE))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


_BLOCK = 64  # SHA-256's block size


class Stamper:
    """Stamps and verifies provenance with a ring of keys.

    ``keys``: key id -> secret; ``signing_id`` names the one that signs (None: no
    signing, nothing verifies). ``max_age_s``: a first delivery of a stamp signed
    longer ago is stale (a requeued or delayed message is not: it was fresh when
    first delivered).
    """

    def __init__(
        self,
        keys: Mapping[str, str] | None = None,
        signing_id: str | None = None,
        *,
        max_age_s: float | None = None,
        dead_letter_sources: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        self._macs = {kid: HmacSha256(secret.encode()) for kid, secret in (keys or {}).items()}
        if signing_id is not None and signing_id not in self._macs:
            raise ValueError(f"signing key id {signing_id!r} is not one of the keys given")
        #: the signing key's MAC and its signatures' ``<key id>:`` prefix, looked up once
        self._signer = None if signing_id is None else self._macs[signing_id]
        self._prefix = f"{signing_id}:"
        self._max_age_s = max_age_s
        #: dead-letter queue id -> the queues that dead-letter into it
        self._sources = dict(dead_letter_sources or {})

    @property
    def signing(self) -> bool:
        return self._signer is not None

    def stamp(self, message: Message, queue_id: str, actor: Actor) -> None:
        headers = message.headers
        headers[PUBLISHER] = actor.id
        if actor.tenant is not None:
            headers[PUBLISHER_TENANT] = actor.tenant
        if self._signer is not None:  # the message's timestamp is the stamp's time
            headers[SIGNATURE] = self._prefix + self._signer.sign(message, queue_id)

    def verify(
        self, message: Message, queue_id: str, *, attempt: int = 1, trusted: bool = True
    ) -> Provenance:
        """The verified publisher; raise ForgedProvenance when the stamp does not hold.

        ``trusted``: the message can only have been stamped by this process (no key
        needed to believe it). Untrusted and unverifiable, the stamp is dropped.
        """
        headers = message.headers
        # (three lookups: a third of ``STAMP.isdisjoint``, which walks the headers)
        if (
            PUBLISHER not in headers
            and SIGNATURE not in headers
            and PUBLISHER_TENANT not in headers
        ):
            return ANONYMOUS
        if not self._macs:
            if not trusted:
                for key in STAMP:
                    headers.pop(key, None)
                return ANONYMOUS
        else:
            self._check_signature(message, queue_id)
            if attempt == 1 and self._max_age_s is not None:
                self._check_age(headers.get(TIMESTAMP), self._max_age_s)
        publisher = headers.get(PUBLISHER)
        if not isinstance(publisher, str):
            raise ForgedProvenance("a publisher tenant without a publisher")
        tenant = headers.get(PUBLISHER_TENANT)
        return Provenance(publisher, None if tenant is None else str(tenant))

    def _check_signature(self, message: Message, queue_id: str) -> None:
        headers = message.headers
        signature = headers.get(SIGNATURE)
        if type(signature) is not str or ":" not in signature:  # (exact types: see message.py)
            raise ForgedProvenance("the publisher stamp is not signed")
        kid, _, given = signature.rpartition(":")
        mac = self._macs.get(kid)
        if mac is None:
            raise ForgedProvenance(
                f"the publisher stamp is signed with key id {kid!r}, which this runtime "
                f"does not have (it has {', '.join(sorted(self._macs))})"
            )
        # A dead-lettered copy was signed for the queue it was first published to;
        # that (unsigned) header is believed only where such copies can arrive.
        origin = headers.get(DL_QUEUE)
        signed_for = queue_id
        if isinstance(origin, str) and origin in self._sources.get(queue_id, ()):
            signed_for = origin
        # the signature is lifted out while the rest is encoded, and put back: what
        # the signature does not cover is otherwise dropped from a copy of the headers
        del headers[SIGNATURE]
        try:
            holds = hmac.compare_digest(given, mac.sign(message, signed_for)) or (
                # signed by a version before the current frame, and queued since
                hmac.compare_digest(given, mac.sign(message, signed_for, signed_bytes_v1))
            )
        finally:
            headers[SIGNATURE] = signature
        if not holds:
            raise ForgedProvenance("the publisher stamp's signature does not match")

    @staticmethod
    def _check_age(signed_at: object, max_age_s: float) -> None:
        if type(signed_at) is not int and type(signed_at) is not float:  # not bool either
            raise ForgedProvenance("the signed message carries no timestamp")
        age_s = time.time() - signed_at
        if age_s > max_age_s:
            raise StaleProvenance(
                f"the publisher stamp was signed {age_s:.0f}s ago; max_message_age is "
                f"{max_age_s:g}s"
            )
