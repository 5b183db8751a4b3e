"""The one warning a fast path gives when it cannot run: ``FallbackWarning``, once per process and cause."""

from __future__ import annotations

import threading
import warnings

__all__ = ["FallbackWarning", "kernel_unavailable", "warn_fallback"]


class FallbackWarning(UserWarning):
    """A fast path that was requested or chosen by default could not run, and another one did.

    The paths compute the same rule but may round differently in low precision, so processes that end
    up on different paths (two ranks of one job) can drift apart: the warning names the cause and the
    path taken. Silence it with ``warnings.filterwarnings("ignore", category=FallbackWarning)``.
    """


_warned: set[tuple[str, str]] = set()
_lock = threading.Lock()


def warn_fallback(what: str, cause: str, path: str, *, stacklevel: int = 3) -> bool:
    """Warns, once per process for each ``(what, path)``, that ``what`` cannot run and ``path`` runs.

    Returns whether it warned (False when this fallback was already announced).
    """
    key = (what, path)
    with _lock:
        if key in _warned:
            return False
        _warned.add(key)
    message = f"{what} cannot run: {cause}. Using {path} instead."
    warnings.warn(message, FallbackWarning, stacklevel=stacklevel)
    return True


def kernel_unavailable(what: str, cause: str) -> ImportError:
    """Builds the error for ``fused=True`` where the fused kernel cannot run at all, with the remedy."""
    return ImportError(
        f"{what} cannot run: {cause}. Pass fused=False, or leave fused=None to take the foreach path "
        "with a warning"
    )
