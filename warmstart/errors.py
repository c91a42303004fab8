"""User-facing errors: one clear paragraph (what, where, what would be right), never a traceback.

The CLI catches :class:`WarmstartError` and prints its message; everything else is a bug.
"""


class WarmstartError(Exception):
    """An error caused by the user's recipe, data, files or environment, with a readable message."""


class ConfigError(WarmstartError):
    """A recipe or override that does not validate."""


class DataError(WarmstartError):
    """A task file or dataset that cannot be read or has the wrong shape."""


def warn(message: str) -> None:
    """Print a one-paragraph warning for the user (on stderr: stdout stays the run's own output).

    User text in ``message`` is printed literally, never read as terminal markup."""
    import sys

    print(f"warning: {message}", file=sys.stderr, flush=True)


class CallbackTimeout(Exception):
    """A user callback (reward term, task) ran over its time limit."""


def time_limit(seconds: float, what: str):
    """Context manager: raise :class:`CallbackTimeout` in the block after ``seconds`` (0: no limit).

    Uses ``SIGALRM``, so it interrupts pure-Python code and sleeps (what a hung reward function
    usually is) but not a C call that never returns to the interpreter; it is a no-op off the main
    thread and where ``SIGALRM`` does not exist."""
    import contextlib
    import signal
    import threading
    import time

    @contextlib.contextmanager
    def limit():
        if not seconds or not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
            yield
            return
        outer = signal.getitimer(signal.ITIMER_REAL)[0]
        if outer and outer <= seconds:  # an enclosing limit expires first: it is the one that applies
            yield
            return

        def on_alarm(signum, frame):
            raise CallbackTimeout(f"{what} did not return within {seconds:g} s (guard.callback_timeout_s)")

        old = signal.signal(signal.SIGALRM, on_alarm)
        t0 = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
            if outer:  # give an enclosing limit back what is left of it
                signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - t0), 1e-3))

    return limit()
