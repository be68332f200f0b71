"""Who published a message: a stamp in reserved headers, HMAC-signed when a key is set.

The signature covers the message id, the queue, the body and every header except
the signature itself, the ``x_dead_letter_*`` headers added when a message is
dead-lettered and the ttl expiry, in the canonical envelope encoding every driver
stores. A message
whose stamp does not verify is forged: it is denied, never handled.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from wippy_queue.identity import Actor
from wippy_queue.queue.envelope import signed_bytes
from wippy_queue.queue.message import EXPIRES_AT, PUBLISHER, PUBLISHER_TENANT, Message
from wippy_queue.queue.settle import DL_QUEUE

SIGNATURE = "x_signature"
_UNSIGNED_PREFIX = "x_dead_letter_"


class ForgedProvenance(Exception):
    """The stamp is missing its signature or the signature does not match."""


@dataclass(frozen=True, slots=True)
class Provenance:
    publisher: str | None
    tenant: str | None


ANONYMOUS = Provenance(None, None)


def _unsigned(key: str) -> bool:
    """Headers a signature does not cover: itself, the dead-letter bookkeeping and the
    ttl expiry (which a dead-letter queue sets afresh)."""
    return key in (SIGNATURE, EXPIRES_AT) or key.startswith(_UNSIGNED_PREFIX)


def _digest(mac: hmac.HMAC, message: Message, queue_id: str) -> str:
    """HMAC-SHA256 over the message's canonical envelope bytes (``queue/envelope.py``)."""
    mac = mac.copy()  # the keyed state is computed once, per Stamper
    mac.update(signed_bytes(message, queue_id, _unsigned))
    return mac.hexdigest()


class Stamper:
    def __init__(
        self, key: str | None, dead_letter_sources: Mapping[str, frozenset[str]] | None = None
    ) -> None:
        self._mac = hmac.new(key.encode(), digestmod=hashlib.sha256) if key else None
        #: dead-letter queue id -> the queues that dead-letter into it
        self._sources = dict(dead_letter_sources or {})

    @property
    def signing(self) -> bool:
        return self._mac is not None

    def stamp(self, message: Message, queue_id: str, actor: Actor) -> None:
        message.headers[PUBLISHER] = actor.id
        if actor.tenant is not None:
            message.headers[PUBLISHER_TENANT] = actor.tenant
        if self._mac is not None:
            message.headers[SIGNATURE] = _digest(self._mac, message, queue_id)

    def verify(self, message: Message, queue_id: str) -> Provenance:
        """The verified publisher; raise ForgedProvenance when the stamp does not hold."""
        headers = message.headers
        publisher = headers.get(PUBLISHER)
        signature = headers.get(SIGNATURE)
        if publisher is None and signature is None and PUBLISHER_TENANT not in headers:
            return ANONYMOUS
        if self._mac is not None:
            if not isinstance(signature, str):
                raise ForgedProvenance("the publisher stamp is not signed")
            # A dead-lettered copy was signed for the queue it was first published to;
            # that (unsigned) header is believed only where such copies can arrive.
            origin = headers.get(DL_QUEUE)
            signed_for = queue_id
            if isinstance(origin, str) and origin in self._sources.get(queue_id, ()):
                signed_for = origin
            expected = _digest(self._mac, message, signed_for)
            if not hmac.compare_digest(signature, expected):
                raise ForgedProvenance("the publisher stamp's signature does not match")
        if not isinstance(publisher, str):
            raise ForgedProvenance("a publisher tenant without a publisher")
        tenant = headers.get(PUBLISHER_TENANT)
        return Provenance(publisher, None if tenant is None else str(tenant))
