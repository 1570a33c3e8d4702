"""Pure rules of the helm-runner: a reconciler in the style of Flux's helm-controller.

Every Helm step is one pass of **observe → classify → decide → act → record**:

* :func:`classify` turns the release history (and whether one of our operations is already being
  waited for) into one of a closed set of observed states;
* :func:`next_action` maps (observed, desired) to exactly one action — the table below, tested row
  by row in ``tests/unit/test_helm_runner_domain.py``;
* the service layer runs that one action, observes again (or takes the observation from the write's
  own result, :func:`after_write`), and stops at an action that needs no Helm write (``Watch``,
  ``Wait``, ``Defer``, ``Done``). Every crash point is therefore resumable: a
  redelivered message observes what the crashed attempt left behind and continues from there.

``next_action`` (handlers and the watcher's failure path)::

    observed \\ desired     Present(op, version, suspended)          Absent (uninstall)   Reverted(to, after)
    ---------------------  ---------------------------------------  -------------------  -------------------
    Waiting(same op)       Wait                                      Wait (if uninstall)  Defer
    Waiting(other op)      Defer (retry after it finishes)           Supersede            Defer
    NoRelease              Install                                   Done                 Done
    PendingInstall         RecoverPending                            Uninstall            RecoverPending
    PendingUpgrade         RecoverPending                            Uninstall            RecoverPending
    Uninstalling           Uninstall                                 Uninstall            Done
    Failed(no deployed)    Uninstall (then Install)                  Uninstall            Rollback(to)
    Failed(deployed)       Upgrade                                   Uninstall            Rollback(to)
    Deployed(matching)     Watch (record the readiness wait)         Uninstall            Done if rev==to or
    Deployed(other)        Upgrade                                   Uninstall              rev>after, else
                                                                                          Rollback(to)

Readiness is never waited for inside a handler: ``Watch`` records a ``release_operations`` row
(status ``waiting``, deadline from the profile) and the watcher decides with :func:`next_wait_step`:

    operation        observation                                   step
    ---------------  --------------------------------------------  ------------------------------------
    any but uninst.  every expected workload ready                 Succeed → ChartApplied
                     a workload failed / namespace gone            Fail(readiness) → failure path
                     deadline passed                               Fail(readiness-timeout) → failure path
                     otherwise                                     Keep
    uninstall        release present                               Act(Uninstall)
                     namespace present (not terminating)           Act(DeleteNamespace)
                     namespace gone                                Succeed → ChartRemoved
                     deadline passed                               Fail(namespace-deletion)
    failure path:
    install          release present                               Act(Uninstall / RecoverPending)
                     namespace present                             Act(DeleteNamespace)
                     namespace terminating (undo deadline left)    Keep
                     namespace gone                                Finish(undone=True)
    upgrade          release not back at the previous revision     Act(Rollback(prev) / RecoverPending)
                     back at it (or nothing to roll back)          Finish(rolled_back_to=prev)
    suspend/resume   release pending-*                             Act(RecoverPending)
                     otherwise                                     Finish
    uninstall        —                                             Finish
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from soctalk_common.compat import version_label

RELEASE = "soctalk-tenant"
CHART = "soctalk-tenant"

Operation = Literal["install", "upgrade", "suspend", "resume", "uninstall"]
OPERATIONS: tuple[str, ...] = ("install", "upgrade", "suspend", "resume", "uninstall")


def namespace_for(slug: str) -> str:
    """Seed 001: ``helm install soctalk-tenant -n tenant-<slug>``."""
    return f"tenant-{slug}"


def same_version(a: str | None, b: str | None) -> bool:
    """``1.1.0`` and ``v1.1.0`` are the same chart version."""
    if not a or not b:
        return False
    try:
        return version_label(a) == version_label(b)
    except ValueError:
        return a == b


# ---------------------------------------------------------------------------------------------------
# Observed release states (closed set)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoRelease:
    """No revision of the release exists."""


@dataclass(frozen=True)
class PendingInstall:
    revision: int


@dataclass(frozen=True)
class PendingUpgrade:
    """``pending-upgrade`` or ``pending-rollback``: a writer died mid-operation (or is still running)."""

    revision: int
    status: str = "pending-upgrade"


@dataclass(frozen=True)
class Uninstalling:
    revision: int


@dataclass(frozen=True)
class Deployed:
    revision: int
    chart_version: str
    suspended: bool = False
    previous: int | None = None  # the last deployed revision before this one (rollback target)


@dataclass(frozen=True)
class Failed:
    revision: int
    chart_version: str
    previous: int | None = None  # the last revision that was deployed, if any


@dataclass(frozen=True)
class Waiting:
    """One of our operations on the release is recorded and being watched."""

    operation: str
    chart_version: str
    failing: bool = False


ReleaseState = NoRelease | PendingInstall | PendingUpgrade | Uninstalling | Deployed | Failed
Observed = ReleaseState | Waiting


@dataclass(frozen=True)
class Revision:
    """One entry of ``helm history`` as the domain needs it."""

    revision: int
    status: str
    chart_version: str


_DEPLOYED = ("deployed", "superseded")


def classify(history: Sequence[Revision], *, suspended: bool = False) -> ReleaseState:
    """The state of a release from its history (oldest first); ``suspended`` is the value of the
    latest revision's ``suspended`` flag."""
    if not history:
        return NoRelease()
    ordered = sorted(history, key=lambda r: r.revision)
    last = ordered[-1]
    earlier = [r.revision for r in ordered[:-1] if r.status in _DEPLOYED]
    previous = earlier[-1] if earlier else None
    version = version_label_or_raw(last.chart_version)
    if last.status == "pending-install":
        return PendingInstall(last.revision)
    if last.status.startswith("pending-"):
        return PendingUpgrade(last.revision, last.status)
    if last.status == "uninstalling":
        return Uninstalling(last.revision)
    if last.status == "deployed":
        return Deployed(last.revision, version, suspended, previous)
    return Failed(last.revision, version, previous)  # failed, superseded-without-deployed, unknown


