"""Registry in a NATS JetStream key-value bucket, for instances on many machines.

One key per instance (the instance id) holds the record as JSON. Leases use
JetStream per-message TTLs (NATS server 2.11+): every register and heartbeat
re-puts the record with ``Nats-TTL`` = the lease, so the server drops the
entry when heartbeats stop. Per-message TTLs have whole-second granularity:
the lease is rounded up to whole seconds (at least 1 s) and the record stores
the rounded value. The bucket is created with subject delete markers
(``marker_ttl``), so watchers see ``removed`` when a lease ends.

A heartbeat is a compare-and-set on the key's last revision, so a heartbeat
that races an expiry or a deregistration fails with
:class:`~tether.registry.errors.InstanceNotRegistered` instead of
resurrecting the entry.

A watch subscribes to new messages first, then reads the snapshot the way
:meth:`NatsRegistry.list` does (the stream's subjects, then each key's last
entry), then applies the messages that are newer than what the snapshot saw,
by stream sequence. nats-py's KV watcher is not used: its end-of-snapshot
marker can come before the snapshot under load.

Every NATS failure (no connection, a timeout, an error answer from
JetStream) is raised as :class:`~tether.registry.errors.RegistryUnavailable`
with nats-py's exception as the cause.

Expiry is decided by the NATS server's clock only; clients never compare
timestamps across machines.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import math
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue
from pydantic import ValidationError

from .base import Registry, WatchView, filter_records, resolve_lease, with_heartbeat
from .errors import InstanceNotRegistered, RegistryClosed, RegistryUnavailable
from .model import HealthStatus, InstanceRecord, RegistryEvent, utc_now

__all__ = ["DEFAULT_BUCKET", "NatsRegistry"]

logger = logging.getLogger(__name__)

DEFAULT_BUCKET = "tether_registry"
_WRONG_LAST_SEQUENCE = (10071, 10164)
_DELETE_OPS = ("DEL", "PURGE")
_OP_HEADER = "KV-Operation"
_MARKER_HEADER = "Nats-Marker-Reason"  # server-placed delete markers (TTL expiry, purge)
_RECONNECT_CHECK = 1.0  # seconds between a watcher's checks for a reconnection
_RESYNC_RETRY = 0.5  # seconds between attempts to restart a watch after an outage


def _reconnects(client: NatsClient | None) -> int:
    """How many times ``client`` reconnected so far (0 without a client)."""
    return 0 if client is None else int(client.stats["reconnects"])


def _is_auth_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, nats.errors.AuthorizationError) or "authorization" in text


def _without_login(url: str) -> str:
    """``url`` without its user and password, for messages."""
    scheme, sep, rest = url.rpartition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"


def _ttl_seconds(lease: float) -> int:
    """Per-message TTL for ``lease`` seconds: whole seconds, rounded up, >= 1."""
    return max(1, math.ceil(lease - 1e-9))


@contextlib.contextmanager
def _backend_errors() -> Iterator[None]:
    """NATS failures as RegistryUnavailable. A missing key stays
    ``KeyNotFoundError``, which the callers turn into their own answer."""
    try:
        yield
    except nats.js.errors.KeyNotFoundError:
        raise
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        raise RegistryUnavailable(f"NATS registry unavailable: {exc!r}") from exc


class _Updates:
    """Messages of one watch's subscription, queued for the watch to read, and
    the revision it last applied per live key (``revisions``: keys whose
    entry is gone are dropped, so it holds no more than the live instances).

    ``None`` in the queue means: stop (the registry is closing)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Msg | None] = asyncio.Queue()
        self.subscription: Subscription | None = None
        self.revisions: dict[str, int] = {}

    async def put(self, msg: Msg) -> None:
        self.queue.put_nowait(msg)

    async def stop(self) -> None:
        self.queue.put_nowait(None)
        subscription, self.subscription = self.subscription, None
        if subscription is not None:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()


