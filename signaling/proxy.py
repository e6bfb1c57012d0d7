"""Pass one HTTP request or WebSocket on to another worker, and its answer back.

Whichever worker the kernel (SO_REUSEPORT) or a load balancer hands a request to, the call
it is about may live in another process or on another node: this module forwards it to that
worker's internal address (``PARLEY_INTERNAL_HOST``, its own port) and relays the answer
unchanged. The forwarded request is marked with :data:`FORWARDED_BY`, and a worker serves a
request that arrived on its internal socket itself, so a request is forwarded at most once.
Bodies are small (SDP, JSON), so they are read whole; WebSockets are piped message by message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
from aiohttp import WSMsgType, web

from signaling.errors import error_response

logger = logging.getLogger(__name__)

FORWARDED_BY = "X-Parley-Forwarded-By"
WORKER_HEADER = "X-Parley-Worker"  # on every response: the worker that served it
VIA_HEADER = "X-Parley-Via"  # on forwarded responses: the worker the request landed on
TIMEOUT = aiohttp.ClientTimeout(total=30.0, sock_connect=3.0)
# hop-by-hop headers (RFC 9110 §7.6.1) and the ones aiohttp recomputes
_SKIP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
         "host", "content-length"}  # bodies pass through as they are (no decompression)


class Unreachable(ConnectionError):
    """The owner could not be reached (it died, or its node is cut off).

    ``refused`` is set when nothing listens at its address any more: the process is gone,
    whatever the registry (which forgets a worker only seconds later) still says.
    """

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


def _unreachable(where: str, exc: Exception) -> Unreachable:
    refused = isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, ConnectionRefusedError)
    return Unreachable(f"{where}: {exc}", refused=refused)


def _forward_headers(request: web.Request, worker_id: str) -> dict[str, str]:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP}
    headers[FORWARDED_BY] = worker_id
    peer = request.remote or ""
    headers["X-Forwarded-For"] = ", ".join(filter(None, (request.headers.get("X-Forwarded-For"), peer)))
    return headers


async def forward_http(http: aiohttp.ClientSession, request: web.Request, base_url: str, worker_id: str,
                       body: bytes) -> web.Response:
    """Send ``request`` (with its already-read ``body``) to ``base_url`` and return the answer."""
    url = base_url + request.rel_url.path_qs
    try:
        async with http.request(request.method, url, data=body, headers=_forward_headers(request, worker_id),
                                allow_redirects=False, timeout=TIMEOUT) as upstream:
            payload = await upstream.read()
            headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _SKIP}
            return web.Response(status=upstream.status, body=payload, headers=headers)
    except (aiohttp.ClientConnectionError, TimeoutError) as exc:
        raise _unreachable(base_url, exc) from exc


async def forward_websocket(http: aiohttp.ClientSession, request: web.Request, base_url: str,
                            worker_id: str, owner_id: str) -> web.StreamResponse:
    """Open the same WebSocket on the owner and pipe messages both ways until either side closes."""
    url = base_url.replace("http", "ws", 1) + request.rel_url.path_qs
    headers = {k: v for k, v in _forward_headers(request, worker_id).items()
               if not k.lower().startswith("sec-websocket")}
    try:
        upstream = await http.ws_connect(url, headers=headers, heartbeat=10.0, max_msg_size=256 * 1024,
                                         timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0))
    except aiohttp.WSServerHandshakeError as exc:  # the owner refused (auth, busy, bad input)
        return error_response(exc.status if exc.status >= 400 else 502, "refused_by_owner", exc.message)
    except (aiohttp.ClientConnectionError, TimeoutError) as exc:
        raise _unreachable(url, exc) from exc
    downstream = web.WebSocketResponse(heartbeat=10.0, max_msg_size=256 * 1024)
    downstream.headers[WORKER_HEADER] = owner_id
    downstream.headers[VIA_HEADER] = worker_id
    await downstream.prepare(request)
    async with upstream:
        pumps = [asyncio.ensure_future(_pipe(upstream, downstream)), asyncio.ensure_future(_pipe(downstream, upstream))]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            await downstream.close()
    return downstream


async def _pipe(source: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
                sink: aiohttp.ClientWebSocketResponse | web.WebSocketResponse) -> None:
    async for msg in source:
        with contextlib.suppress(ConnectionError, RuntimeError):
            if msg.type == WSMsgType.TEXT:
                await sink.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await sink.send_bytes(msg.data)