def version_label_or_raw(version: str) -> str:
    try:
        return version_label(version)
    except ValueError:
        return version


# ---------------------------------------------------------------------------------------------------
# Desired states
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Present:
    """The release should exist at ``chart_version`` with ``suspended``; ``operation`` names the step."""

    operation: str
    chart_version: str
    suspended: bool = False


@dataclass(frozen=True)
class Absent:
    """The release should not exist (decommission, or undoing a failed install)."""

    operation: str = "uninstall"


@dataclass(frozen=True)
class Reverted:
    """A failed upgrade: back at revision ``to``; any revision newer than ``after`` is the rollback."""

    to: int
    after: int


Desired = Present | Absent | Reverted


# ---------------------------------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Install:
    pass


@dataclass(frozen=True)
class Upgrade:
    pass


@dataclass(frozen=True)
class Rollback:
    revision: int


@dataclass(frozen=True)
class Uninstall:
    pass


@dataclass(frozen=True)
class RecoverPending:
    pass


@dataclass(frozen=True)
class Supersede:
    """Close the operations still being waited for: an uninstall replaces them."""


@dataclass(frozen=True)
class Watch:
    """The release matches: record the readiness wait for ``revision`` (no Helm write)."""

    revision: int
    previous: int | None = None


@dataclass(frozen=True)
class Wait:
    """The same operation is already recorded and watched: nothing to do."""


@dataclass(frozen=True)
class Defer:
    """Another operation owns the release: handle the message again later."""

    reason: str


@dataclass(frozen=True)
class Done:
    pass


Action = Install | Upgrade | Rollback | Uninstall | RecoverPending | Supersede | Watch | Wait | Defer | Done
WRITES = (Install, Upgrade, Rollback, Uninstall, RecoverPending)
TERMINAL = (Watch, Wait, Defer, Done)


