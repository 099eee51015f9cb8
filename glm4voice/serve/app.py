"""The FastAPI app: `/` (web page), `/health`, `/metrics`, the `/v1/chat` WebSocket (protocol.py,
docs/protocol.md) and the OpenAI-compatible `/v1/chat/completions` and `/v1/models` (openai_api.py).

Each connection has a receive loop (this coroutine), a send loop fed by a
queue, and at most one reply on the server's scheduler (scheduler.py), which
batches the replies of every conversation into one LM step per id. The receive
loop stays live during a reply, so `stop` takes effect at the reply's next id.
Tokenizing pushed audio runs in a worker thread under the server's
`compute()`: the event loop never blocks.

With an API key, every route and the WebSocket need it: `Authorization: Bearer KEY` (what OpenAI clients
send), or `?api_key=KEY` in the URL (what a browser can do: the page passes its own URL's key on).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, Response

from ..errors import Glm4VoiceError
from .openai_api import ApiError, add_openai_routes
from .protocol import ClientMessage, ProtocolError, parse_client
from .scheduler import Busy
from .session import ChatServer, Session

log = logging.getLogger("glm4voice.serve")
PAGE = Path(__file__).parent / "static" / "index.html"


def _key_matches(server: ChatServer, headers, query) -> bool:
    if server.api_key is None:
        return True
    given = query.get("api_key") or ""
    auth = headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return hmac.compare_digest(given.encode(), server.api_key.encode())


def create_app(server: ChatServer) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app):
        yield
        server.close()  # the scheduler's thread ends with the app

    app = FastAPI(title="glm4voice", summary="GLM-4-Voice spoken chat: WebSocket and OpenAI-compatible API",
                  lifespan=lifespan)  # fmt: skip
    page = PAGE.read_text(encoding="utf-8")

    @app.middleware("http")
    async def need_key(request: Request, call_next):
        if not _key_matches(server, request.headers, request.query_params):
            return ApiError("a valid API key is needed: Authorization: Bearer KEY (or ?api_key=KEY)", 401,
                            code="invalid_api_key").response()  # fmt: skip
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/health")
    def health() -> dict:
        info = server.ready_message()
        info.pop("type")
        return {"status": "ok", **info}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(server.metrics.render(), media_type=server.metrics.content_type)

    @app.websocket("/v1/chat")
    async def chat_socket(ws: WebSocket) -> None:
        if not _key_matches(server, ws.headers, ws.query_params):
            await ws.close(code=1008, reason="a valid API key is needed (?api_key=KEY)")
            return
        await ws.accept()
        if server.connections >= server.max_connections:  # told why, then closed: 1013 = try again later
            await ws.send_json({"type": "error", "message": f"the server already holds {server.max_connections} "
                                "conversations (--max-connections): try again later"})  # fmt: skip
            await ws.close(code=1013, reason="server full: try again later")
            return
        server.connections += 1
        server.metrics.conversations.inc()
        try:
            await _Connection(ws, server).run()
        finally:
            server.connections -= 1
            server.metrics.conversations.dec()

    add_openai_routes(app, server)
    return app


class _Connection:
    """One WebSocket. What it sends waits in `out`; `backlog` counts what was handed over and not yet sent
    (the reply's events in flight included). At `server.send_limit` the reply pauses (it steps out of the
    scheduler's batch); a client that reads nothing for `server.slow_client_seconds` is cut off and its
    queue given back."""

    def __init__(self, ws: WebSocket, server: ChatServer):
        self.ws, self.server = ws, server
        self.session = Session(server)
        self.out: asyncio.Queue = asyncio.Queue()
        self.backlog = 0
        self.count = threading.Lock()
        self.replying = False  # from a turn's start until its `done` is queued (the client may go on then)
        self.stop = threading.Event()
        self.input_codes = 0
        self.cut_off = False
        self.holding = False  # the reply is paused: it resumes when the backlog is down to half the limit
        self.task: asyncio.Task | None = None

    def put(self, item) -> None:
        """Queue an item to send (on the event loop)."""
        if self.cut_off:
            return
        self.out.put_nowait(item)

    def full(self) -> bool:
        return self.backlog >= self.server.send_limit

    def paused(self) -> bool:
        """Whether the reply should wait for this client (with hysteresis: pause at the limit, go on at half,
        so a client reading just slower than the LM writes does not make the batch re-pack every step)."""
        if self.backlog >= self.server.send_limit:
            self.holding = True
        elif self.backlog <= self.server.send_limit // 2:
            self.holding = False
        return self.holding

    def _counted(self, change: int) -> None:
        with self.count:
            self.backlog += change

    async def run(self) -> None:
        self.task = asyncio.current_task()
        sender = asyncio.create_task(self._send_loop())
        watchdog = asyncio.create_task(self._watch())
        self._counted(1)
        self.put(self.server.ready_message())
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                try:
                    if message.get("bytes") is not None:
                        await self._on_audio(message["bytes"])
                    elif message.get("text") is not None:
                        await self._on_message(
                            parse_client(message["text"], self.server.template.sampling,
                                         self.server.max_new_tokens_limit))  # fmt: skip
                except Glm4VoiceError as exc:  # bad input costs only that message
                    self._counted(1)
                    self.put({"type": "error", "message": str(exc)})
        except (WebSocketDisconnect, RuntimeError, asyncio.CancelledError):  # gone, or cut off
            pass
        finally:
            self.stop.set()  # a reply still running ends at its next id
            sender.cancel()
            watchdog.cancel()

    async def _watch(self) -> None:
        """Cut off a client whose outgoing queue stays full for `slow_client_seconds`."""
        full_since = None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, self.server.slow_client_seconds / 4))
            if not self.full():
                full_since = None
                continue
            full_since = full_since or loop.time()
            if loop.time() - full_since >= self.server.slow_client_seconds:
                log.warning("a client read nothing for %.0f s with %d messages waiting: cut off",
                            self.server.slow_client_seconds, self.backlog)  # fmt: skip
                self.cut_off = True
                self.stop.set()
                self.out = asyncio.Queue()  # its memory goes back now, not when the socket finally closes
                with self.count:
                    self.backlog = 0
                try:
                    await asyncio.wait_for(self.ws.close(code=1008, reason="not reading: cut off"), timeout=5)
                except Exception:  # the socket is stuck: the server forgets it all the same
                    pass
                if self.task is not None:
                    self.task.cancel()  # the connection ends here: no more turns, its conversation is freed
                return

    async def _send_loop(self) -> None:
        try:
            while True:
                item = await self.out.get()
                self._counted(-1)
                if isinstance(item, bytes):
                    await self.ws.send_bytes(item)
                    continue
                try:
                    text = json.dumps(item, ensure_ascii=False)
                    text.encode("utf-8")
                except (TypeError, ValueError) as exc:  # a message that cannot be sent must not end the loop
                    log.error("cannot send a %s message: %s", item.get("type"), exc)
                    text = json.dumps({"type": "error", "message": f"internal error: a {item.get('type')} message "
                                                                   "could not be encoded"})  # fmt: skip
                await self.ws.send_text(text)
        except (WebSocketDisconnect, RuntimeError):  # the client went away
            self.stop.set()

    async def _locked(self, fn, *args):
        def work():
            with self.server.compute():
                return fn(*args)

        return await asyncio.to_thread(work)

    async def _on_audio(self, data: bytes) -> None:
        if self.replying:
            raise ProtocolError("audio arrived while a reply is in progress: send stop first")
        n = await self._locked(self.session.push_audio, data)
        if n != self.input_codes:
            self.input_codes = n
            self._counted(1)
            self.put({"type": "input", "codes": n})

    async def _on_message(self, m: ClientMessage) -> None:
        if m.type == "stop":  # racy by nature: with nothing running it is a no-op
            self.stop.set()
            self.session.cancel_audio()
            return
        if self.replying:
            raise ProtocolError(f"{m.type} while a reply is in progress: send stop first, then wait for done")
        if m.type == "reset":
            self.session.reset()
            self._counted(1)
            self.put({"type": "reset"})
        elif m.type == "audio.start":
            self.session.start_audio(m.sample_rate, m.format, m.sampling)
            self.input_codes = 0
        elif m.type == "audio.end":
            codes, sampling = await self._locked(self.session.end_audio)
            self._start_reply(codes=codes, sampling=sampling)
        elif m.type == "text":
            if self.session.listening is not None:
                raise ProtocolError("text while receiving audio: send audio.end (or stop) first")
            self._start_reply(text=m.text, sampling=m.sampling)

    def _start_reply(self, **turn) -> None:
        loop = asyncio.get_running_loop()
        self.stop = stop = threading.Event()

        def deliver(item) -> None:  # on the event loop, in emit order
            if isinstance(item, dict) and item["type"] == "done":
                self.replying = False
            self.put(item)

        def emit(item) -> None:  # on the scheduler's thread
            self._counted(1)
            loop.call_soon_threadsafe(deliver, item)

        if self.cut_off:
            raise ProtocolError("this connection was cut off for not reading")
        job = self.session.job(emit, stop, **turn)
        job.paused = self.paused
        try:
            place = self.server.scheduler.submit(job)
        except Busy as exc:  # the queue is full: this turn is refused, the connection stays
            self._counted(2)
            self.put({"type": "error", "message": str(exc)})
            self.put({"type": "done", "text": "", "reason": "busy"})
            return
        self.replying = True
        if place:
            self._counted(1)
            self.put({"type": "queued", "position": place})
