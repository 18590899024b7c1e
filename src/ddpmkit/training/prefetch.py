"""Read the batches of the next steps in a background thread while the current step computes.

What is read for step s is a pure function of s (the trainer's batch indices depend only on the seed
and s), so reading ahead changes nothing about the numbers; it only hides the disk behind the compute.
The thread does the indexing into the (memory-mapped) data set -- torch releases the GIL while it
copies, so page faults are served while the main thread runs the network.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable


class Prefetcher:
    """``get(s)`` returns ``fetch(s)`` for s = start, start + 1, ... (in that order), computed ``depth``
    steps ahead in one daemon thread. An exception in ``fetch`` is raised again by ``get``."""

    def __init__(self, fetch: Callable[[int], object], start: int, end: int, depth: int = 2):
        self._fetch, self._next, self._end = fetch, start, end
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self.wait_seconds = 0.0  # time get() spent waiting for the thread (0 when reading keeps up)
        self._thread = threading.Thread(target=self._run, args=(start,), name="ddpmkit-prefetch", daemon=True)
        self._thread.start()

    def _run(self, step: int) -> None:
        while step < self._end and not self._stop.is_set():
            try:
                item = (step, self._fetch(step), None)
            except BaseException as e:  # handed to the consumer
                item = (step, None, e)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return
            step += 1

    def get(self, step: int):
        if step != self._next:
            raise RuntimeError(f"prefetcher expected step {self._next}, asked for {step}")
        t0 = time.perf_counter()
        got, value, err = self._queue.get()
        self.wait_seconds += time.perf_counter() - t0
        if err is not None:
            raise err
        assert got == step
        self._next += 1
        return value

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a put() in progress
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10)
