"""The sandbox's deadline on the host side, one home for both engines (bwrap, docker).

A sandbox stops once: at stop() or when its deadline passes, whichever comes first. StopOnce holds that rule: arm()
starts a daemon timer that calls the engine's stop at the deadline, and claim() lets exactly one caller (the timer
or anyone calling stop()) go on to tear the sandbox down, cancelling the timer unless the timer is the caller.
Inside, the reaper (procs.REAPER, PID 1) exits at the same deadline, so a sandbox whose host process is gone dies on
time too; this timer is what makes the host stop it and record why.
"""

from __future__ import annotations

import threading
import time
from typing import Callable


class StopOnce:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopped = False
        self._timer: threading.Timer | None = None

    @property
    def stopped(self) -> bool:
        """True once stop was claimed (by stop() or by the deadline)."""
        return self._stopped

    def arm(self, deadline: float, stop: Callable[[], None]) -> None:
        """Call stop() from a daemon thread at the deadline (epoch seconds; at once if it has passed)."""
        if self._timer is not None:
            raise RuntimeError("the deadline timer is already armed")
        self._timer = threading.Timer(max(0.0, deadline - time.time()), stop)
        self._timer.daemon = True
        self._timer.start()

    def claim(self) -> bool:
        """True for the first caller only, who then stops the sandbox; the timer is cancelled unless it is the caller
        (a timer thread cannot cancel itself, and need not: it is running its one call)."""
        with self._lock:
            if self._stopped:
                return False
            self._stopped = True
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.cancel()
        return True
