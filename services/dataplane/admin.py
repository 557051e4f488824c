"""The model repository's admin: what the fleet serves, by name and version, changed while traffic flows by
Triton's repository extension (index, load, unload) and each model's version policy (`traffic`: a canary split
and a shadow), on when MODELROAD_ADMIN_TOKEN is set; its REST routes are services/frontends/repository.py's, its
gRPC methods services/frontends/oip_grpc.py's.

The store is the repository (every registered model and version); a server serves some of it. `load NAME`
serves one stored version of NAME (the latest unless `parameters.version` names one: loading an older version
is the rollback), retires its other versions and ends its policy; `unload NAME` retires them all. A retired
version answers no new request and is closed once its requests in flight have finished. Every route follows
the repository: a family's routes and pipeline run whichever version of its model the policy chooses. A
family's model can be replaced but not unloaded (its routes would have nothing to run).

What is served and every policy is the fleet's desired state (services/dataplane/desired.py), one document beside
the model store that every worker of every replica on that store follows: any replica is the fleet's admin. The
worker that takes an admin request loads the model itself first, so a model that cannot load is refused before
anything changes; then it writes the new generation (compare-and-set: a change may name the generation it was
based on, `generation` in a policy or in `parameters`; a stale one gets 409), and answers once every live worker
has applied it or said why it cannot: which replicas serve it and which lag.
"""

import asyncio
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import bentoml

from services.dataplane.desired import (
    DesiredState,
    Served,
    StaleGeneration,
    UnreadableState,
    WorkerReport,
    fleet_report,
    replica_name,
)
from services.dataplane.models import InferenceModel, ModelRepository
from services.dataplane.traffic import Policy
from services.errors import BadRequest, Conflict, Forbidden, NotFound, TimedOut, Unauthorized
from services.ops.metrics import DESIRED_GENERATION, SERVED_GENERATION

log = logging.getLogger(__name__)

FOLLOW_EVERY_S = 0.2  # how often a worker reads the fleet's state
REPORT_EVERY_S = 1.0  # how often a worker says it is alive and what it serves, changed or not
RETRY_S = 10.0  # how long a worker waits before trying again a generation it could not apply


def stored_tag(name: str, version: str | None) -> str:
    """The store's tag for `name` at `version` (the latest by default); 404 for a name or version it lacks."""
    try:
        return str(bentoml.models.get(f"{name}:{version or 'latest'}").tag)
    except bentoml.exceptions.NotFound:
        if version and any(m.tag.name == name for m in bentoml.models.list()):
            raise NotFound(f"the store has no version {version!r} of {name}") from None
        raise NotFound(f"the store has no model named {name!r}") from None
    except bentoml.exceptions.BentoMLException as exc:  # not a name the store could hold
        raise BadRequest(f"{name!r} is not a model name: {exc}") from None


