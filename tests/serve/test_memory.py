"""Memory stays flat: many turns on one connection, and many connections opened and closed, leave nothing
behind (each closed connection's conversation is freed; the resident size does not grow with the count)."""

from __future__ import annotations

import gc
import os
import weakref

from fastapi.testclient import TestClient

from glm4voice.serve import ChatServer, create_app
from tests.serve.test_server import connect, until_done


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_turns_and_connections_leave_memory_flat(template):
    server = ChatServer(template)
    chats = []
    new_chat = server.new_chat

    def tracked(*args, **kwargs):
        chat = new_chat(*args, **kwargs)
        chats.append(weakref.ref(chat))
        return chat

    server.new_chat = tracked
    with TestClient(create_app(server)) as c:
        with connect(c) as ws:  # 200 turns on one connection (starting over every 25, as people do)
            for n in range(200):
                if n == 50:
                    gc.collect()
                    after_50 = rss_mb()
                if n and n % 25 == 0:
                    ws.send_json({"type": "reset"})
                    assert ws.receive_json() == {"type": "reset"}
                ws.send_json({"type": "text", "text": f"turn {n}", "max_new_tokens": 4})
                assert until_done(ws)[-1]["ids"] == 4
            gc.collect()
            after_200 = rss_mb()
        for _ in range(100):  # 100 connections, each with a turn, opened and closed
            with connect(c) as ws:
                ws.send_json({"type": "text", "text": "hello", "max_new_tokens": 2})
                until_done(ws)
        gc.collect()
        after_connections = rss_mb()
        alive = [ref for ref in chats if ref() is not None]
        assert len(chats) == 101 and not alive, f"{len(alive)} closed conversations are still in memory"
    assert after_200 - after_50 < 25, (after_50, after_200)
    assert after_connections - after_200 < 25, (after_200, after_connections)
    server.close()


def test_a_client_that_stops_reading_is_paused_then_cut_off(template, caplog):
    """Its reply steps out of the batch once its queue is full (others go on), and after
    `slow_client_seconds` of not reading the server closes the connection and forgets what it queued."""
    import json
    import time

    from websockets.sync.client import connect as ws_connect

    from tests.serve.conftest import live_server

    server = ChatServer(template, send_limit=16, slow_client_seconds=1.5)
    with live_server(server) as port:
        with ws_connect(f"ws://127.0.0.1:{port}/v1/chat", max_queue=2, max_size=None) as stuck:
            stuck.send(json.dumps({"type": "text", "text": "a long reply, never read", "max_new_tokens": 4000}))
            with ws_connect(f"ws://127.0.0.1:{port}/v1/chat") as other:  # meanwhile someone else is served
                json.loads(other.recv(timeout=10))
                other.send(json.dumps({"type": "text", "text": "hi", "max_new_tokens": 5}))
                while True:
                    frame = other.recv(timeout=60)
                    if isinstance(frame, str) and json.loads(frame)["type"] == "done":
                        break
            deadline = time.monotonic() + 90
            while server.scheduler.busy() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not server.scheduler.busy(), "the unread reply kept its place"
            assert any("cut off" in r.getMessage() for r in caplog.records)
    server.close()
