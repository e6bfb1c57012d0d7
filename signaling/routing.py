"""Route every request to the worker that owns what it is about, wherever it lands.

Workers share the public port (``SO_REUSEPORT``; across nodes, a load balancer), so a
request can reach any of them. Requests fall into three kinds (:func:`classify`):

- *placement* — a new call or room (``POST /api/offer``, ``POST /whip``, ``GET /ws``,
  ``POST /api/rooms``, a SIP dial-out ``POST /api/sip/calls``): placed on the one of two
  randomly chosen live workers under the load limit with fewer calls ("power of two
  choices": nearly as even as asking every worker, without a herd on the single emptiest
  one; see :meth:`Cluster.candidates`), and
  forwarded there unless that is this worker;
- *owned* — about an existing call or room (``/whip/{id}``, ``/api/calls/{id}…``,
  ``/api/rooms/{id}…``, a join or dial-out naming ``room_id``/``?room=``): forwarded to
  the worker whose claim (:mod:`signaling.registry`) holds it -- every worker claims the
  calls and rooms it holds when it creates them and on each heartbeat;
- everything else is served where it landed.

:class:`Cluster` is this worker's side of it: it announces itself and its load every second,
keeps its claims alive while their calls live, and releases them when calls end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
from aiohttp import web

from media_server.load import RETRY_AFTER_S, LoadMonitor, Overloaded, cost_per_call
from media_server.manager import CallManager, TooManyCalls
from parley.config import Settings
from signaling import proxy
from signaling.errors import ApiError, Handler
from signaling.keys import CALLS, ROOMS, SETTINGS
from signaling.registry import LocalRegistry, RedisRegistry, Registry, WorkerInfo, claim_key

logger = logging.getLogger(__name__)

HEARTBEAT_S = 1.0


@dataclass(frozen=True, slots=True)
class Route:
    """What a request is about: ``place`` a new call/room, an ``owned`` one (by claim key), or ``local``."""

    action: str
    key: str | None = None


LOCAL = Route("local")
PLACE = Route("place")


def classify(method: str, path: str, query: dict[str, str], room_in_body: str | None) -> Route:
    """Which worker a request belongs to; pure, so the routing table is testable on its own."""
    parts = path.strip("/").split("/")
    room = query.get("room") or room_in_body
    if path in ("/whip", "/ws", "/api/offer", "/api/sip/calls") and method in ("POST", "GET"):
        return Route("owned", claim_key("room", room)) if room else PLACE
    if parts[0] == "whip" and len(parts) >= 2:
        return Route("owned", claim_key("call", parts[1]))
    if parts[:2] == ["api", "rooms"]:
        if len(parts) == 2:
            return PLACE if method == "POST" else LOCAL
        return Route("owned", claim_key("room", parts[2]))
    if parts[:2] == ["api", "calls"] and len(parts) >= 3:
        return Route("owned", claim_key("call", parts[2]))
    return LOCAL


async def _room_in_body(request: web.Request) -> str | None:
    """``room_id`` of a JSON offer or dial-out (the body stays cached for the handler)."""
    if request.path not in ("/api/offer", "/api/sip/calls") or request.content_type != "application/json" \
            or not request.can_read_body:
        return None
    try:
        body = await request.json()
    except (ValueError, LookupError, RecursionError):  # bad JSON, unknown charset, too deep
        return None  # the handler answers the malformed body
    room = body.get("room_id") if isinstance(body, dict) else None
    return room if isinstance(room, str) and room else None


class Cluster:
    """This worker in the registry: identity, load, claims, placement and forwarding."""

    def __init__(self, settings: Settings, registry: Registry, manager: CallManager,
                 rooms: Callable[[], Collection[str]] = tuple) -> None:
        self.node = settings.node_id or socket.gethostname()
        self.id = f"{self.node}:{os.getpid()}"
        self.registry = registry
        self.manager = manager
        self.monitor = LoadMonitor(lambda: len(manager.calls), settings.load_limit, settings.max_calls)
        self.url: str | None = None
        self.internal_port: int | None = None
        self._claimed: set[str] = set()
        self._rooms = rooms  # ids of the rooms this worker holds (signaling.rooms_api)
        self._peers: dict[str, WorkerInfo] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None
        self._rng = random.Random()

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        self._http = aiohttp.ClientSession(auto_decompress=False)
        await self._beat()
        self._tasks = [asyncio.create_task(self.monitor.run(), name="load monitor"),
                       asyncio.create_task(self._heartbeat(), name="registry heartbeat")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.registry.withdraw(self.id)  # first: nobody places new calls here any more
        with contextlib.suppress(Exception):
            await self.registry.release(self._claimed, self.token)
        if self._http is not None:
            await self._http.close()
        await self.registry.close()

    def set_internal_address(self, host: str, port: int) -> None:
        """The worker's own socket for forwarded requests is listening: make it routable."""
        self.internal_port = port
        self.url = f"http://{host}:{port}"

    async def begin_drain(self) -> None:
        """Stop taking new calls here; tell the other workers at once."""
        self.monitor.draining = True
        with contextlib.suppress(Exception):
            await self.registry.announce(self.info())

    @property
    def draining(self) -> bool:
        return self.monitor.draining

    def info(self) -> WorkerInfo:
        return WorkerInfo(self.id, self.node, self.url, round(self.monitor.load, 3),
                          len(self.manager.calls) + self.manager.setting_up, self.monitor.draining)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            started = time.monotonic()
            try:
                await self._beat()
            except Exception as exc:  # Redis away: keep serving our own calls, retry next beat
                logger.warning("registry heartbeat failed: %s", exc)
            if time.monotonic() - started > 2 * HEARTBEAT_S:
                logger.warning("registry heartbeat took %.1f s", time.monotonic() - started)

    async def _beat(self) -> None:
        await self.registry.announce(self.info())
        current = self._live_keys()
        gone = self._claimed - current
        if gone:
            await self.registry.release(gone, self.token)
        for key in current - self._claimed:
            if await self.registry.claim(key, self.token):
                self._claimed.add(key)
        lost = await self.registry.refresh(self._claimed & current, self.token)
        self._claimed = (self._claimed & current) - set(lost)
        for key in lost:  # expired while this loop stalled: take it back unless someone else has
            if await self.registry.claim(key, self.token):
                self._claimed.add(key)
            else:
                logger.warning("claim %s is held by another worker", key)
        self._peers = {w.id: w for w in await self.registry.workers()}

    # -- claims ----------------------------------------------------------------------
    async def claim(self, kind: str, ident: str) -> bool:
        """Own ``kind``/``ident`` (a call or room on this worker) before anyone can ask for it."""
        key = claim_key(kind, ident)
        if not await self.registry.claim(key, self.token):
            return False
        self._claimed.add(key)
        return True

    def _live_keys(self) -> set[str]:
        """Claim keys of the calls and rooms alive here (the heartbeat claims them, and
        releases the claims of those that ended)."""
        return ({claim_key("call", cid) for cid in self.manager.calls}
                | {claim_key("room", rid) for rid in self._rooms()})

    def holds(self, key: str) -> bool:
        return key in self._claimed or key in self._live_keys()

    @property
    def token(self) -> str:
        """What a claim holds: the owner's id and internal URL, so it is reachable while the claim lives."""
        return f"{self.id} {self.url or '-'}"

    async def owner_of(self, key: str) -> WorkerInfo | None:
        """The worker owning ``key``; None if unclaimed (its claim expires when its owner dies)."""
        token = await self.registry.owner(key)
        if token is None:
            return None
        owner, _, url = token.partition(" ")
        if owner == self.id:
            return self.info()
        known = self._peers.get(owner)
        if known is not None and known.url is not None:
            return known
        # not in our last view of the registry, or seen there before its internal socket was
        # up (the first second of a worker): the claim has its address
        return WorkerInfo(owner, owner.rsplit(":", 1)[0], None if url in ("", "-") else url, 0.0, 0, False)

    async def is_alive(self, worker_id: str) -> bool:
        """Whether ``worker_id`` is in the registry (re-read now, not from the cache; refreshes it)."""
        self._peers = {w.id: w for w in await self.registry.workers()}
        return worker_id in self._peers

    # -- placement -------------------------------------------------------------------
    def candidates(self) -> list[WorkerInfo]:
        """Two random live workers under the load limit, the one with fewer calls first (then
        the lower load). Calls, not the measured load, order them: the load is smoothed over
        seconds and a call costs little until it is set up, so in a burst of new calls the
        figures would send every one of them to the same worker; the load limit still keeps
        a busy worker out of the pool, and its admission check still refuses."""
        me = self.info()
        pool = [w for w in self._peers.values() if w.id != self.id and w.url and not w.draining
                and w.load < self.monitor.limit]
        if not me.draining:
            pool.append(me)
        picked = self._rng.sample(pool, min(2, len(pool)))
        return sorted(picked, key=lambda w: (w.calls, w.load))

    def expect_call(self, target: WorkerInfo) -> None:
        """Count a call being sent to ``target`` in this worker's view of it until its next
        announcement: otherwise a burst of new calls all follow the same second-old figures
        to one worker (with two workers, the two choices are always both)."""
        if target.id in self._peers:
            self._peers[target.id] = replace(target, load=target.load + cost_per_call(target.load, target.calls),
                                             calls=target.calls + 1)

    def admit(self) -> None:
        """Admit one new call here or raise :class:`ApiError` 503 with Retry-After."""
        try:
            self.monitor.admit()
        except Overloaded as exc:
            raise busy(str(exc), exc.retry_after_s) from exc

    def is_forwarded(self, request: web.Request) -> bool:
        """Arrived on this worker's internal socket from another worker: serve it here."""
        if proxy.FORWARDED_BY not in request.headers or request.transport is None:
            return False
        sockname = request.transport.get_extra_info("sockname")
        return bool(sockname) and sockname[1] == self.internal_port

    async def forward(self, request: web.Request, target: WorkerInfo) -> web.StreamResponse:
        assert self._http is not None and target.url is not None
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await proxy.forward_websocket(self._http, request, target.url, self.id, target.id)
        response = await proxy.forward_http(self._http, request, target.url, self.id, await request.read())
        response.headers[proxy.VIA_HEADER] = self.id  # where it landed, for tracing and tests
        return response