class NatsRegistry(Registry):
    """Registry in the JetStream key-value bucket ``bucket``.

    Args:
        servers: NATS URL(s), e.g. ``"nats://127.0.0.1:4222"``.
        bucket: key-value bucket name, created on first use when missing.
        marker_ttl: seconds that delete markers (expiry, deregistration) stay
            in the bucket; watchers must be connected within that time to see
            them (default 60).
        client: an already connected NATS client to use; it is not closed by
            :meth:`close`. Default: connect on first use, with endless
            reconnection, and close on :meth:`close`.
        connect_timeout: seconds to wait for the first connection before
            raising :class:`RegistryUnavailable` (default 5).
        request_timeout: seconds per JetStream request (default 5).
        connect_options: extra keyword arguments for ``nats.connect`` (user,
            password, token, tls, ...); :func:`~tether.registry.open_registry`
            fills them from the ``TETHER_NATS_*`` settings
            (:class:`~tether.transports.nats_connect.NatsCredentials`).

    Needs a NATS server 2.11 or later with JetStream enabled
    (``nats-server -js``): leases are per-message TTLs.
    """

    def __init__(
        self,
        servers: str | Sequence[str] = "nats://127.0.0.1:4222",
        *,
        bucket: str = DEFAULT_BUCKET,
        marker_ttl: float = 60.0,
        client: NatsClient | None = None,
        connect_timeout: float = 5.0,
        request_timeout: float = 5.0,
        connect_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._servers = [servers] if isinstance(servers, str) else builtins.list(servers)
        self.bucket = bucket
        self._marker_ttl = marker_ttl
        self._client = client
        self._owns_client = client is None
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._connect_options = dict(connect_options or {})
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._watches: set[_Updates] = set()

    # -- connection -----------------------------------------------------------

    def _subject(self, instance_id: str) -> str:
        return f"$KV.{self.bucket}.{instance_id}"

    async def _ensure(self) -> tuple[JetStreamContext, KeyValue]:
        if self._closed:
            raise RegistryClosed("the registry is closed")
        if self._js is not None and self._kv is not None:
            return self._js, self._kv
        async with self._lock:
            if self._js is None or self._kv is None:
                if self._client is None:
                    self._client = await self._connect()
                js = self._client.jetstream(timeout=self._request_timeout)
                with _backend_errors():
                    self._kv = await self._open_bucket(js)
                self._js = js
            return self._js, self._kv

    async def _connect(self) -> NatsClient:
        errors: list[Exception] = []

        async def on_error(exc: Exception) -> None:
            # Kept to say why a first connection fails: a refused login wins
            # over the connection reset that follows it.
            if not (errors and _is_auth_error(errors[-1])):
                errors[:] = [exc]
            logger.debug("NATS registry connection error: %r", exc)

        options: dict[str, Any] = {
            "name": "tether-registry",
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "connect_timeout": self._connect_timeout,
            "error_cb": on_error,
            **self._connect_options,
        }
        try:
            return await asyncio.wait_for(
                nats.connect(self._servers, **options), self._connect_timeout
            )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            cause = f"{errors[-1]!r}" if errors else f"{exc!r}"
            raise RegistryUnavailable(
                f"cannot connect to NATS at {', '.join(_without_login(s) for s in self._servers)} "
                f"within {self._connect_timeout} s: {cause}"
            ) from exc

    async def _open_bucket(self, js: JetStreamContext) -> KeyValue:
        try:
            kv = await js.key_value(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            try:
                return await js.create_key_value(
                    bucket=self.bucket,
                    history=1,
                    limit_marker_ttl=self._marker_ttl,
                    description="tether service registry",
                )
            except nats.js.errors.BadRequestError:  # created concurrently
                kv = await js.key_value(self.bucket)
        status = await kv.status()
        if not status.marker_ttl:
            # An older bucket without delete markers: enable them so that
            # watchers see lease expiries.
            config = status.stream_info.config
            config.subject_delete_marker_ttl = self._marker_ttl
            config.allow_msg_ttl = True
            try:
                await js.update_stream(config)
            except nats.js.errors.APIError as exc:
                logger.warning(
                    "bucket %s has no delete markers and cannot be updated (%s): "
                    "watchers will not see lease expiries",
                    self.bucket,
                    exc,
                )
        return kv

    # -- operations -------------------------------------------------------------

    async def _put(self, record: InstanceRecord, *, last_revision: int | None = None) -> None:
        js, _ = await self._ensure()
        headers = None
        if last_revision is not None:
            headers = {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(last_revision)}
        with _backend_errors():
            try:
                await js.publish(
                    self._subject(record.instance_id),
                    record.model_dump_json().encode(),
                    headers=headers,
                    msg_ttl=_ttl_seconds(record.lease_seconds),
                )
            except nats.js.errors.APIError as exc:
                if last_revision is not None and exc.err_code in _WRONG_LAST_SEQUENCE:
                    raise InstanceNotRegistered(record.instance_id) from exc
                raise

    async def register(self, record: InstanceRecord, lease_seconds: float | None = None) -> None:
        """See :meth:`Registry.register`. The lease is rounded up to whole seconds.

        Raises:
            ValueError: a lease that is not a finite number > 0.
            RegistryUnavailable: NATS cannot be reached or refused the write.
            RegistryClosed: after :meth:`close`.
        """
        lease = float(_ttl_seconds(resolve_lease(record, lease_seconds)))
        now = utc_now()
        await self._put(
            record.model_copy(
                update={"registered_at": now, "last_heartbeat": now, "lease_seconds": lease}
            )
        )

    async def heartbeat(
        self,
        instance_id: str,
        *,
        health: HealthStatus | None = None,
        service_health: Mapping[str, HealthStatus] | None = None,
    ) -> None:
        """See :meth:`Registry.heartbeat`.

        Raises:
            InstanceNotRegistered: the entry is gone (its lease ended, or it
                was deregistered or never registered), also when that
                happened between this heartbeat's read and its write.
            RegistryUnavailable: NATS cannot be reached or answered an error.
            RegistryClosed: after :meth:`close`.
        """
        _, kv = await self._ensure()
        try:
            with _backend_errors():
                entry = await kv.get(instance_id)
        except nats.js.errors.KeyNotFoundError as exc:
            raise InstanceNotRegistered(instance_id) from exc
        old = self._decode(instance_id, entry.value)
        if old is None or entry.revision is None:
            raise InstanceNotRegistered(instance_id)
        new = with_heartbeat(old, utc_now(), health=health, service_health=service_health)
        await self._put(new, last_revision=entry.revision)

    async def deregister(self, instance_id: str) -> None:
        """See :meth:`Registry.deregister`.

        Raises:
            RegistryUnavailable: NATS cannot be reached or answered an error.
            RegistryClosed: after :meth:`close`.
        """
        _, kv = await self._ensure()
        with _backend_errors():
            await kv.purge(instance_id, msg_ttl=_ttl_seconds(self._marker_ttl))

    async def list(
        self, service: str | None = None, *, include_unhealthy: bool = True
    ) -> builtins.list[InstanceRecord]:
        """See :meth:`Registry.list`.

        Raises:
            RegistryUnavailable: NATS cannot be reached or answered an error.
            RegistryClosed: after :meth:`close`.
        """
        js, kv = await self._ensure()
        _, snapshot = await self._snapshot(js, kv)
        records = [record for _, record in snapshot.values() if record is not None]
        return filter_records(records, service, include_unhealthy)

    async def _snapshot(
        self, js: JetStreamContext, kv: KeyValue
    ) -> tuple[int, dict[str, tuple[int, InstanceRecord | None]]]:
        """The bucket now: ``(stream sequence, {key: (revision, record or None)})``.

        The keys are read from the stream's subjects rather than a KV watcher:
        a watcher's end-of-snapshot marker can come before the snapshot under
        load (nats-py decides it from a consumer-info race), and a view that
        misses a live instance would report it gone. The sequence is the
        stream's last one before the keys' entries were read: every change up
        to it is reflected, later ones may be. Keys whose entry is deleted
        or gone map to ``(sequence, None)``.
        """
        with _backend_errors():
            info = await js.stream_info(f"KV_{self.bucket}", subjects_filter=f"$KV.{self.bucket}.>")
            prefix = f"$KV.{self.bucket}."
            keys = sorted(subject[len(prefix) :] for subject in info.state.subjects or {})
            entries = await asyncio.gather(*(self._get_entry(kv, key) for key in keys))
        sequence = int(info.state.last_seq)
        snapshot: dict[str, tuple[int, InstanceRecord | None]] = {}
        for key, entry in zip(keys, entries, strict=True):
            if entry is None or entry.revision is None:
                snapshot[key] = (sequence, None)
            else:
                snapshot[key] = (int(entry.revision), self._decode(key, entry.value))
        return sequence, snapshot

    @staticmethod
    async def _get_entry(kv: KeyValue, key: str) -> KeyValue.Entry | None:
        """The key's latest entry, or None when it is deleted or gone."""
        try:
            return await kv.get(key, validate_keys=False)
        except nats.js.errors.KeyNotFoundError:
            return None

    async def watch(self, service: str | None = None) -> AsyncGenerator[RegistryEvent, None]:
        """See :meth:`Registry.watch`. Events arrive as NATS delivers them
        (milliseconds); expiries when the server drops the entry.

        After the NATS connection reconnects (e.g. a server restart), the watch
        takes a fresh snapshot within about a second and reports the difference
        (instances that expired or appeared meanwhile).

        Raises:
            RegistryUnavailable: NATS is unreachable when the watch starts;
                later outages only delay events.
            RegistryClosed: the registry was closed before the watch started.
        """
        if self._closed:
            raise RegistryClosed("the registry is closed")
        view = WatchView(service)
        synced = False
        while not self._closed:
            updates = _Updates()
            try:
                js, kv = await self._ensure()
                client = self._client
                reconnects = _reconnects(client)
                # Subscribe before the snapshot so that no change falls between.
                with _backend_errors():
                    updates.subscription = await js.subscribe(
                        f"$KV.{self.bucket}.>",
                        stream=f"KV_{self.bucket}",
                        cb=updates.put,
                        ordered_consumer=True,
                        deliver_policy=api.DeliverPolicy.NEW,
                    )
                self._watches.add(updates)
                sequence, snapshot = await self._snapshot(js, kv)
            except RegistryClosed:
                await updates.stop()
                if not synced:
                    raise
                return
            except RegistryUnavailable:
                self._watches.discard(updates)
                await updates.stop()
                if not synced:
                    raise
                await asyncio.sleep(_RESYNC_RETRY)
                continue
            try:
                live = (record for _, record in snapshot.values() if record is not None)
                for event in view.replace_all(live):
                    yield event
                if not synced:
                    synced = True
                    yield RegistryEvent(kind="synced")
                # A key at the snapshot's own sequence needs no entry: that is
                # the default its messages are compared with.
                updates.revisions = {
                    key: revision for key, (revision, _) in snapshot.items() if revision != sequence
                }
                async with contextlib.aclosing(
                    self._follow(updates, client, reconnects, view, sequence)
                ) as events:
                    async for event in events:
                        yield event
            finally:
                self._watches.discard(updates)
                await updates.stop()

    async def _follow(
        self,
        updates: _Updates,
        client: NatsClient | None,
        reconnects: int,
        view: WatchView,
        sequence: int,
    ) -> AsyncGenerator[RegistryEvent, None]:
        """Changes after a snapshot taken at stream ``sequence`` (``updates.revisions``:
        the revision each key had in it, where newer than ``sequence``). A
        message no newer than what the snapshot saw of its key is skipped.
        Ends when the registry closes or the connection reconnected since the
        subscription (``reconnects``: the count then), as the subscription may
        have lost messages; the caller then resyncs."""
        prefix = f"$KV.{self.bucket}."
        revisions = updates.revisions
        while True:
            try:
                msg = await asyncio.wait_for(updates.queue.get(), _RECONNECT_CHECK)
            except TimeoutError:  # nothing within the check interval
                if self._closed or _reconnects(client) != reconnects:
                    return
                continue
            if msg is None:
                return
            key = msg.subject[len(prefix) :]
            revision = int(msg.metadata.sequence.stream)
            if revision <= revisions.get(key, sequence):
                continue  # the snapshot already reflects it
            record = self._record_of(key, msg)
            if record is None:
                # Gone: forget the key, or every instance that ever came and
                # went would stay in here. Messages arrive in stream order, so
                # any later one for it is newer than ``sequence`` anyway.
                revisions.pop(key, None)
            else:
                revisions[key] = revision
            change = view.remove(key) if record is None else view.upsert(record)
            if change is not None:
                yield change

    # -- helpers ----------------------------------------------------------------

    def _record_of(self, key: str, msg: Msg) -> InstanceRecord | None:
        """The live record a watched message carries, or None for deletions and markers."""
        headers = msg.headers or {}
        if headers.get(_OP_HEADER) in _DELETE_OPS or _MARKER_HEADER in headers:
            return None
        return self._decode(key, msg.data)

    def _decode(self, key: str, value: bytes | None) -> InstanceRecord | None:
        if not value:  # deletion or server-placed marker
            return None
        try:
            record = InstanceRecord.model_validate_json(value)
        except ValidationError:
            logger.warning("ignoring malformed registry entry %r in bucket %s", key, self.bucket)
            return None
        return record if record.instance_id == key else None

    async def close(self) -> None:
        """See :meth:`Registry.close`. Closes the NATS connection if this registry
        opened it."""
        if self._closed:
            return
        self._closed = True
        for updates in builtins.list(self._watches):
            await updates.stop()
        client, self._client = self._client, None
        self._js = self._kv = None
        if client is not None and self._owns_client:
            with contextlib.suppress(Exception):
                await client.close()
