"""A progress bar for long work that works in Jupyter (a widget) and in a terminal (text), through tqdm.auto.

A Bar is also a `say(message)` callable, the progress interface trials, loops and comparisons already take:
each message becomes the bar's status line, and the bar itself tracks time spent against the budget (trials
and loops) or units done (a comparison's cells).
"""

from __future__ import annotations

import sys
import threading
import time

from tqdm.auto import tqdm

TICK_S = 1.0


class Bar:
    """Seconds of a budget (unit="s", ticking on its own) or countable units (advance with .step())."""

    def __init__(self, total: float, desc: str, *, unit: str = "s", echo=None):
        self.timed = unit == "s"
        self.bar = tqdm(total=round(total) if self.timed else total, desc=desc, unit=unit, file=sys.stderr,
                        dynamic_ncols=True, bar_format=None if not self.timed else
                        "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s of budget {postfix}")
        self.echo = echo  # also send each message on (e.g. to a log); None: the bar only
        self.started = time.time()
        self._stop = threading.Event()
        if self.timed:
            threading.Thread(target=self._tick, daemon=True).start()

    def __call__(self, message: str) -> None:
        self.bar.set_postfix_str(message.splitlines()[0][:100] if message else "", refresh=True)
        if self.echo:
            self.echo(message)

    def step(self, n: int = 1) -> None:
        self.bar.update(n)

    def _tick(self) -> None:
        while not self._stop.wait(TICK_S):
            done = min(time.time() - self.started, self.bar.total)
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self._stop.set()
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