def busy(message: str, retry_after_s: int) -> ApiError:
    return ApiError(503, "busy", message, headers={"Retry-After": str(retry_after_s)})


def refusal(exc: TooManyCalls) -> ApiError:
    """A worker's refusal of a new call as the 503 the client sees (with Retry-After)."""
    return busy(str(exc), getattr(exc, "retry_after_s", RETRY_AFTER_S))


CLUSTER = web.AppKey("cluster", Cluster)


@web.middleware
async def routing_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    cluster = request.app.get(CLUSTER)
    if cluster is None:
        return await handler(request)
    route = classify(request.method, request.path, dict(request.query), await _room_in_body(request))
    if route.action == "local":
        return await handler(request)
    if cluster.is_forwarded(request):
        if route.action == "place":
            cluster.admit()
        return await handler(request)
    if route.action == "owned":
        return await _to_owner(request, handler, cluster, route.key or "")
    return await _place(request, handler, cluster)


async def _to_owner(request: web.Request, handler: Handler, cluster: Cluster, key: str) -> web.StreamResponse:
    if cluster.holds(key):
        return await handler(request)
    owner = await cluster.owner_of(key)
    if owner is None or owner.id == cluster.id or owner.url is None:
        return await handler(request)  # nobody (alive) owns it: the handler says 404
    try:
        return await cluster.forward(request, owner)
    except proxy.Unreachable as exc:
        if exc.refused or not await cluster.is_alive(owner.id):  # it died with its calls: the handler says 404
            return await handler(request)
        logger.warning("owner %s of %s unreachable: %s", owner.id, key, exc)
        raise ApiError(502, "owner_unreachable", "the worker serving this call cannot be reached") from exc