class RepositoryAdmin:
    """One worker's side of the extension: it changes what the fleet serves, and follows the fleet's state."""

    def __init__(
        self,
        repository: ModelRepository,
        state: DesiredState,
        open_model: Callable[[str], list[InferenceModel]],
        workers: int,
        timeout_s: float,
        families: Collection[str] = (),
    ):
        self.repository, self.state, self.open_model = repository, state, open_model
        self.workers, self.timeout_s = workers, timeout_s  # this replica's workers
        self.families = frozenset(families)  # model names a family route runs: replaced, never unloaded
        self.replica = replica_name()
        self.applied = 0  # the generation this worker serves (0: its start, none applied yet)
        self.desired = 0  # the newest generation read
        self.refused: str | None = None  # why `desired` cannot be applied here (the last good state stays)
        self.unreadable: str | None = None  # why the document cannot be read (the last good state stays)
        self._refused_at = (0, 0.0)  # the generation refused and when, to try it again after RETRY_S
        self._reported_at = 0.0
        self._changing = asyncio.Lock()
        self._follower: asyncio.Task | None = None  # held: the loop keeps only a weak reference to a task

    def caught_up(self) -> bool:
        """Whether this worker serves the fleet's state: it applied the generation in force (or, with a document
        it cannot read, it keeps its start) and refuses none."""
        return (self.applied > 0 or self.unreadable is not None) and self.refused is None

    def progress(self) -> dict[str, Any]:
        """What /readyz says of the fleet's state here."""
        return {
            "replica": self.replica,
            "applied": self.applied,
            "desired": self.desired,
            "problem": self.unreadable or self.refused,
        }

    def planned(self, name: str) -> bool:
        """Whether the fleet's state lists a version of `name` (False while it cannot be read)."""
        try:
            return any(tag.split(":")[0] == name for tag in self.state.read().tags)
        except UnreadableState:
            return False

    def start_following(self) -> None:
        self._follower = asyncio.get_running_loop().create_task(self._follow(), name="repository-follower")

    async def load(self, name: str, version: str | None = None, based_on: int | None = None) -> dict[str, Any]:
        """Serve `version` of `name` (default: the store's latest) alone, ending its policy: the versions served
        and the fleet's progress."""
        tag = stored_tag(name, version)
        async with self._changing:
            self._check_base(based_on)
            retired = [t for t in self.repository.stored() if t.split(":")[0] == name and t != tag]
            await self._serve([tag])

            def edit(served: Served) -> None:
                served.tags = [*(t for t in served.tags if t not in (*retired, tag) and t.split(":")[0] != name), tag]
                served.policies.pop(name, None)

            generation = self.state.change(edit, based_on)
            await self._apply()
        fleet = await self._followed(generation)
        return {"name": name, "versions": list(self.repository.versions[name]), "fleet": fleet}

    async def set_traffic(self, name: str, policy: Policy, based_on: int | None = None) -> dict[str, Any]:
        """Put `policy` in force for `name`, serving its versions first (other served versions stay)."""
        try:
            tags = [stored_tag(name, version) for version in sorted(policy.versions)]
        except NotFound as unknown:
            raise BadRequest(f"the policy names a version the store lacks: {unknown}") from None
        async with self._changing:
            self._check_base(based_on)
            await self._serve(tags)

            def edit(served: Served) -> None:
                served.tags = [*served.tags, *(t for t in tags if t not in served.tags)]
                served.policies[name] = policy.to_record()

            generation = self.state.change(edit, based_on)
            await self._apply()
        fleet = await self._followed(generation)
        return {**self.traffic(name), "fleet": fleet}

    def traffic(self, name: str) -> dict[str, Any]:
        """The policy in force for `name`: its record, or the default (the latest served version takes all), and
        the generation of the fleet's state it is part of."""
        versions = {m.version: m for m in self.repository.models() if m.model == name}
        served = sorted(versions.values(), key=lambda m: m.created)
        if not served:
            raise NotFound(f"no version of {name!r} is served; served: {sorted(self.repository.versions)}")
        policy = self.repository.policies.get(name)
        record = policy.to_record() if policy else {"split": {served[-1].version: 100.0}}
        return {"name": name, **record, "served": [m.version for m in served], "generation": self.applied}

    async def unload(self, name: str, based_on: int | None = None) -> dict[str, Any]:
        """Retire every version of `name`, each after its requests in flight: the fleet's progress."""
        async with self._changing:
            self._check_base(based_on)
            served = [t for t in self.repository.stored() if t.split(":")[0] == name]
            if not served:
                raise NotFound(f"no stored model named {name!r} is served; served: {sorted(self.repository.versions)}")
            if name in self.families:
                raise Conflict(f"{name} serves a family route and its pipeline: load another version instead")

            def edit(state: Served) -> None:
                state.tags = [t for t in state.tags if t.split(":")[0] != name]
                state.policies.pop(name, None)

            generation = self.state.change(edit, based_on)
            await self._apply()
        return await self._followed(generation)

    def index(self, ready_only: bool) -> list[dict[str, str]]:
        """Every stored model version and pipeline: READY where served, else UNAVAILABLE and why."""
        served = self.repository.stored()
        entries = [
            {"name": m.name, "version": m.version, "state": "READY"}
            for m in self.repository.models()
            if m.name != m.model and m.ready
        ]
        for stored in bentoml.models.list():
            tag = str(stored.tag)
            ready = tag in served and all(m.ready for m in served[tag])
            if ready or not ready_only:
                entry = {"name": stored.tag.name, "version": stored.tag.version, "state": "READY"}
                entries.append(entry if ready else {**entry, "state": "UNAVAILABLE", "reason": "not loaded"})
        return sorted(entries, key=lambda e: (e["name"], e["version"]))

    def _check_base(self, based_on: int | None) -> None:
        """Refuse a stale change before loading anything (the lock in `change` has the last word)."""
        if based_on is None:
            return
        try:
            current = self.state.read().generation
        except UnreadableState:
            return  # `change` says so
        if based_on != current:
            raise StaleGeneration(based_on, current)

    async def _serve(self, tags: Sequence[str]) -> None:
        """Load the tags not served yet (all of them, or none: a version that cannot load changes nothing)."""
        for model in await self._open_all([tag for tag in tags if tag not in self.repository.stored()]):
            self.repository.add(model)

    async def _open(self, tag: str) -> list[InferenceModel]:
        """`tag` loaded and warmed up in a thread, so that this worker keeps answering meanwhile."""
        try:
            return await asyncio.to_thread(self.open_model, tag)
        except Exception as exc:
            raise BadRequest(f"{tag} cannot be loaded: {exc}") from None

    async def _apply(self) -> None:
        """Make this worker serve what the fleet's state says, whole or not at all: load what is listed, put the
        policies in force, retire what is not listed (after its requests in flight), and report the generation.
        A generation it cannot apply (a version it cannot load, a policy it cannot read) leaves the last good
        state in force, and the reason in its report."""
        served = self._newer()
        if served is None:
            return
        try:
            policies = {name: Policy.parse(record) for name, record in served.policies.items()}
            opened = await self._open_all([tag for tag in served.tags if tag not in self.repository.stored()])
        except BadRequest as refused:
            self._refuse(served.generation, str(refused))
            return
        # New versions and the policies in one step (no await between): no request here meets a candidate
        # as the latest version before its policy is in force.
        for model in opened:
            self.repository.add(model)
        self.repository.policies = policies
        retired = [m for t, models in self.repository.stored().items() if t not in served.tags for m in models]
        for model in retired:
            self.repository.remove(model)  # new requests no longer find it
        self.applied, self.refused = served.generation, None
        self._report()
        for model in retired:
            if not await model.drained(self.timeout_s):
                log.warning("%s %s: closed with %d requests in flight", model.name, model.version, model.in_flight)
        for runner in {id(m.runner): m.runner for m in retired}.values():
            runner.close()
            log.info("%s unloaded", runner.tag)

    def _newer(self) -> Served | None:
        """The fleet's state when it is newer than what this worker serves (and not a generation refused a moment
        ago); None when there is nothing to apply, or the document cannot be read."""
        try:
            served = self.state.read()
        except UnreadableState as unreadable:
            self._say_unreadable(str(unreadable))
            return None
        if self.unreadable:
            log.warning("%s: the fleet's state %s can be read again", self.replica, self.state.file)
            self.unreadable = None
        self.desired = max(self.desired, served.generation)
        generation, refused_at = self._refused_at
        if generation == served.generation and time.monotonic() - refused_at < RETRY_S:
            return None
        return served if served.generation > self.applied else None

    async def _open_all(self, tags: Sequence[str]) -> list[InferenceModel]:
        """Every tag's models, or none (BadRequest naming the first that cannot load; the others closed)."""
        opened: list[InferenceModel] = []
        for tag in tags:
            try:
                opened += await self._open(tag)
            except BadRequest:
                for runner in {id(m.runner): m.runner for m in opened}.values():
                    runner.close()
                raise
        return opened

    def _refuse(self, generation: int, why: str) -> None:
        if why != self.refused:  # one line a reason, not one every poll
            log.error(
                "%s: generation %d of the fleet's state %s not applied; generation %d stays in force: %s",
                self.replica,
                generation,
                self.state.file,
                self.applied,
                why,
            )
        self.refused, self._refused_at = why, (generation, time.monotonic())
        self._report()

    def _say_unreadable(self, why: str) -> None:
        if why != self.unreadable:
            log.error(
                "%s: the fleet's state %s %s; generation %d stays in force",
                self.replica,
                self.state.file,
                why,
                self.applied,
            )
        self.unreadable = why
        self._report()

    def _report(self) -> None:
        SERVED_GENERATION.set(self.applied)
        DESIRED_GENERATION.set(self.desired)
        self._reported_at = time.monotonic()
        report = WorkerReport(self.replica, os.getpid(), self.applied, self.desired, self.unreadable or self.refused)
        try:
            self.state.report(report)
        except OSError as exc:  # the volume gone for a while: the next report tries again
            log.debug("%s: cannot report to %s: %s", self.replica, self.state.workers, exc)

    async def _followed(self, generation: int) -> dict[str, Any]:
        """Wait until this replica's workers have applied `generation`, and every other live worker has applied it
        or said why it cannot; which replicas applied it and which lag."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            reports = self.state.reports()
            here = [r for r in reports if r.replica == self.replica and r.applied >= generation]
            settled = all(r.applied >= generation or (r.desired >= generation and r.problem) for r in reports)
            if len(here) >= self.workers and settled:
                return fleet_report(reports, generation)
            if time.monotonic() > deadline:
                if len(here) < self.workers:
                    raise TimedOut(
                        f"applied here; {len(here)} of {self.workers} workers followed in {self.timeout_s:.0f} s"
                    )
                return fleet_report(reports, generation)
            await asyncio.sleep(FOLLOW_EVERY_S / 4)

    async def _follow(self) -> None:
        """Apply the fleet's changes (another worker's, another replica's), and say what this worker serves."""
        while True:
            try:
                async with self._changing:
                    await self._apply()
                if time.monotonic() - self._reported_at >= REPORT_EVERY_S:
                    self._report()
            except Exception:
                log.exception("following the fleet's state failed; retrying")
            await asyncio.sleep(FOLLOW_EVERY_S)


