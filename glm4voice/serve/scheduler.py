"""Every conversation's reply on one LM: a thread that samples each active reply's next id, then runs one
batched LM step for all of them (`lm.batch.ReplyBatch`), with each reply's decoder chunks made in between.

    job = Job(start=lambda: chat.begin(text="hi"), emit=on_event, stop=threading.Event())
    position = scheduler.submit(job)     # 0: admitted at the next step; n: n-th in the queue (Busy when full)

The decoder chunks that fall due in a step are decoded together too (`decode_due`: one flow solve for the
chunks of the same shapes). Admission is first come, first served: at most `max_active` replies generate
together, the rest wait in a queue of at most `max_queue` (told their place with ("queued", n) whenever it
changes). A job that joins is started (`start()`: its prompt ids appended), prefilled alone, then joins the
batch; a long reply never holds the others back by more than one id and one decoder chunk. `stop` ends a
reply at its next id ("interrupted"). Everything a job hears goes through `emit`: ("queued", place) while
it waits, then the turn's events (`UserEvent` first, `Reply` last), or ("error", exception) instead of the
`Reply` when it fails, or ("cancelled", None) when it was stopped before it started.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import Glm4VoiceError
from ..events import Reply

log = logging.getLogger("glm4voice.serve")


class Busy(Glm4VoiceError):
    """The queue is full."""


@dataclass(eq=False)
class Job:
    start: Callable[[], object]  # -> ChatTurn; runs on the scheduler's thread when the job is admitted
    emit: Callable[[object], None]
    stop: threading.Event = field(default_factory=threading.Event)
    paused: Callable[[], bool] | None = None  # True while its client is not reading: it waits out of the batch
    turn: object = None


class Scheduler:
    def __init__(self, lm, metrics=None, max_active: int = 8, max_queue: int = 32):
        if max_active < 1 or max_queue < 0:
            raise Glm4VoiceError("max_active must be >= 1 and max_queue >= 0")
        from ..lm.batch import ReplyBatch

        self.batch = ReplyBatch(lm)
        self.metrics = metrics
        self.max_active, self.max_queue = max_active, max_queue
        self.waiting: deque[Job] = deque()
        self.active: list[Job] = []
        self.wake = threading.Condition()
        self.closed = False
        self.thread: threading.Thread | None = None
        self.peak = 0  # most replies ever in one batched step

    def submit(self, job: Job) -> int:
        """Queue a job; returns its place (0: it starts at the next step). Busy when the queue is full."""
        with self.wake:
            if self.closed:
                raise Busy("the server is shutting down")
            if self._queued() >= self.max_queue:
                raise Busy(f"the server is busy ({self.max_active} replies running, {self.max_queue} waiting): "
                           "try again shortly")  # fmt: skip
            self.waiting.append(job)
            position = self._queued()
            self._gauge()
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="glm4voice-scheduler", daemon=True)
                self.thread.start()
            self.wake.notify()
        return position

    def _queued(self) -> int:
        """Jobs that wait for a place (not those about to take a free one)."""
        return max(0, len(self.waiting) - max(0, self.max_active - len(self.active)))

    def busy(self) -> bool:
        with self.wake:
            return bool(self.active or self.waiting)

    def close(self) -> None:
        with self.wake:
            self.closed = True
            self.wake.notify()
        if self.thread is not None:
            self.thread.join(timeout=30)

    # --------------------------------------------------------------------------------------- the loop

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue.set(self._queued())

    def _run(self) -> None:
        while True:
            with self.wake:
                while not self.closed and not self.active and not self.waiting:
                    self.wake.wait()
                if self.closed:
                    return
            try:
                self._admit_waiting()
                if not self._one_id():
                    time.sleep(0.01)  # every active reply waits for its reader: nothing to compute
            except Exception as exc:  # a bug, or out of memory: every active reply fails, the server goes on
                log.exception("a scheduler step failed")
                self._fail_all(exc)
            # (helpers keep the jobs in their own frames: while this thread waits, it holds no finished job)

    def _fail_all(self, exc: Exception) -> None:
        """Every active reply ends with an error; their conversations' caches start over (the batch may be
        half-updated, so nothing is sliced out of it: the next turn's prefill runs the whole history)."""
        for job in list(self.active):
            if job.turn is not None and job.turn.reply is not None:
                job.turn.reply.conv.drop_cache()
            self._drop(job)
            job.emit(("error", Glm4VoiceError(f"internal error: {type(exc).__name__}: {exc}")))
        self.batch = type(self.batch)(self.batch.lm)

    def _admit_waiting(self) -> None:
        with self.wake:
            cancelled = [job for job in self.waiting if job.stop.is_set()]  # stopped or gone while waiting
            for job in cancelled:
                self.waiting.remove(job)
            joining = []
            while self.waiting and len(self.active) < self.max_active:
                joining.append(self.waiting.popleft())
                self.active.append(joining[-1])  # counted as running from now: its place is taken
            if joining or cancelled:
                for place, job in enumerate(self.waiting, start=1):  # the queue moved: tell who waits where
                    job.emit(("queued", place))
            self._gauge()
        for job in cancelled:
            job.emit(("cancelled", None))
        for job in joining:
            self._admit(job)

    def _admit(self, job: Job) -> None:
        if job.stop.is_set():  # stopped in the moment it was admitted: nothing was started
            self._drop(job)
            job.emit(("cancelled", None))
            return
        try:
            job.turn = job.start()
            job.emit(job.turn.user_event)
            job.turn.prefill()
            job.turn.defer_audio = True  # its chunks are decoded with the others' (`_decode`)
            self.batch.join(job.turn.reply)
        except Exception as exc:
            if not isinstance(exc, Glm4VoiceError):
                log.exception("starting a turn failed")
                exc = Glm4VoiceError(f"internal error: {type(exc).__name__}: {exc}")
            if job.turn is not None and job.turn.reply is not None:  # its cache may be half-made: start over
                job.turn.reply.conv.drop_cache()
            self._drop(job)
            job.emit(("error", exc))

    def _drop(self, job: Job) -> None:
        with self.wake:
            if job in self.active:
                self.active.remove(job)
            self._gauge()

    def _one_id(self) -> bool:
        """Each active reply takes its next id (or ends); then one LM step for those still going. A paused
        reply (its client's outgoing queue is full) steps out of the batch until its client reads again.
        Returns whether any reply moved."""
        moved = False
        for job in list(self.active):
            if job.turn is None or job.turn.reply is None:
                continue
            stopping = job.stop.is_set()
            if not stopping and job.paused is not None and job.paused():
                if job.turn.reply in self.batch:
                    self.batch.leave(job.turn.reply)
                continue
            if not stopping and job.turn.reply not in self.batch:
                self.batch.join(job.turn.reply)
            moved = True
            try:
                turn = job.turn
                events = turn.interrupt() if stopping else turn.advance(turn.sample())
            except Exception as exc:
                if not isinstance(exc, Glm4VoiceError):
                    log.exception("a reply failed")
                    exc = Glm4VoiceError(f"internal error: {type(exc).__name__}: {exc}")
                self._fail(job, exc)
                continue
            for event in events:
                if isinstance(event, Reply):
                    self._leave(job)
                    if self.metrics is not None:
                        self.metrics.turn(event)
                job.emit(event)
        self._decode()
        if len(self.batch):
            self.peak = max(self.peak, len(self.batch))
            if self.metrics is not None:
                self.metrics.batch.observe(len(self.batch))
            self.batch.step()
        return moved

    def _decode(self) -> None:
        """The decoder chunks that fell due this step, of every reply at once (same shapes: one flow solve).
        If that fails, only those replies fail."""
        from ..decoder.streaming import decode_due

        due = [job for job in self.active if job.turn is not None and job.turn.stream is not None
               and not job.turn.done and job.turn.stream.due()]  # fmt: skip
        if not due:
            return
        try:
            audio = decode_due([job.turn.stream for job in due])
        except Exception as exc:
            log.exception("decoding failed")
            for job in due:
                self._fail(job, Glm4VoiceError(f"internal error: {type(exc).__name__}: {exc}"))
            return
        for job, piece in zip(due, audio):
            for event in job.turn.audio(piece):
                job.emit(event)

    def _leave(self, job: Job) -> None:
        if job.turn.reply in self.batch:
            self.batch.leave(job.turn.reply)
        self._drop(job)

    def _fail(self, job: Job, exc: Exception) -> None:
        try:
            self._leave(job)
        except Exception:  # the batch is being rebuilt after a failed step
            self._drop(job)
        job.emit(("error", exc))
