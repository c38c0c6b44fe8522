"""The one thread that runs the library's MLX work.

MLX may not be used from several threads at once (its streams and caches are per thread, and
concurrent evaluation is unsupported), yet apps call models from worker threads and servers from
many. So every public call hands its MLX work to a single owner thread per process and waits for it:
calls from any number of threads run one after another, with the same results as serial calls.
Work already on the owner thread runs directly, so public calls may nest. File decoding and
SQLite stay on the caller's threads; only MLX work queues here.
"""

from __future__ import annotations

import atexit
import functools
import queue
import threading
from concurrent.futures import Future

import mlx.core as mx

_local = threading.local()
_lock = threading.Lock()
_queue: queue.SimpleQueue | None = None
_closed = False  # set by quiesce() at exit


def on_owner() -> bool:
    return getattr(_local, "owner", False)


def _serve(q: queue.SimpleQueue) -> None:
    _local.owner = True
    while True:
        future, fn, args, kwargs = q.get()
        if not future.set_running_or_notify_cancel():
            continue
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # handed to the caller, who re-raises it in its own thread
            future.set_exception(e)


def submit(fn, *args, **kwargs) -> Future:
    """Queue fn(*args, **kwargs) for the owner thread and return at once: a Future of its result
    (a server's batcher hands its batches over this way, without a thread of its own waiting)."""
    global _queue
    with _lock:
        if _closed:
            raise RuntimeError("mlx-aimv2: the process is exiting; no more MLX work is taken")
        if _queue is None:
            # A daemon thread, never joined: MLX's per-thread state is not torn down while the
            # process exits (a joined MLX thread can abort the exit in MLX's C++ destructors).
            _queue = queue.SimpleQueue()
            threading.Thread(target=_serve, args=(_queue,), name="mlx-aimv2-mlx", daemon=True).start()
    future: Future = Future()
    _queue.put((future, fn, args, kwargs))
    return future


def run(fn, *args, **kwargs):
    """fn(*args, **kwargs) on the owner thread; its result or its exception, in the caller's thread."""
    if on_owner():
        return fn(*args, **kwargs)
    return submit(fn, *args, **kwargs).result()


def quiesce(timeout: float = 30.0) -> None:
    """Before the interpreter ends (registered with atexit; a Ctrl-C's exit runs it too): the owner
    thread finishes the job it is on, waits for MLX's queued work (synchronize) and clears its
    thread-local streams, as MLX asks of threads that used it (clear_streams, ml-explore/mlx #3395);
    then the main thread does the same for its own. The owner thread is not ended: a thread that
    ran compiled MLX work must not run MLX's thread-exit destructors (it stays parked, a daemon).
    Later calls are refused: the process is ending."""
    global _closed
    with _lock:
        q, _closed = _queue, True
    if q is not None:
        done: Future = Future()
        q.put((done, _release_mlx, (), {}))
        try:
            done.result(timeout)
        except Exception:  # a wedged or failed device: the exit goes on regardless
            pass
    _release_mlx()


def _release_mlx() -> None:
    try:
        mx.synchronize()
        if hasattr(mx, "clear_streams"):
            mx.clear_streams()
    except Exception:  # at exit, nothing here may stop the exit
        pass


atexit.register(quiesce)


def owned(fn):
    """A decorator: the function's body runs on the owner thread."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return run(fn, *args, **kwargs)

    return wrapper
