"""The one retry policy for every provider (the SDKs' own retries are turned off).

Providers translate their SDK's exceptions: transient ones (429, 529/overloaded, 5xx, timeouts,
dropped connections) into TransientError carrying any retry-after; everything else into LLMError,
which fails at once.
"""

from __future__ import annotations

import logging
import random

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, stop_after_delay

log = logging.getLogger("autoembed.llm")

MAX_ATTEMPTS = 8
MAX_TOTAL_S = 600.0
BASE_WAIT_S = 1.0
MAX_WAIT_S = 60.0


class TransientError(RuntimeError):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, TransientError) and exc.retry_after is not None:
        return min(exc.retry_after, MAX_WAIT_S)
    backoff = min(MAX_WAIT_S, BASE_WAIT_S * 2 ** (state.attempt_number - 1))
    return backoff * (0.5 + random.random() / 2)


def _log(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning("LLM call failed (attempt %d): %s; retrying in %.1fs", state.attempt_number, exc,
                state.next_action.sleep if state.next_action else 0.0)


def retrying(max_attempts: int = MAX_ATTEMPTS, max_total_s: float = MAX_TOTAL_S) -> Retrying:
    """Usage: for attempt in retrying(): with attempt: call()"""
    return Retrying(
        retry=retry_if_exception_type(TransientError),
        wait=_wait,
        stop=stop_after_attempt(max_attempts) | stop_after_delay(max_total_s),
        before_sleep=_log,
        reraise=True,
    )
