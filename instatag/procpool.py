"""A process pool whose workers start clean: ``imap(fn, items, processes, chunksize)``.

The ingest decodes photos with it (and ``bench/ingest.py``'s bare loop uses it too). Each
worker is a fresh interpreter, ``<sys.executable> -I -c <boot>``, started with ``subprocess``,
and depends only on what it is given:

- the parent's ``sys.path``, as arguments, so that it imports the same code;
- ``fn``, then chunks of ``items``, pickled on its stdin; it answers each chunk with the list of
  results, pickled on its stdout (what it prints goes to stderr, the parent's);
- the parent's environment without the ``AIRFLOW*`` and ``INSTATAG_*`` variables (``fn`` carries
  its settings); ``-I`` (isolated mode) also keeps out ``PYTHON*`` variables and the user site.

It imports what unpickling ``fn`` and the items needs (for the ingest: ``instatag.ingest``,
then PIL and ``instatag.imagestore`` on the first photo) and nothing of the parent's
``__main__``, argv or Airflow. Why not ``multiprocessing`` or ``ProcessPoolExecutor``:

- their *spawn* and *forkserver* start methods run the parent's ``__main__`` file again in every
  child (multiprocessing/spawn.py: ``get_preparation_data`` → ``prepare`` →
  ``_fixup_main_from_path``). Under Airflow that is the ``airflow`` console script, which imports
  Airflow, whose settings refuse the task process's masked database URL
  (``airflow-db-not-allowed:///``): every worker dies, ``BrokenProcessPool``;
- *fork* copies the whole parent: Airflow's threads, sockets and database connections;
- none of them starts children from a daemonic process, and Airflow 3's Celery task process is
  one: Celery's prefork pool processes are daemonic billiard processes that also set
  ``multiprocessing``'s current process (billiard/process.py, ``_set_current_process``), and the
  task process that ``supervise()`` forks from one inherits it.

Each worker holds two chunks (the one it decodes, the next), so it never waits for the parent;
at most ``4 × processes`` chunks are out and not yet consumed. A worker stops when its stdin
closes: at the end, when the consumer stops early (the generator is closed: its workers finish
the chunks they hold, whose results are dropped), or when the parent dies. They ignore SIGINT:
Ctrl-C reaches the whole process group, and the parent decides.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence

log = logging.getLogger(__name__)

#: chunks a worker holds: the one it works on and the next
HELD = 2
#: seconds to wait for the workers to finish their chunks when the consumer stops early
STOP_WAIT_S = 60
_PROTOCOL = pickle.HIGHEST_PROTOCOL
_BOOT = "import sys; sys.path[:] = sys.argv[1:]; from instatag.procpool import _serve; _serve()"


class WorkerError(RuntimeError):
    """A worker process failed: ``fn`` raised (the message has the worker's traceback), or the
    process died."""


def worker_env(environ=os.environ) -> dict[str, str]:
    """The environment a worker gets: ``environ`` without ``AIRFLOW*`` and ``INSTATAG_*`` variables."""
    return {k: v for k, v in environ.items() if "AIRFLOW" not in k.upper() and not k.startswith("INSTATAG_")}


def imap(fn: Callable, items: Sequence, processes: int, chunksize: int = 1) -> Iterator:
    """``map(fn, items)`` computed by ``processes`` worker processes, results in order.

    ``fn`` and the items must pickle, ``fn`` by reference: a module-level function, or a
    ``functools.partial`` of one (a function of a script run as ``__main__`` does not). Raises
    ``WorkerError`` when ``fn`` raises or a worker dies. Logs, at the end, how many items each
    worker process computed."""
    chunks = [items[i:i + chunksize] for i in range(0, len(items), chunksize)]
    if not chunks:
        return
    n = min(processes, len(chunks))
    run = _Run(fn, chunks, n)  # pickles fn: one that does not pickle fails here, before any process starts
    procs = [_start() for _ in range(n)]
    threads = [threading.Thread(target=run.drive, args=(p,), name=f"procpool-{p.pid}", daemon=True) for p in procs]
    for t in threads:
        t.start()
    ready: dict[int, list] = {}
    try:
        for i in range(len(chunks)):
            while i not in ready:
                j, ok, payload = run.results.get()
                if not ok:
                    raise WorkerError(payload)
                ready[j] = payload
            run.slots.release()
            yield from ready.pop(i)
        log.info("%d items in %d worker processes (pid: items): %s", len(items), len(procs),
                 ", ".join(f"{pid}: {n}" for pid, n in sorted(run.done_by.items())))
    finally:
        run.stop.set()
        run.slots.release()  # wakes a worker's thread waiting for a slot; it passes the slot on
        for t, p in zip(threads, procs, strict=True):
            t.join(STOP_WAIT_S)
            if t.is_alive():
                p.kill()
                t.join()


def _start() -> subprocess.Popen:
    if not sys.executable:
        raise WorkerError("no Python interpreter to start worker processes with (sys.executable is empty)")
    path = [p or os.getcwd() for p in sys.path]
    return subprocess.Popen([sys.executable, "-I", "-c", _BOOT, *path], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=worker_env())


class _Run:
    """One ``imap`` call: the chunks, the slots, and each worker's driving thread (``drive``)."""

    def __init__(self, fn: Callable, chunks: list[Sequence], processes: int):
        self.fn = pickle.dumps(fn, _PROTOCOL)
        self.chunks = chunks
        self.results: queue.SimpleQueue = queue.SimpleQueue()  # (chunk index or None, ok, list or message)
        #: chunks sent and not yet consumed: each worker's HELD, and as many again finished out of order
        self.slots = threading.Semaphore(2 * HELD * processes)
        self.stop = threading.Event()
        self.done_by: dict[int, int] = {}
        self._lock = threading.Lock()
        self._next = 0

    def take(self, wait: bool) -> int | None:
        """The next chunk to send, or None: none left, stopping, or no slot free and not ``wait``."""
        if self._next >= len(self.chunks) or not self.slots.acquire(blocking=wait):
            return None
        with self._lock:
            if self._next < len(self.chunks) and not self.stop.is_set():
                self._next += 1
                return self._next - 1
        self.slots.release()
        return None

    def drive(self, proc: subprocess.Popen) -> None:
        """Feed one worker and collect its results until no chunk is left (or the run stops)."""
        held: deque[int] = deque()
        failure = None
        try:
            proc.stdin.write(self.fn)
            while True:
                while len(held) < HELD and (i := self.take(wait=not held)) is not None:
                    pickle.dump(self.chunks[i], proc.stdin, _PROTOCOL)
                    held.append(i)
                proc.stdin.flush()
                if not held:
                    break
                ok, payload = pickle.load(proc.stdout)
                i = held.popleft()
                if ok:
                    self.done_by[proc.pid] = self.done_by.get(proc.pid, 0) + len(self.chunks[i])
                self.results.put((i, ok, payload))
        except Exception as exc:  # noqa: BLE001 - the worker died (EOF, broken pipe) or sent garbage
            failure = exc
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass
            code = proc.wait()
            proc.stdout.close()
        if failure is not None:
            self.results.put((None, False, f"worker process {proc.pid} died (exit code {code}, {failure!r}); "
                                           "its error, if any, is above in the log"))


def _serve() -> None:
    """A worker: read ``fn``, then answer each chunk of items with ``(True, results)`` or
    ``(False, traceback)``, until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # what fn prints goes to stderr, not into the results
    inp = sys.stdin.buffer
    fn = pickle.load(inp)
    gc.freeze()  # the collector skips the objects of the imports from here on
    todo: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_read_chunks, args=(inp, todo), daemon=True).start()
    while (chunk := todo.get()) is not None:
        try:
            answer = pickle.dumps((True, [fn(x) for x in chunk]), _PROTOCOL)
        except Exception:  # noqa: BLE001 - sent to the parent, which raises WorkerError
            answer = pickle.dumps((False, f"worker process {os.getpid()} failed:\n{traceback.format_exc()}"), _PROTOCOL)
        try:
            out.write(answer)
            out.flush()
        except BrokenPipeError:  # the parent is gone
            return


def _read_chunks(inp, todo: queue.SimpleQueue) -> None:
    """Queue the chunks as they come (the parent never waits on a full pipe), then None at EOF."""
    try:
        while True:
            todo.put(pickle.load(inp))
    except Exception:  # noqa: BLE001 - EOF: the parent closed stdin (done, stopping, or gone)
        pass
    finally:
        todo.put(None)
