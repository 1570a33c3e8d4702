"""Pure rules of the provisioner: the tenant state machine, the provisioning steps and the retry policy.

No I/O here; handlers combine these rules with the unit of work. Everything is table-tested in
``tests/unit/test_provisioner_domain.py``.

The state machine (DESIGN §3) is the single table :data:`TRANSITIONS`: ``(state, trigger) → state``.
Every state change in the provisioner goes through :func:`transition` (or :func:`decide`, which adds the
step prerequisites); a pair that is not in the table is an :class:`IllegalTransition` — handlers record
it as an error lifecycle event and leave the tenant as it was, never overwrite.

Self-loops in the table are deliberate and documented: a duplicate or late report that changes nothing
(``SecretsReady`` re-emitted by a retry, a second ``TenantDegraded``) is legal and idempotent; commands
whose effect is completed by another service's report (suspend, resume) are approved without a state
change and the report moves the tenant.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    REQUESTED = "requested"  # the command exists, the tenant row does not yet
    PENDING = "pending"
    PROVISIONING = "provisioning"
    ACTIVE = "active"
    DEGRADED = "degraded"
    UPGRADING = "upgrading"
    SUSPENDED = "suspended"
    FAILED = "failed"
    DECOMMISSIONING = "decommissioning"
    DECOMMISSIONED = "decommissioned"  # soft-deleted (deleted_at set), kept for the retention window
    PURGED = "purged"  # rows hard-deleted; only the lifecycle history remains


class Trigger(StrEnum):
    ACCEPT = "accept"  # TenantRequested passed validation
    SECRETS_READY = "secrets_ready"  # SecretsReady
    CHART_INSTALLED = "chart_installed"  # ChartApplied operation=install
    ACTIVATED = "activated"  # TenantActivated (first adapter heartbeat)
    STEP_FAILED = "step_failed"  # SecretsFailed / ChartFailed(install) with retries left
    GIVE_UP = "give_up"  # ... with no retries left
    RETRY = "retry"  # TenantRetryRequested
    DEGRADED = "degraded"  # TenantDegraded
    RECOVERED = "recovered"  # TenantRecovered
    NAMESPACE_MISSING = "namespace_missing"  # NamespaceMissing (helm-runner)
    UPGRADE = "upgrade"  # TenantUpgradeRequested passed the compatibility gate
    UPGRADE_APPLIED = "upgrade_applied"  # ChartApplied operation=upgrade
    UPGRADE_FAILED = "upgrade_failed"  # ChartFailed operation=upgrade (rolled back)
    ROLLED_BACK = "rolled_back"  # ChartApplied operation=rollback
    ROLLBACK_FAILED = "rollback_failed"  # ChartFailed operation=rollback
    SUSPEND = "suspend"  # TenantSuspendRequested (approval; the helm-runner scales to zero)
    SUSPEND_APPLIED = "suspend_applied"  # ChartApplied operation=suspend
    SUSPEND_FAILED = "suspend_failed"  # ChartFailed operation=suspend
    RESUME = "resume"  # TenantResumeRequested (approval; the helm-runner scales back)
    RESUME_APPLIED = "resume_applied"  # ChartApplied operation=resume
    RESUME_FAILED = "resume_failed"  # ChartFailed operation=resume
    DECOMMISSION = "decommission"  # TenantDecommissionRequested (grace period starts)
    CANCEL_DECOMMISSION = "cancel_decommission"  # back to the state before decommissioning
    DECOMMISSION_DUE = "decommission_due"  # grace timer fired → DecommissionDue
    CHART_REMOVED = "chart_removed"  # ChartRemoved
    UNINSTALL_FAILED = "uninstall_failed"  # ChartFailed operation=uninstall
    SECRETS_REMOVED = "secrets_removed"  # SecretsRemoved
    SOFT_DELETE = "soft_delete"  # chart and secrets both removed
    PURGE = "purge"  # retention timer fired


S, T = State, Trigger

#: "Whatever the tenant was before decommissioning" — the one target resolved at run time.
PREVIOUS = "<previous>"

#: Every state a tenant can be decommissioned from (DESIGN: ``* → decommissioning``).
LIVE = (S.PENDING, S.PROVISIONING, S.ACTIVE, S.DEGRADED, S.UPGRADING, S.SUSPENDED, S.FAILED)

# (from, trigger, to). One line per legal pair; nothing else is legal.
_ROWS: list[tuple[State, Trigger, State | str]] = [
    # onboarding: requested → pending → provisioning → active
    (S.REQUESTED, T.ACCEPT, S.PENDING),
    (S.PENDING, T.SECRETS_READY, S.PROVISIONING),
    (S.PROVISIONING, T.SECRETS_READY, S.PROVISIONING),  # re-emitted by a retry / redelivered
    (S.PROVISIONING, T.CHART_INSTALLED, S.PROVISIONING),  # installed and ready; waits for a heartbeat
    (S.PROVISIONING, T.ACTIVATED, S.ACTIVE),
    (S.ACTIVE, T.ACTIVATED, S.ACTIVE),  # duplicate report
    # failures during onboarding: bounded automatic retries, then failed; :retry resumes
    (S.PENDING, T.STEP_FAILED, S.PENDING),
    (S.PROVISIONING, T.STEP_FAILED, S.PROVISIONING),
    (S.PENDING, T.GIVE_UP, S.FAILED),
    (S.PROVISIONING, T.GIVE_UP, S.FAILED),
    (S.FAILED, T.RETRY, S.PENDING),  # the re-emitted step result moves it on from there
    (S.PENDING, T.RETRY, S.PENDING),  # "retry now" while an automatic retry waits
    (S.PROVISIONING, T.RETRY, S.PROVISIONING),
    (S.PENDING, T.NAMESPACE_MISSING, S.PENDING),  # a step failure: the secrets step is redone
    (S.PROVISIONING, T.NAMESPACE_MISSING, S.PROVISIONING),
    (S.FAILED, T.CHART_REMOVED, S.FAILED),  # cleanup after a failed install
    (S.PENDING, T.CHART_REMOVED, S.PENDING),
    (S.PROVISIONING, T.CHART_REMOVED, S.PROVISIONING),
    # health: active ⇄ degraded
    (S.ACTIVE, T.DEGRADED, S.DEGRADED),
    (S.DEGRADED, T.DEGRADED, S.DEGRADED),  # reason/health updated
    (S.DEGRADED, T.RECOVERED, S.ACTIVE),
    (S.ACTIVE, T.RECOVERED, S.ACTIVE),  # duplicate report
    (S.ACTIVE, T.NAMESPACE_MISSING, S.DEGRADED),
    (S.DEGRADED, T.NAMESPACE_MISSING, S.DEGRADED),
    # health reports while another operation owns the tenant are recorded, not acted on
    (S.UPGRADING, T.DEGRADED, S.UPGRADING),
    (S.SUSPENDED, T.DEGRADED, S.SUSPENDED),
    (S.DECOMMISSIONING, T.DEGRADED, S.DECOMMISSIONING),
    (S.DECOMMISSIONING, T.NAMESPACE_MISSING, S.DECOMMISSIONING),
    # upgrade: active → upgrading → active | degraded
    (S.ACTIVE, T.UPGRADE, S.UPGRADING),
    (S.UPGRADING, T.UPGRADE_APPLIED, S.ACTIVE),
    (S.UPGRADING, T.UPGRADE_FAILED, S.DEGRADED),
    (S.UPGRADING, T.ROLLED_BACK, S.DEGRADED),
    (S.DEGRADED, T.ROLLED_BACK, S.DEGRADED),
    (S.UPGRADING, T.ROLLBACK_FAILED, S.DEGRADED),
    (S.DEGRADED, T.ROLLBACK_FAILED, S.DEGRADED),
    # suspend / resume: active|degraded → suspended → active
    (S.ACTIVE, T.SUSPEND, S.ACTIVE),
    (S.DEGRADED, T.SUSPEND, S.DEGRADED),
    (S.ACTIVE, T.SUSPEND_APPLIED, S.SUSPENDED),
    (S.DEGRADED, T.SUSPEND_APPLIED, S.SUSPENDED),
    (S.SUSPENDED, T.SUSPEND_APPLIED, S.SUSPENDED),  # duplicate report
    (S.ACTIVE, T.SUSPEND_FAILED, S.DEGRADED),  # partly scaled down: say so
    (S.DEGRADED, T.SUSPEND_FAILED, S.DEGRADED),
    (S.SUSPENDED, T.RESUME, S.SUSPENDED),
    (S.SUSPENDED, T.RESUME_APPLIED, S.ACTIVE),
    (S.ACTIVE, T.RESUME_APPLIED, S.ACTIVE),  # duplicate report
    (S.SUSPENDED, T.RESUME_FAILED, S.SUSPENDED),
    # decommission: * → decommissioning → decommissioned → purged
    *[(s, T.DECOMMISSION, S.DECOMMISSIONING) for s in LIVE],
    (S.DECOMMISSIONING, T.CANCEL_DECOMMISSION, PREVIOUS),
    (S.DECOMMISSIONING, T.DECOMMISSION_DUE, S.DECOMMISSIONING),
    (S.DECOMMISSIONING, T.RETRY, S.DECOMMISSIONING),  # re-request the uninstall after a failure
    (S.DECOMMISSIONING, T.CHART_REMOVED, S.DECOMMISSIONING),
    (S.DECOMMISSIONING, T.UNINSTALL_FAILED, S.DECOMMISSIONING),
    (S.DECOMMISSIONING, T.SECRETS_REMOVED, S.DECOMMISSIONING),
    (S.DECOMMISSIONING, T.SOFT_DELETE, S.DECOMMISSIONED),
    (S.DECOMMISSIONED, T.PURGE, S.PURGED),
]


def _table(rows: Iterable[tuple[State, Trigger, State | str]]) -> dict[tuple[State, Trigger], State | str]:
    table: dict[tuple[State, Trigger], State | str] = {}
    for src, trigger, dst in rows:
        if (src, trigger) in table:
            raise ValueError(f"duplicate transition {src} --{trigger}-->")
        table[(src, trigger)] = dst
    return table


TRANSITIONS: dict[tuple[State, Trigger], State | str] = _table(_ROWS)


@dataclass(frozen=True)
class IllegalTransition:
    """``trigger`` is not allowed in ``state``; recorded as an ``IllegalTransition`` lifecycle event."""

    state: str
    trigger: str
    reason: str

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class Defer:
    """The report is ahead of what the tenant has recorded (an earlier step's result is still queued):
    handle it again shortly instead of calling it illegal."""

    waiting_for: str


def transition(state: str, trigger: str, *, previous: str | None = None) -> State | IllegalTransition:
    """The new state for ``trigger`` in ``state``, straight from the table."""
    try:
        key = (State(state), Trigger(trigger))
    except ValueError:
        return IllegalTransition(state, trigger, f"unknown state {state!r} or trigger {trigger!r}")
    target = TRANSITIONS.get(key)
    if target is None:
        return IllegalTransition(state, trigger, f"{trigger} is not allowed while the tenant is {state}")
    if target == PREVIOUS:
        if previous is None or previous not in LIVE:
            return IllegalTransition(state, trigger, f"{trigger} only works during the grace period: "
                                                     f"no state to return to (recorded: {previous!r})")
        return State(previous)
    return State(target)


# ---------------------------------------------------------------------------------------------------
# Provisioning steps
# ---------------------------------------------------------------------------------------------------


class Step(StrEnum):
    VALIDATE = "validate"  # the provisioner: schema, slug, chart version
    SECRETS = "secrets"  # the secrets service: namespace + Secrets (trigger TenantAccepted)
    CHART = "chart"  # the helm-runner: helm install + readiness (trigger SecretsReady)
    ACTIVATE = "activate"  # the heartbeat service: first adapter heartbeat (trigger ChartApplied)
    # decommission progress
    DECOMMISSION_DUE = "decommission_due"  # grace period over, uninstall requested
    UNINSTALL = "uninstall"  # the helm-runner: helm uninstall (trigger DecommissionDue)
    CHART_REMOVED = "chart_removed"
    SECRETS_REMOVED = "secrets_removed"


ONBOARDING: tuple[Step, ...] = (Step.VALIDATE, Step.SECRETS, Step.CHART, Step.ACTIVATE)

#: The event whose (re-)emission starts a step: what a retry sends again.
STEP_TRIGGER: dict[Step, str] = {
    Step.SECRETS: "TenantAccepted",
    Step.CHART: "SecretsReady",
    Step.UNINSTALL: "DecommissionDue",
}

#: A step result is only meaningful once the step before it completed.
PREREQUISITE: dict[Trigger, Step] = {
    Trigger.CHART_INSTALLED: Step.SECRETS,
    Trigger.ACTIVATED: Step.CHART,
}


def next_action(state: str, completed: Sequence[str]) -> Step | None:
    """The step to (re-)run for a tenant in ``state`` with ``completed`` steps, or ``None`` when there is
    nothing to resend (still validating, waiting for the adapter, or nothing in flight)."""
    done = set(completed)
    if state in (S.PENDING, S.PROVISIONING, S.FAILED):
        for step in (Step.SECRETS, Step.CHART):
            if step not in done:
                return step
        return None
    if state == S.DECOMMISSIONING and Step.DECOMMISSION_DUE in done and Step.CHART_REMOVED not in done:
        return Step.UNINSTALL
    return None


def decide(state: str, trigger: str, completed: Sequence[str], *,
           previous: str | None = None) -> State | IllegalTransition | Defer:
    """:func:`transition` plus step order: a result that arrives before the result of the step it
    depends on (two consumers, no order between them) is deferred, not refused."""
    need = PREREQUISITE.get(Trigger(trigger)) if trigger in set(Trigger) else None
    if need is not None and (state == S.PENDING or (state == S.PROVISIONING and need not in completed)):
        return Defer(waiting_for=need)
    return transition(state, trigger, previous=previous)


def complete(completed: Sequence[str], step: str) -> list[str]:
    """``completed`` with ``step`` added once (order kept)."""
    return [*completed, step] if step not in completed else list(completed)


def undo(completed: Sequence[str], *steps: str) -> list[str]:
    """``completed`` without ``steps`` (e.g. the namespace was deleted: secrets must be redone)."""
    return [s for s in completed if s not in steps]


# ---------------------------------------------------------------------------------------------------
# Retry policy
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Automatic retries of a failed step: ``max_retries`` more attempts, exponential backoff."""

    max_retries: int = 3
    base_delay_s: float = 30.0
    max_delay_s: float = 900.0

    def delay(self, attempt: int) -> float:
        """Backoff before retry number ``attempt`` (1-based): base·2^(n-1), capped. Deterministic so a
        replayed decision schedules the same timer; timers fire from one replica, so no herd to jitter."""
        return min(self.max_delay_s, self.base_delay_s * 2 ** max(0, attempt - 1))


@dataclass(frozen=True)
class Retry:
    attempt: int
    delay_s: float


@dataclass(frozen=True)
class GiveUp:
    attempts: int


def after_failure(failures: int, policy: RetryPolicy) -> Retry | GiveUp:
    """What to do after the ``failures``-th consecutive failure of a step."""
    if failures <= policy.max_retries:
        return Retry(attempt=failures, delay_s=policy.delay(failures))
    return GiveUp(attempts=failures)


# ---------------------------------------------------------------------------------------------------
# Reports → triggers
# ---------------------------------------------------------------------------------------------------

CHART_APPLIED: dict[str, Trigger] = {
    "install": T.CHART_INSTALLED,
    "upgrade": T.UPGRADE_APPLIED,
    "suspend": T.SUSPEND_APPLIED,
    "resume": T.RESUME_APPLIED,
    "rollback": T.ROLLED_BACK,
}

CHART_FAILED: dict[str, Trigger] = {
    "install": T.STEP_FAILED,  # or GIVE_UP, decided by the retry policy
    "upgrade": T.UPGRADE_FAILED,
    "suspend": T.SUSPEND_FAILED,
    "resume": T.RESUME_FAILED,
    "rollback": T.ROLLBACK_FAILED,
    "uninstall": T.UNINSTALL_FAILED,
}


def namespace_for(slug: str) -> str:
    return f"tenant-{slug}"
