"""The one thread of a decoupled model that talks to the Triton server about its requests.

In Triton's Python backend, both `sender.send(...)` and `request.is_cancelled()` are round trips to the server
process: the stub puts a message on its queue and waits until a server thread has handled it (python_backend
`ResponseSender::Send`, `PbCancel::IsCancelled`). Made from the step scheduler's thread, every active request's
progress message and cancel check stalled the next UNet forward by one round trip each: at 8 requests, 16 round trips
per tick, with the cores idle. The courier takes both off that thread:

- `post(key, send)`: a send, in order (FIFO over all keys), e.g. a request's final response;
- `post_progress(key, send)`: a progress message; one still waiting for the same key is replaced (only the newest
  step matters to a client, and a slow server never builds a backlog of stale ones);
- `watch(key, check)`: a cancel check (e.g. the client's `is_cancelled`), polled every
  `poll_interval` seconds while the key is open; `cancelled(key)` reads the answer without a round trip;
- a send that raises (the client's stream is gone) marks its key cancelled, so the scheduler stops computing for it;
- `finish(key, send)`: the key's final response; its polling stops before it is sent, so nothing is asked about a
  request once its final response has gone (the server frees the request then: `is_cancelled` on it would crash
  the server, TRITONBACKEND_ResponseFactoryIsCancelled on a deleted factory).

Sends and polls run on this one thread, never at the same time. Triton-free: the `denoise` model adapts it, the
unit tests drive it with plain callables.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable

log = logging.getLogger("portrait.courier")

Send = Callable[[], None]


class Courier:
    def __init__(self, poll_interval: float = 0.1, name: str = "courier"):
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.poll_interval = poll_interval
        self._queue: deque[tuple[Hashable, str]] = deque()  # (key, "send" | "final" | "progress")
        self._sends: deque[Send] = deque()  # the "send" and "final" items' callables, in queue order
        self._progress: dict[Hashable, Send] = {}  # the newest progress per key (one queue entry each)
        self._checks: dict[Hashable, Callable[[], bool]] = {}
        self._cancelled: set[Hashable] = set()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # --- any thread ----------------------------------------------------------------------------------

    def watch(self, key: Hashable, check: Callable[[], bool]) -> None:
        with self._cond:
            self._checks[key] = check
            self._cond.notify()

    def cancelled(self, key: Hashable) -> bool:
        with self._cond:
            return key in self._cancelled

    def post(self, key: Hashable, send: Send) -> None:
        self._put(key, "send", send)

    def finish(self, key: Hashable, send: Send) -> None:
        """The key's last send: after it, the key is forgotten (no more polls, its cancelled mark dropped)."""
        self._put(key, "final", send)

    def _put(self, key: Hashable, kind: str, send: Send) -> None:
        with self._cond:
            self._queue.append((key, kind))
            self._sends.append(send)
            self._cond.notify()

    def post_progress(self, key: Hashable, send: Send) -> None:
        with self._cond:
            if key not in self._progress:
                self._queue.append((key, "progress"))
            self._progress[key] = send
            self._cond.notify()

    def stop(self, timeout: float = 30.0) -> None:
        """Send what is queued, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    # --- the courier's thread ------------------------------------------------------------------------

    def _run(self) -> None:
        next_poll = time.monotonic() + self.poll_interval
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    wait = next_poll - time.monotonic() if self._checks else None
                    if wait is not None and wait <= 0:
                        break
                    self._cond.wait(wait)
                if not self._queue and self._stopping:
                    return
                item = self._next_item()
            if item is not None:
                self._deliver(*item)
            if self._checks and time.monotonic() >= next_poll:
                self._poll()
                next_poll = time.monotonic() + self.poll_interval

    def _next_item(self) -> tuple[Hashable, str, Send | None] | None:
        """Under the lock: the next queued item with its callable, or None."""
        if not self._queue:
            return None
        key, kind = self._queue.popleft()
        if kind == "final":  # forgotten before it is sent: no poll may come between
            self._checks.pop(key, None)
            self._cancelled.discard(key)
            self._progress.pop(key, None)  # a progress posted after the final one is never sent
        return key, kind, self._progress.pop(key, None) if kind == "progress" else self._sends.popleft()

    def _deliver(self, key: Hashable, kind: str, send: Send | None) -> None:
        if send is None:
            return
        try:
            send()
        except Exception:  # the client's stream is gone: stop computing for it
            log.info("a response could not be sent (%s); its request stops", kind, exc_info=True)
            with self._cond:
                self._cancelled.add(key)

    def _poll(self) -> None:
        with self._cond:
            checks = [(k, c) for k, c in self._checks.items() if k not in self._cancelled]
        for key, check in checks:
            try:
                stop = check()
            except Exception:  # a broken check stops its own request only
                log.warning("a cancel check failed; its request stops", exc_info=True)
                stop = True
            if stop:
                with self._cond:
                    if key in self._checks:
                        self._cancelled.add(key)
