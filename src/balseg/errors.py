"""The one error layer: every mistake in the user's input is a ``BalsegError``.

Rules every module follows (docs/architecture.md):

- Raise a ``BalsegError`` subclass when the cause is the user's input: a config key, a file
  on disk, a run directory, a class id sent by a browser. The message names the file, field
  or value and, where there is one, what to do.
- Anything else (a ``ValueError`` from a library, an ``AssertionError``, a ``KeyError`` in
  balseg's own code) is a bug: the CLI lets it through with its traceback.
- The CLI turns a ``BalsegError`` into one line on stderr and ``exit_code``; the annotation
  server turns it into ``http_status`` with the message. Both look at the class, never at
  the message text.

Each class also derives from the built-in exception a caller would expect
(``ValueError``, ``LookupError``, ``FileNotFoundError``...), so ``except ValueError`` in
existing user code keeps working.
"""

from __future__ import annotations


class BalsegError(Exception):
    """Bad input from the user; the message says which file, field or value and why."""

    exit_code: int = 2
    http_status: int = 400


class ConfigError(BalsegError, ValueError):
    """A config that cannot run; the message names the file and the key."""


class DataError(BalsegError, ValueError):
    """Bad input on disk: the message always names the offending file, field or value."""


class RunDirError(BalsegError, ValueError):
    """A run directory that cannot be used as asked (missing or damaged files)."""


class MissingFileError(RunDirError, FileNotFoundError):
    """A file the run needs is gone (a pruned or deleted checkpoint, a missing snapshot)."""

    http_status = 404


class LabelStoreError(BalsegError, ValueError):
    """A request the label store refuses (bad class id, unknown source, ...)."""


class NotFoundError(LabelStoreError, LookupError):
    """A query, answer or image that does not exist (HTTP 404)."""

    http_status = 404


class DamagedDatabaseError(LabelStoreError):
    """The label database file is damaged (SQLite reports a malformed image); the message
    names the file and how to recover it (HTTP 503: the server cannot answer until then)."""

    http_status = 503


class StoreUnavailableError(LabelStoreError):
    """The label database cannot be used right now: locked by another process past the
    timeout, read-only, or an I/O error of the disk (HTTP 503: the server's side, not the
    request's)."""

    http_status = 503


class ConflictError(LabelStoreError):
    """A request that clashes with the current state: already answered, leased by another
    annotator, nothing to undo (HTTP 409)."""

    http_status = 409


class InvalidValueError(BalsegError, ValueError):
    """A value in a request that is well-formed but not allowed: a class id outside the
    run's classes, an empty annotator name (HTTP 422, like a body that fails validation)."""

    http_status = 422


class ForbiddenError(BalsegError, PermissionError):
    """A request for something outside what the run may show (HTTP 403)."""

    http_status = 403


class InteropError(BalsegError, ValueError):
    """A Label Studio / CVAT file that cannot be used at all; nothing was written."""


class LabelStudioError(BalsegError, ConnectionError):
    """A live Label Studio cannot be used as configured: unreachable, a refused token, a
    project that is missing, a request it refused. The message names its URL, never the
    token (HTTP 502: a server behind balseg's failed)."""

    http_status = 502


class ReportError(BalsegError, ValueError):
    """Input the report cannot use (not a run directory, corrupt file, mixed protocols)."""


class WeightsUnavailableError(BalsegError, RuntimeError):
    """Pretrained weights cannot be had here; the message says how to get them."""


class TrainingDivergedError(BalsegError, FloatingPointError):
    """The loss became NaN or infinite; no checkpoint of the diverged model was saved."""

    ADVICE = "; lower train.lr (for example by 10x) and train again"
    """The end of every divergence message; the loop replaces it with the run's own advice."""


class DiskFullError(BalsegError, OSError):
    """A write failed for lack of space; the message names the file and the space needed.

    The server's fault, not the request's: HTTP 507 (Insufficient Storage); the same request
    succeeds once space is freed. The CLI still exits 2: the user frees the space."""

    http_status = 507


class ExportError(BalsegError, RuntimeError):
    """An exported model that cannot be written as asked (a missing optional package, or a
    file that disagrees with PyTorch beyond the stated tolerance); nothing was written."""


class DistributedError(BalsegError, RuntimeError):
    """A collective failed: usually another rank died or hung; the message says which step."""

    exit_code = 3


class Interrupted(BalsegError):
    """Ctrl-C or SIGTERM; the message says how to resume."""

    exit_code = 130


EXIT_USER_ERROR = BalsegError.exit_code
EXIT_WAITING = 4
"""``balseg run`` with a person oracle stopped to wait for answers (not a failure)."""
EXIT_INTERRUPTED = 130


class BalsegWarning(UserWarning):
    """Input balseg tolerates but the user should know about (a truncated last line, runs
    that share a seed, a cache rebuilt)."""
