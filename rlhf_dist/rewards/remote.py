"""Remote reward servers: a batch is POSTed as JSON, the server answers one score per sample."""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from rlhf_dist.errors import UserError
from rlhf_dist.rewards.errors import RewardError

log = logging.getLogger(__name__)


class RemoteReward:
    """Scores a batch by POSTing ``{"prompts": [...], "responses": [...], "columns": {...}}``.

    ``columns`` maps every dataset column's name to its B values; a value JSON cannot hold (a
    date, NaN, an object) is sent as its ``str()``. The server answers ``{"rewards": [B floats]}``.
    Timeouts, refused connections and 5xx answers are retried ``retries`` times after the first
    attempt, waiting ``backoff_s * 2**k`` seconds before retry ``k``, each retry announced by a
    warning line (so a slow server never leaves the console silent for long); then, or on any other
    bad answer, :class:`RewardError`.
    """

    def __init__(
        self,
        url: str,
        timeout_s: float,
        retries: int = 3,
        backoff_s: float = 0.5,
        max_response_bytes: int = 1_000_000,
        name: str = "remote",
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise UserError(f"remote reward url must start with http:// or https://, got {url!r}")
        self.url, self.timeout_s, self.retries = url, timeout_s, retries
        self.backoff_s, self.max_response_bytes, self.name = backoff_s, max_response_bytes, name

    def __call__(
        self, prompts: list[str], responses: list[str], columns: Mapping[str, Sequence[Any]] | None = None,
        extras: Any = None,  # token ids and step: the HTTP body carries texts and columns only
    ) -> list[float]:
        columns = {str(name): [_jsonable(v) for v in values] for name, values in (columns or {}).items()}
        body = json.dumps({"prompts": prompts, "responses": responses, "columns": columns}, allow_nan=False).encode()
        raw = self._post_with_retries(body)
        try:
            payload = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RewardError(
                f"remote reward {self.url} answered with non-JSON ({len(raw)} bytes, starting "
                f"{raw[:80]!r}); it must answer {{\"rewards\": [floats]}}"
            ) from None
        rewards = payload.get("rewards") if isinstance(payload, dict) else None
        if not isinstance(rewards, list) or not all(
            isinstance(r, (int, float)) and not isinstance(r, bool) for r in rewards
        ):
            raise RewardError(
                f"remote reward {self.url} answered {str(payload)[:120]}; expected a JSON object "
                "with 'rewards': a list of numbers, one per response"
            )
        return [float(r) for r in rewards]

    def _post_with_retries(self, body: bytes) -> bytes:
        attempts = self.retries + 1
        for attempt in range(attempts):
            request = urllib.request.Request(
                self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    raw = response.read(self.max_response_bytes + 1)
            except urllib.error.HTTPError as exc:
                if exc.code < 500:  # the server rejected the request: retrying will not help
                    raise RewardError(
                        f"remote reward {self.url} answered HTTP {exc.code} {exc.reason}: "
                        f"{exc.read(200)!r}"
                    ) from None
                failure = f"HTTP {exc.code} {exc.reason}"
            except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                failure = f"{type(reason).__name__}: {reason}"
            else:
                if len(raw) > self.max_response_bytes:
                    raise RewardError(
                        f"remote reward {self.url} answered more than {self.max_response_bytes} "
                        "bytes; return only {\"rewards\": [floats]} or raise max_response_bytes"
                    )
                return raw
            if attempt + 1 < attempts:
                log.warning("waiting for reward %r (attempt %d/%d, %g s): %s answered %s", self.name, attempt + 2,
                            attempts, self.timeout_s, self.url, failure)
                time.sleep(self.backoff_s * 2**attempt)
        raise RewardError(
            f"remote reward {self.url} failed {attempts} time(s), last with {failure} "
            f"(timeout {self.timeout_s}s); check that the server is up, or raise reward.timeout_s"
        )


def _jsonable(value: Any) -> Any:
    """``value`` as JSON can hold it: containers walked, numpy/torch values unpacked by ``tolist``,
    non-finite floats and anything else as ``str()`` (strict JSON has no NaN)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if callable(getattr(value, "tolist", None)):  # numpy arrays and scalars, torch tensors
        return _jsonable(value.tolist())
    return str(value)
