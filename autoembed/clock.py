"""Where wall time goes, by named phase: the scorer's stages (score.json "stage_seconds") and the loop's phases (its
stop record, which bench/bench_loop.py reads)."""

from __future__ import annotations

import contextlib
import time


class PhaseClock:
    """`with clock("name"): ...` adds the block's seconds to its phase. A phase inside another is counted on its own,
    not in its parent. overlap: a phase (the loop's "trials") whose nested phases cost no wall time of their own
    (they run while it waits), kept apart as "name (during <overlap>)". Used from one thread."""

    def __init__(self, overlap: str | None = None):
        self.overlap = overlap
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self._stack: list[list] = []  # [phase, seconds spent in phases nested in it]
        self.cut_in: str | None = None  # the innermost phase a Ctrl-C came through

    @contextlib.contextmanager
    def __call__(self, name: str):
        overlapped = self.overlap is not None and any(phase == self.overlap for phase, _ in self._stack)
        key = f"{name} (during {self.overlap})" if overlapped else name
        start = time.perf_counter()
        self._stack.append([key, 0.0])
        try:
            yield
        except KeyboardInterrupt:
            self.cut_in = self.cut_in or name
            raise
        finally:
            _, nested = self._stack.pop()
            spent = time.perf_counter() - start
            self.seconds[key] = self.seconds.get(key, 0.0) + spent - nested
            self.counts[key] = self.counts.get(key, 0) + 1
            if self._stack and not overlapped:
                self._stack[-1][1] += spent

    def rounded(self, digits: int = 3) -> dict[str, float]:
        return {k: round(v, digits) for k, v in self.seconds.items()}

    def report(self) -> dict:
        """Each phase's seconds, "other" (wall time in no phase), "wall" and how often each phase ran."""
        wall = time.perf_counter() - self.started
        counted = sum(v for k, v in self.seconds.items() if not k.endswith(f"(during {self.overlap})"))
        return {**{k: round(v, 2) for k, v in sorted(self.seconds.items())}, "other": round(wall - counted, 2),
                "wall": round(wall, 2), "counts": dict(sorted(self.counts.items()))}