def next_action(observed: Observed, desired: Desired) -> Action:
    """The one action that moves ``observed`` towards ``desired`` (the table in the module doc)."""
    if isinstance(desired, Absent):
        return _towards_absent(observed)
    if isinstance(desired, Reverted):
        return _towards_reverted(observed, desired)
    return _towards_present(observed, desired)


def after_write(observed: Observed, action: Action, desired: Desired, *, revision: int, status: str,
                chart_version: str) -> Observed | None:
    """What the release is after ``action`` succeeded with this result, when the result alone says so.

    An install or upgrade that Helm reports ``deployed`` leaves exactly one new revision on top of
    what was observed (the caller holds the tenant lease: no other writer), so the next observation
    is known without reading the history back. ``None``: observe again (any other write, or a result
    that is not ``deployed``)."""
    if status != "deployed" or not isinstance(desired, Present):
        return None
    version = version_label_or_raw(chart_version)
    if isinstance(action, Install) and isinstance(observed, NoRelease):
        return Deployed(revision, version, desired.suspended, None)
    if isinstance(action, Upgrade) and isinstance(observed, Deployed):
        return Deployed(revision, version, desired.suspended, observed.revision)
    if isinstance(action, Upgrade) and isinstance(observed, Failed):
        return Deployed(revision, version, desired.suspended, observed.previous)
    return None


def _towards_present(observed: Observed, desired: Present) -> Action:
    match observed:
        case Waiting(operation=op) if op == desired.operation:
            return Wait()
        case Waiting(operation=op):
            return Defer(f"a {op} of the release is still in progress")
        case PendingInstall() | PendingUpgrade():
            return RecoverPending()
        case Uninstalling():
            return Uninstall()
        case NoRelease():
            return Install()
        case Failed(previous=None):
            return Uninstall()
        case Failed():
            return Upgrade()
        case Deployed(revision=rev, chart_version=version, suspended=suspended, previous=previous):
            if same_version(version, desired.chart_version) and suspended == desired.suspended:
                return Watch(rev, previous)
            return Upgrade()
    raise TypeError(f"unknown observed state {observed!r}")


def _towards_absent(observed: Observed) -> Action:
    match observed:
        case Waiting(operation="uninstall"):
            return Wait()
        case Waiting():
            return Supersede()
        case NoRelease():
            return Done()
        case PendingInstall() | PendingUpgrade() | Uninstalling() | Failed() | Deployed():
            return Uninstall()
    raise TypeError(f"unknown observed state {observed!r}")


def _towards_reverted(observed: Observed, desired: Reverted) -> Action:
    match observed:
        case Waiting(operation=op):
            return Defer(f"a {op} of the release is still in progress")
        case PendingInstall() | PendingUpgrade():
            return RecoverPending()
        case NoRelease() | Uninstalling():
            return Done()
        case Failed():
            return Rollback(desired.to)
        case Deployed(revision=rev):
            return Done() if rev == desired.to or rev > desired.after else Rollback(desired.to)
    raise TypeError(f"unknown observed state {observed!r}")


# ---------------------------------------------------------------------------------------------------
# Waiting for readiness (the watcher)
# ---------------------------------------------------------------------------------------------------

NamespaceState = Literal["present", "terminating", "gone"]

# Steps named in ChartFailed.step
STEP_VALUES = "values"
STEP_COMPATIBILITY = "compatibility"
STEP_CHART = "chart"
STEP_READINESS = "readiness"
STEP_TIMEOUT = "readiness-timeout"
STEP_NAMESPACE_DELETION = "namespace-deletion"


@dataclass(frozen=True)
class Failure:
    step: str
    reason: str

    def encode(self) -> str:
        """Stored in ``release_operations.reason``: ``"<step>: <reason>"``."""
        return f"{self.step}: {self.reason}"

    @classmethod
    def decode(cls, text: str | None) -> Failure | None:
        if not text:
            return None
        step, sep, reason = text.partition(": ")
        return cls(step, reason) if sep else cls("unknown", text)