async def _place(request: web.Request, handler: Handler, cluster: Cluster) -> web.StreamResponse:
    refusal: web.StreamResponse | None = None
    tried: set[str] = set()
    for attempt in range(2):
        if attempt:  # everyone we knew of said no: re-read the registry (a worker may just have started)
            await cluster.is_alive(cluster.id)
        for target in cluster.candidates():
            if target.id in tried:
                continue
            tried.add(target.id)
            if target.id == cluster.id:
                try:
                    cluster.admit()
                except ApiError as exc:
                    logger.info("not placing here: %s", exc.message)
                    continue
                return await handler(request)
            cluster.expect_call(target)
            try:
                response = await cluster.forward(request, target)
            except proxy.Unreachable as exc:
                logger.warning("placement on %s failed: %s", target.id, exc)
                continue
            if response.status != 503:
                return response
            refusal = response
    if refusal is not None:
        return refusal
    if cluster.draining:
        raise busy("this server is shutting down and no other worker can take the call", 5)
    raise busy("every worker is at capacity; try again in a few seconds", 5)


async def claim_new(app: web.Application, kind: str, ident: str) -> None:
    """Claim a new call or room for this worker before its id reaches the client."""
    cluster = app.get(CLUSTER)
    if cluster is None:
        return
    try:
        await cluster.claim(kind, ident)
    except Exception as exc:  # Redis away: it still works here; the next heartbeat claims it
        logger.warning("could not claim %s %s now: %s", kind, ident[:8], exc)


async def _add_worker_header(request: web.Request, response: web.StreamResponse) -> None:
    cluster = request.app.get(CLUSTER)
    if cluster is not None and proxy.WORKER_HEADER not in response.headers:
        response.headers[proxy.WORKER_HEADER] = cluster.id


async def ready(request: web.Request) -> web.Response:
    """Readiness for load balancers: 503 while draining (or not yet routable), else 200."""
    cluster = request.app[CLUSTER]
    body: dict[str, Any] = {"status": "draining" if cluster.draining else "ready", **_info_dict(cluster.info())}
    return web.json_response(body, status=503 if cluster.draining else 200)


def _info_dict(info: WorkerInfo) -> dict[str, Any]:
    return {"worker": info.id, "node": info.node, "url": info.url, "load": info.load, "calls": info.calls}


def setup(app: web.Application) -> None:
    """Install routing on ``app``: the middleware, ``GET /ready`` and the cluster's lifecycle."""
    app.middlewares.append(routing_middleware)
    app.on_response_prepare.append(_add_worker_header)
    app.router.add_get("/ready", ready)

    async def cluster_ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        registry: Registry = RedisRegistry(settings.redis_url) if settings.redis_url else LocalRegistry()
        cluster = Cluster(settings, registry, app[CALLS], lambda: app[ROOMS].rooms if ROOMS in app else ())
        await cluster.start()
        app[CLUSTER] = cluster
        yield
        await cluster.stop()

    app.cleanup_ctx.append(cluster_ctx)
