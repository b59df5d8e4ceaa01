"""A circuit breaker per provider endpoint.

``closed`` → calls flow. After ``failure_threshold`` consecutive retryable failures the endpoint is
``open``: calls are refused at once (the request moves to its next fallback) for ``cooldown_s``. Then
it is ``half_open``: one probe call goes through; success closes the circuit, failure opens it again.
State is per process (each Airflow worker keeps its own), which is what protects a worker from
hammering a failing endpoint.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _State:
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False


class CircuitBreaker:
    def __init__(
        self, failure_threshold: int = 5, cooldown_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._states: dict[str, _State] = {}

    def state(self, key: str) -> str:
        with self._lock:
            st = self._states.get(key)
            if st is None or st.opened_at is None:
                return "closed"
            if self._clock() - st.opened_at >= self.cooldown_s:
                return "half_open"
            return "open"

    def allow(self, key: str) -> bool:
        with self._lock:
            st = self._states.setdefault(key, _State())
            if st.opened_at is None:
                return True
            if self._clock() - st.opened_at < self.cooldown_s:
                return False
            if st.probing:  # one probe at a time while half-open
                return False
            st.probing = True
            return True

    def record_success(self, key: str) -> None:
        with self._lock:
            self._states[key] = _State()

    def record_failure(self, key: str) -> None:
        with self._lock:
            st = self._states.setdefault(key, _State())
            st.failures += 1
            if st.probing or st.failures >= self.failure_threshold:
                st.opened_at = self._clock()
                st.probing = False