@dataclass(frozen=True)
class OpView:
    """A ``release_operations`` row as the rules see it."""

    operation: str
    chart_version: str
    deadline: datetime
    revision: int | None = None
    previous_revision: int | None = None
    failure: Failure | None = None
    timeout_s: float | None = None  # for messages only


@dataclass(frozen=True)
class Workloads:
    """Readiness of the workloads the release is expected to run (names are ``Kind/name``)."""

    ready: tuple[str, ...] = ()
    waiting: tuple[tuple[str, str], ...] = ()  # (workload, why)
    failing: tuple[tuple[str, str], ...] = ()
    missing: tuple[str, ...] = ()

    @property
    def all_ready(self) -> bool:
        return not (self.waiting or self.failing or self.missing) and bool(self.ready)


def summarize(expected: Iterable[str], statuses: Iterable[tuple[str, bool, str]],
              failing: Iterable[tuple[str, str]] = ()) -> Workloads:
    """``expected`` workload names vs. a readiness snapshot of ``(name, ready, reason)`` plus the
    snapshot's failed workloads. Unexpected workloads in the namespace are ignored."""
    want = sorted(set(expected))
    seen = {name: (ready, reason) for name, ready, reason in statuses}
    failed = dict(failing)
    return Workloads(
        ready=tuple(n for n in want if n in seen and seen[n][0]),
        waiting=tuple((n, seen[n][1]) for n in want if n in seen and not seen[n][0] and n not in failed),
        failing=tuple((n, failed[n]) for n in want if n in failed),
        missing=tuple(n for n in want if n not in seen),
    )


@dataclass(frozen=True)
class Succeed:
    pass


@dataclass(frozen=True)
class Keep:
    why: str = ""


@dataclass(frozen=True)
class Fail:
    """Decide that the operation failed (recorded first, then the failure path runs)."""

    failure: Failure


@dataclass(frozen=True)
class DeleteNamespace:
    pass


@dataclass(frozen=True)
class Act:
    action: Uninstall | Rollback | RecoverPending | DeleteNamespace


@dataclass(frozen=True)
class Finish:
    """Report ``ChartFailed`` with the recorded failure."""

    undone: bool = False
    rolled_back_to: int | None = None
    note: str = ""


WaitStep = Succeed | Keep | Fail | Act | Finish


def next_wait_step(op: OpView, *, now: datetime, namespace: NamespaceState,
                   workloads: Workloads | None = None, release: ReleaseState | None = None) -> WaitStep:
    """What the watcher does next for one recorded operation (the second table in the module doc).

    ``workloads`` is needed while waiting for readiness; ``release`` for the uninstall wait and the
    failure path (the watcher observes only what the step needs).
    """
    if op.failure is not None:
        return _failure_path(op, now=now, namespace=namespace, release=release)
    if op.operation == "uninstall":
        if release is not None and not isinstance(release, NoRelease):
            return Act(Uninstall())
        if namespace == "gone":
            return Succeed()
        if now >= op.deadline:
            return Fail(Failure(STEP_NAMESPACE_DELETION, f"namespace still exists after "
                                                          f"{_seconds(op)}"))
        return Act(DeleteNamespace()) if namespace == "present" else Keep("namespace terminating")
    if namespace != "present":
        return Fail(Failure(STEP_READINESS, f"the tenant namespace is {namespace} while waiting for "
                                            "readiness"))
    view = workloads or Workloads()
    if view.failing:
        return Fail(Failure(STEP_READINESS, "; ".join(f"{n}: {why}" for n, why in view.failing)))
    if view.all_ready:
        return Succeed()
    if now >= op.deadline:
        late = [f"{n}: {why}" for n, why in view.waiting] + [f"{n}: not created" for n in view.missing]
        return Fail(Failure(STEP_TIMEOUT, f"not ready within {_seconds(op)}: " + ("; ".join(late) or
                                                                                   "no workloads found")))
    return Keep(f"{len(view.ready)} of {len(view.ready) + len(view.waiting) + len(view.missing)} ready")


