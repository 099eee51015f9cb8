"""`/metrics`: the server's state and speed in the Prometheus text format (prometheus-client).

Each `ChatServer` has its own registry (several servers in one process, as in the tests, never mix). What an
operator watches: conversations open and work waiting for the models (is it overloaded?), first text and
first audio after a turn ends (what users feel), and ids generated (throughput: `rate()` over the counter).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..events import Reply

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.conversations = Gauge("glm4voice_active_conversations",
                                   "open conversations: WebSocket connections and API requests in progress",
                                   registry=r)  # fmt: skip
        self.queue = Gauge("glm4voice_queue_length", "units of work (turns, audio) waiting for the models",
                           registry=r)  # fmt: skip
        self.first_text = Histogram("glm4voice_first_text_seconds", "turn start to the first reply text",
                                    buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.first_audio = Histogram("glm4voice_first_audio_seconds", "turn start to the first reply audio",
                                     buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.ids = Counter("glm4voice_generated_ids", "LM ids generated (text and speech)", registry=r)
        self.ids_per_second = Gauge("glm4voice_ids_per_second", "decode speed of the last finished turn",
                                    registry=r)  # fmt: skip
        self.batch = Histogram("glm4voice_batch_size", "replies in each batched LM step",
                               buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)  # fmt: skip
        self.turns = Counter("glm4voice_turns", "finished turns, by why they ended", ["reason"], registry=r)

    def turn(self, reply: Reply) -> None:
        t = reply.timings
        if t.first_text is not None:
            self.first_text.observe(t.first_text)
        if t.first_audio is not None:
            self.first_audio.observe(t.first_audio)
        self.ids.inc(reply.n_ids)
        self.ids_per_second.set(t.ids_per_second)
        self.turns.labels(reply.reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
