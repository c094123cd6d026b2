"""The device worker: one thread owns the slangpy device and runs every job on it in turn.

Two kinds of work arrive from the web server's event loop:

- jobs (open a case, paint, refine, undo, save, volumes for the slice views) run
  first in, first out, each once;
- render requests are *latest only*: each client has one slot, and a new request
  replaces the one still waiting (its future is cancelled, counted in
  :attr:`DeviceWorker.dropped`). A busy server therefore drops stale frames
  instead of queueing them, and a frame always shows the newest camera.

Jobs go before waiting renders, and renders of several clients take turns.
A long job (a refinement) calls :meth:`DeviceWorker.serve_renders` between its
steps, so frames keep flowing to every client while it runs.
The session object is created on the worker thread, so the device never
leaves it.
"""

from __future__ import annotations

import collections
import threading
from concurrent.futures import Future
from typing import Any, Callable

from neumours.viewer.session import ViewerSession

Job = Callable[[ViewerSession], Any]


class DeviceWorker:
    """A thread running jobs on one :class:`ViewerSession`.

    Args:
        make_session: called on the worker thread to create the session (it
            creates the device); its error is re-raised by :meth:`wait_ready`.
    """

    def __init__(self, make_session: Callable[[], ViewerSession]):
        self._make_session = make_session
        self._cond = threading.Condition()
        self._jobs: collections.deque[tuple[Job, Future]] = collections.deque()
        self._renders: collections.OrderedDict[Any, tuple[Job, Future]] = collections.OrderedDict()
        self._stopping = False
        self._ready: Future = Future()
        self.dropped = 0
        self.rendered = 0
        self.session: ViewerSession | None = None
        self._thread = threading.Thread(target=self._run, name="neumours-device", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> ViewerSession:
        """Block until the session exists; re-raise its construction error."""
        return self._ready.result(timeout)

    def submit(self, job: Job) -> Future:
        """Run ``job(session)`` after the jobs before it; its result or error lands in the future."""
        future: Future = Future()
        with self._cond:
            if self._stopping:
                raise RuntimeError("the device worker has stopped")
            self._jobs.append((job, future))
            self._cond.notify()
        return future

    def request_render(self, client: Any, job: Job) -> Future:
        """Run ``job(session)`` for ``client`` unless a newer request of that client replaces it first."""
        future: Future = Future()
        with self._cond:
            if self._stopping:
                raise RuntimeError("the device worker has stopped")
            stale = self._renders.pop(client, None)
            if stale is not None:
                stale[1].cancel()
                self.dropped += 1
            self._renders[client] = (job, future)
            self._cond.notify()
        return future

    def serve_renders(self) -> int:
        """Run the renders waiting now (from inside a job, on the worker thread); returns how many ran."""
        if threading.current_thread() is not self._thread:
            raise RuntimeError("serve_renders runs on the worker thread, inside a job")
        done = 0
        while True:
            with self._cond:
                if not self._renders or self._stopping:
                    return done
                _, (job, future) = self._renders.popitem(last=False)
            if self._execute(job, future, True):
                done += 1

    def forget(self, client: Any) -> None:
        """Drop a client's waiting render (it disconnected)."""
        with self._cond:
            stale = self._renders.pop(client, None)
        if stale is not None:
            stale[1].cancel()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the running job, cancel the waiting ones and end the thread."""
        with self._cond:
            self._stopping = True
            waiting = list(self._jobs) + list(self._renders.values())
            self._jobs.clear()
            self._renders.clear()
            self._cond.notify()
        for _, future in waiting:
            future.cancel()
        self._thread.join(timeout)

    def _next(self) -> tuple[Job, Future, bool] | None:
        with self._cond:
            while not (self._jobs or self._renders or self._stopping):
                self._cond.wait()
            if self._stopping:
                return None
            if self._jobs:
                return (*self._jobs.popleft(), False)
            _, (job, future) = self._renders.popitem(last=False)
            return job, future, True

    def _run(self) -> None:
        try:
            _bind_cuda_context()
            self.session = self._make_session()
        except BaseException as exc:  # reported by wait_ready
            self._ready.set_exception(exc)
            return
        self._ready.set_result(self.session)
        while True:
            item = self._next()
            if item is None:
                return
            self._execute(*item)

    def _execute(self, job: Job, future: Future, is_render: bool) -> bool:
        """Run one job into its future (unless cancelled); whether it ran."""
        if not future.set_running_or_notify_cancel():
            return False
        try:
            result = job(self.session)
        except BaseException as exc:  # the server turns it into an error reply
            future.set_exception(exc)
        else:
            if is_render:
                self.rendered += 1
            future.set_result(result)
        return True


def _bind_cuda_context() -> None:
    """Make the GPU's primary CUDA context current on this thread.

    slangpy's CUDA device (and torch) use the primary context, which the CUDA driver
    makes current only on the thread that created it; driver calls from this worker
    thread fail ("Unexpected cuStreamQuery error") until it is current here too.
    ``cudaSetDevice`` (through torch) does that. Nothing happens without CUDA.
    """
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(torch.cuda.current_device())