def _failure_path(op: OpView, *, now: datetime, namespace: NamespaceState,
                  release: ReleaseState | None) -> WaitStep:
    state: ReleaseState = release if release is not None else NoRelease()
    if op.operation == "install":
        if not isinstance(state, NoRelease):
            action = next_action(state, Absent())
            assert isinstance(action, Uninstall)
            return Act(action)
        if namespace == "present":
            return Act(DeleteNamespace())
        if namespace == "terminating":
            if now >= op.deadline:
                return Finish(undone=False, note="the namespace is still terminating")
            return Keep("namespace terminating")
        return Finish(undone=True)
    if op.operation == "upgrade" and op.previous_revision is not None:
        after = op.revision if op.revision is not None else op.previous_revision
        action = next_action(state, Reverted(to=op.previous_revision, after=after))
        if isinstance(action, Rollback | RecoverPending):
            return Act(action)
        return Finish(rolled_back_to=op.previous_revision if isinstance(state, Deployed) else None)
    pending = isinstance(state, PendingInstall | PendingUpgrade)
    if op.operation in ("suspend", "resume", "upgrade") and pending:
        return Act(RecoverPending())
    return Finish()


def _seconds(op: OpView) -> str:
    return f"{op.timeout_s:g}s" if op.timeout_s is not None else "the deadline"


# ---------------------------------------------------------------------------------------------------
# Failure policy for Helm errors in a handler
# ---------------------------------------------------------------------------------------------------


def gives_up(*, permanent: bool, attempt: int, max_deliver: int) -> bool:
    """Report a failure now (instead of letting the runtime redeliver): permanent errors at once,
    temporary ones from the next-to-last delivery on (one delivery kept for recording the failure)."""
    return permanent or attempt >= max_deliver - 1


# ---------------------------------------------------------------------------------------------------
# Edge ports (wazuhIngress.mode = edge-haproxy)
# ---------------------------------------------------------------------------------------------------


class NoFreeEdgePorts(Exception):
    pass


def pick_edge_ports(used: Iterable[Mapping[str, int]], *, base: int, limit: int) -> dict[str, int]:
    """The lowest free (events, enrollment) pair ``(base + 2k, base + 2k + 1)`` below ``limit``."""
    taken: set[int] = set()
    for pair in used:
        for value in pair.values():
            if isinstance(value, int):
                taken.add(value)
    port = base
    while port + 1 < limit:
        if port not in taken and port + 1 not in taken:
            return {"events": port, "enrollment": port + 1}
        port += 2
    raise NoFreeEdgePorts(f"no free edge port pair between {base} and {limit}")


# ---------------------------------------------------------------------------------------------------
# What a ReleaseOperation tells about the desired release (for drift checks)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Applied:
    """The last state the helm-runner applied successfully."""

    chart_version: str
    suspended: bool


def last_applied(ops: Sequence[tuple[str, str]]) -> Applied | None:
    """From succeeded ``(operation, chart_version)`` pairs, oldest first: the last one that leaves a
    release decides (an upgrade is only approved for a running tenant, so only ``suspend`` leaves it
    suspended)."""
    live = [(op, v) for op, v in ops if op in ("install", "upgrade", "suspend", "resume")]
    if not live:
        return None
    op, version = live[-1]
    return Applied(chart_version=version, suspended=op == "suspend")


@dataclass(frozen=True)
class DriftKey:
    object: str
    field: str
    source: str
    actual: str | None


@dataclass(frozen=True)
class DriftDelta:
    new: list[DriftKey] = field(default_factory=list)
    changed: bool = False
    resolved: bool = False


def drift_delta(previous: Iterable[DriftKey], current: Iterable[DriftKey]) -> DriftDelta:
    """Which drift items are new since the last recorded check (only those are announced)."""
    before, now = list(dict.fromkeys(previous)), list(dict.fromkeys(current))
    new = [k for k in now if k not in set(before)]
    return DriftDelta(new=new, changed=set(before) != set(now), resolved=bool(before) and not now)