def check_admin_token(token: str, presented: str | None) -> None:
    """401 without a bearer token, 403 with another one than `token` (either protocol)."""
    if presented is None:
        raise Unauthorized("the model repository needs `Authorization: Bearer <MODELROAD_ADMIN_TOKEN>`")
    # Digests of equal length, compared in constant time: the answer's timing tells nothing of the token.
    if not hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), hashlib.sha256(token.encode()).digest()):
        raise Forbidden("the bearer token is not the admin token")


def load_parameters(parameters: dict[str, Any]) -> tuple[str | None, int | None]:
    """The version a load request names (None: the latest) and the generation it is based on; else refused."""
    version = parameters.get("version")
    if set(parameters) - {"version", "generation"} or not isinstance(version, str | None):
        raise BadRequest(
            "load takes the parameters `version` (a string; default: the latest) and `generation` (an integer); "
            f"got {parameters}"
        )
    return version, based_on(parameters)


def based_on(record: dict[str, Any]) -> int | None:
    """The `generation` a change names (None: the latest); 400 for anything but a whole number."""
    generation = record.get("generation")
    if generation is None:
        return None
    if isinstance(generation, bool) or not isinstance(generation, int):
        raise BadRequest(f"generation must be a whole number, a generation of the fleet's state; got {generation!r}")
    return generation
