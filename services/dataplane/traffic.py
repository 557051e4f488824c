"""Which version of a model answers a request: its version policy (a canary split, a shadow). The data plane
(services/dataplane/models.py) makes the choice per request, measures it per version and runs the shadow's copy.

No policy: the most recently created served version answers (the repository's default). A split weighs served
versions (weights summing to 100); a request's `X-Routing-Key` makes its choice sticky (a hash of the key picks
the version, the same one while the split is unchanged); without a key the choice is random. A shadow gets a
copy of `percent` of the requests after the primary has answered; its answers are compared with the primary's
and counted, never returned, and its errors never reach the client.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.errors import BadRequest

ROUTING_KEY = "x-routing-key"


@dataclass(frozen=True)
class Shadow:
    version: str
    percent: float = 100.0


@dataclass(frozen=True)
class Policy:
    """One model's version policy: `split` weighs the versions that answer; `shadow` mirrors a share to another."""

    split: Mapping[str, float]
    shadow: Shadow | None = None
    # The versions and their cumulative weights, in order, for the choice (made once, not per request).
    _versions: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _bounds: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cumulative, total = [], 0.0
        for weight in self.split.values():
            total += weight
            cumulative.append(total)
        object.__setattr__(self, "_versions", tuple(self.split))
        object.__setattr__(self, "_bounds", tuple(cumulative))

    @classmethod
    def parse(cls, body: Any) -> Policy:
        """A policy from its JSON form; BadRequest saying what is wrong with it."""
        if not isinstance(body, dict) or set(body) - {"split", "shadow"} or "split" not in body:
            raise BadRequest('a traffic policy is {"split": {"<version>": weight, ...}, "shadow": {...}}')
        split, shadow = body["split"], body.get("shadow")
        if not isinstance(split, dict) or not split or not all(_is_number(w) and w >= 0 for w in split.values()):
            raise BadRequest("split must map one or more versions to weights from 0 to 100")
        if abs(sum(split.values()) - 100) > 1e-6:
            raise BadRequest(f"the split's weights must sum to 100; they sum to {sum(split.values()):g}")
        if shadow is not None:
            if (
                not isinstance(shadow, dict)
                or not isinstance(shadow.get("version"), str)
                or set(shadow)
                - {
                    "version",
                    "percent",
                }
            ):
                raise BadRequest('shadow is {"version": "<version>", "percent": 0-100}')
            percent = shadow.get("percent", 100)
            if not _is_number(percent) or not 0 <= percent <= 100:
                raise BadRequest(f"shadow percent must be from 0 to 100; got {percent!r}")
            if split.get(shadow["version"], 0) > 0:
                raise BadRequest(f"{shadow['version']} answers in the split; a shadow must be another version")
            shadow = Shadow(shadow["version"], float(percent))
        return cls({version: float(weight) for version, weight in split.items() if weight > 0}, shadow)

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"split": dict(self.split)}
        if self.shadow:
            record["shadow"] = {"version": self.shadow.version, "percent": self.shadow.percent}
        return record

    @property
    def versions(self) -> set[str]:
        return {*self.split, *([self.shadow.version] if self.shadow else [])}

    def choose(self, key: str | None) -> str:
        """The version that answers: by the key's hash when given (sticky), else at random, by weight."""
        if key is None:
            point = random.random() * self._bounds[-1]
        else:
            digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
            point = int.from_bytes(digest) / 2**64 * self._bounds[-1]
        return self._versions[min(bisect.bisect_right(self._bounds, point), len(self._bounds) - 1)]

    def mirrors(self) -> bool:
        return self.shadow is not None and random.random() * 100 < self.shadow.percent


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
