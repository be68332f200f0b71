"""The aiobotocore SQS client, wrapped: every call counted, every error translated.

``SqsClient.call`` is the one place the driver meets the client library: errors
come out as our ``DriverError`` family (``Unavailable`` when the endpoint cannot be
reached or answers with a server fault or throttling, ``QueueMissing`` for a queue
that does not exist), and ``calls`` counts API calls by operation (the batching
tests and the bench read it). ``Link`` is the driver's view of the endpoint: up, or
down and probed with the entry's ``lifecycle.restart`` back-off until it answers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore import exceptions as boto
from botocore.loaders import Loader, create_loader

from wippy_queue.errors import DriverError
from wippy_queue.lifecycle.backoff import restart_delay
from wippy_queue.lifecycle.config import RestartPolicy
from wippy_queue.tasks import cancel_and_wait

log = logging.getLogger(__name__)

_MISSING = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
_THROTTLED = {"Throttling", "ThrottlingException", "RequestThrottled", "ServiceUnavailable"}
_CREDENTIALS = (
    boto.NoCredentialsError,
    boto.PartialCredentialsError,
    boto.CredentialRetrievalError,
)
_NETWORK = (boto.HTTPClientError, boto.ConnectionError, aiohttp.ClientError, OSError, TimeoutError)


class Unavailable(DriverError):
    """The SQS endpoint cannot be reached now (or is failing): retry after a back-off."""


class QueueMissing(DriverError):
    """The queue does not exist on SQS."""


@functools.cache
def _loader() -> Loader:
    """botocore's reader of service models, shared: each new client skips re-parsing SQS's
    model (a tenth of a second). It holds only files from botocore's own package."""
    return create_loader()


def error_code(err: boto.ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def translate(err: BaseException, operation: str) -> DriverError:
    """``err`` from the client library as one of ours."""
    if isinstance(err, boto.ClientError):
        code = error_code(err)
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        text = f"SQS {operation}: {code}: {err.response.get('Error', {}).get('Message', '')}"
        if code in _MISSING:
            return QueueMissing(text)
        if status >= 500 or code in _THROTTLED:
            return Unavailable(text)
        return DriverError(text)
    if isinstance(err, _CREDENTIALS):
        return DriverError(
            f"SQS {operation}: no usable AWS credentials ({err}); set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, a profile, or run with an instance/container role"
        )
    if isinstance(err, _NETWORK):
        return Unavailable(f"SQS {operation}: endpoint unreachable: {type(err).__name__}: {err}")
    return DriverError(f"SQS {operation}: {type(err).__name__}: {err}")


class SqsClient:
    """One aiobotocore client for one driver, opened by ``open`` and closed by ``close``."""

    def __init__(
        self,
        *,
        region: str | None,
        endpoint_url: str | None,
        profile: str | None,
        read_timeout_s: float,
    ) -> None:
        self._region = region
        self._endpoint_url = endpoint_url
        self._profile = profile
        self._read_timeout_s = read_timeout_s
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        #: API calls made, by operation (SendMessageBatch, ReceiveMessage, ...)
        self.calls: collections.Counter[str] = collections.Counter()

    async def open(self) -> None:
        session = get_session()
        session.register_component("data_loader", _loader())
        if self._profile:
            session.set_config_variable("profile", self._profile)
        config = AioConfig(
            # one quick retry inside botocore; longer outages are the Link's back-off
            retries={"mode": "standard", "total_max_attempts": 2},
            connect_timeout=5,
            read_timeout=self._read_timeout_s,
            max_pool_connections=64,
        )
        stack = contextlib.AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(
                session.create_client(
                    "sqs",
                    region_name=self._region,
                    endpoint_url=self._endpoint_url,
                    config=config,
                )
            )
        except boto.NoRegionError as err:
            await stack.aclose()
            raise DriverError(
                "SQS needs a region: set region: in the driver entry, or AWS_DEFAULT_REGION"
            ) from err
        except Exception as err:
            await stack.aclose()
            raise translate(err, "connect") from err
        self._stack = stack

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()

    async def call(self, operation: str, **params: Any) -> dict[str, Any]:
        """Call ``operation`` (``SendMessageBatch``) with ``params``; errors translated."""
        client = self._client
        if client is None:
            raise DriverError(f"SQS {operation}: the client is closed")
        method = getattr(client, _snake(operation))
        self.calls[operation] += 1
        try:
            result: dict[str, Any] = await method(**params)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            raise translate(err, operation) from err
        return result


def _snake(operation: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in operation).lstrip("_")


class Link:
    """Whether the endpoint answers. ``lost`` starts probing with back-off; ``ready``
    waits until it answers again (or the driver stops); past the restart policy's
    ``max_attempts`` the link gives up and ``on_give_up`` hears why."""

    def __init__(
        self,
        name: str,
        policy: RestartPolicy,
        probe: Callable[[], Awaitable[object]],
        on_give_up: Callable[[BaseException], None],
    ) -> None:
        self._name = name
        self._policy = policy
        self._probe = probe
        self._on_give_up = on_give_up
        self._up = asyncio.Event()
        self._up.set()
        self._closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return self._up.is_set()

    def lost(self, err: BaseException) -> None:
        """A call found the endpoint unreachable: probe until it answers."""
        if not self._up.is_set() or self._closed.is_set():
            return
        log.warning("driver %s: SQS unreachable (%s); backing off", self._name, err)
        self._up.clear()
        self._task = asyncio.get_running_loop().create_task(self._reconnect(err))

    async def ready(self) -> bool:
        """Wait while the endpoint is down; False once the link is closed."""
        if self._up.is_set() or self._closed.is_set():
            return not self._closed.is_set()
        up = asyncio.ensure_future(self._up.wait())
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({up, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            up.cancel()
            closed.cancel()
        return not self._closed.is_set()

    async def _reconnect(self, err: BaseException) -> None:
        attempt = 0
        while not self._closed.is_set():
            attempt += 1
            limit = self._policy.max_attempts
            if limit and attempt > limit:
                log.error("driver %s: SQS still unreachable after %d tries", self._name, limit)
                self._on_give_up(DriverError(f"SQS unreachable after {limit} tries: {err}"))
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(restart_delay(self._policy, attempt)):
                    await self._closed.wait()
            if self._closed.is_set():
                return
            try:
                await self._probe()
            except Unavailable as probe_err:
                err = probe_err
                continue
            except DriverError:
                pass  # it answered (with an error of another kind): reachable
            log.warning("driver %s: SQS reachable again after %d tries", self._name, attempt)
            self._up.set()
            return

    async def close(self) -> None:
        self._closed.set()
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait([task])

    def reopen(self) -> None:
        self._closed.clear()
        self._up.set()
