"""The annotation server's background writes to the label database, made to survive a full
disk.

Why this exists: answers are committed to SQLite's write-ahead log (``labels.sqlite-wal``)
and copied into ``labels.sqlite`` by checkpoints, every few seconds and at shutdown. When the
disk fills up, both the answers and the checkpoints fail. The server must not die of it,
must not need a restart once space is free, and must say what is going on:

- **Nothing kills the checkpoint thread.** A store error (``BalsegError``: a full disk, a
  locked or damaged file) is recorded and retried; anything else is a bug, logged with its
  traceback, and retried too.
- **Retries back off.** After a failure the next try comes after ``first_retry_s`` (at most
  one second), then twice as long each time, up to the checkpoint interval.
- **A full disk is reported once**, when it starts (in the log, in ``/api/health`` and in
  every refused write, which is an HTTP 507), and its end once, however many requests fail in
  between. It ends when a write succeeds again with at least ``RECOVERED_FREE_BYTES`` free in
  the database's folder: on a nearly full disk a small write (a lease) can still fit while
  an answer does not, and the log must not flap between the two.
- **Recovery shrinks the log.** After a failure, checkpoints use SQLite's ``TRUNCATE`` mode
  until one completes, which gives back the space the log grew into meanwhile. An answer that
  is stored again wakes the thread, so checkpoints resume with the first accepted write, not
  at the end of the longest backoff.
- **Shutdown says what is left.** If the final checkpoint cannot be written, one line names
  the ``-wal`` file that must travel with ``labels.sqlite`` and the command that makes one
  whole file of the pair (``balseg backup``).
"""

from __future__ import annotations

import logging
import shutil
import threading

from balseg.errors import BalsegError, DiskFullError
from balseg.labels.store import LabelStore

log = logging.getLogger("balseg.annotate")

FIRST_RETRY_S = 1.0
RECOVERED_FREE_BYTES = 512 * 1024


class Storage:
    """Checkpoints of one label store, and whether its disk takes writes right now."""

    def __init__(self, store: LabelStore, interval_s: float, *,
                 first_retry_s: float = FIRST_RETRY_S) -> None:
        self.store = store
        self.interval_s = interval_s
        self.first_retry_s = min(first_retry_s, interval_s)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._problem: str | None = None  # what the health route reports
        self._problem_from: str | None = None  # "checkpoint" or "write": what may clear it
        self._disk_full = False
        self._behind = False  # a checkpoint failed since the last complete one
        self._thread: threading.Thread | None = None

    # -- state ----------------------------------------------------------------------------
    @property
    def problem(self) -> str | None:
        """Why writes fail right now (None: they do not, as far as the server knows)."""
        return self._problem

    def failed(self, err: BaseException, source: str) -> None:
        """A write (``source`` "write") or a checkpoint ("checkpoint") failed with ``err``."""
        text = " ".join(str(err).split()) or type(err).__name__
        with self._lock:
            first = self._problem is None
            if first or source == "checkpoint":
                self._problem, self._problem_from = text, source
                self._disk_full = isinstance(err, DiskFullError)
        if first:
            if isinstance(err, DiskFullError):
                log.error("balseg annotate: %s. Answers are refused (HTTP 507) and retried"
                          " until space is freed; the server recovers by itself", text)
            else:
                log.error("balseg annotate: %s (retrying)", text)

    def _cleared(self, source: str) -> None:
        with self._lock:
            if self._problem is None or (source == "checkpoint"
                                         and self._problem_from == "write"):
                return
            if self._disk_full and not self._space_back():
                return
            self._problem = self._problem_from = None
        log.warning("balseg annotate: the label database takes writes again (%s)",
                    "answers are accepted and checkpoints resumed" if source == "checkpoint"
                    else "answers are accepted again")

    def _space_back(self) -> bool:
        try:
            return shutil.disk_usage(self.store.path.parent).free >= RECOVERED_FREE_BYTES
        except OSError:
            return True

    def wrote(self) -> None:
        """A write request was committed: the disk takes writes; catch up on checkpoints."""
        if self._problem is not None or self._behind:
            self._cleared("write")
            self._wake.set()

    # -- checkpoints ---------------------------------------------------------------------
    def checkpoint_once(self) -> bool:
        """One checkpoint (``TRUNCATE`` after a failure); False when it failed."""
        try:
            complete = self.store.checkpoint(truncate=self._behind)
        except BalsegError as err:
            self._behind = True
            self.failed(err, "checkpoint")
            return False
        except Exception as err:  # a bug: keep its traceback in the log, and keep going
            self._behind = True
            log.exception("balseg annotate: checkpoint of the label database failed")
            self.failed(err, "checkpoint")
            return False
        if complete:
            self._behind = False
        self._cleared("checkpoint")
        return True

    def _run(self) -> None:
        delay, failures = self.interval_s, 0
        while True:
            self._wake.wait(delay)
            self._wake.clear()
            if self._stopping:
                return
            if self.checkpoint_once():
                delay, failures = self.interval_s, 0
            else:
                delay = min(self.interval_s, self.first_retry_s * 2 ** min(failures, 30))
                failures += 1

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="balseg-checkpoint",
                                        daemon=True)
        self._thread.start()

    def stop(self, run_dir_hint: str = "RUN_DIR") -> bool:
        """Stop the thread and checkpoint one last time, emptying the log. Never raises:
        on failure one line says which file holds what ``labels.sqlite`` lacks."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.store.checkpoint(truncate=True)
            return True
        except Exception as err:  # shutdown goes on whatever happened; say what is left
            if not isinstance(err, BalsegError):  # a bug: its traceback, then the line
                log.exception("balseg annotate: final checkpoint of the label database")
            text = " ".join(str(err).split())
            log.error("balseg annotate: the final checkpoint failed (%s): answers since the"
                      " last checkpoint are only in %s; keep it beside %s (copy or move the"
                      " two together), or run `balseg backup %s` for one whole file",
                      text, self.store.wal_path, self.store.path.name, run_dir_hint)
            return False
