"""The helm-runner's reconciler rules: every row of the two tables in ``domain``'s docstring. No I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from soctalk_helm_runner import domain
from soctalk_helm_runner.domain import (
    Absent,
    Act,
    Applied,
    Defer,
    DeleteNamespace,
    Deployed,
    Done,
    DriftKey,
    Fail,
    Failed,
    Failure,
    Finish,
    Install,
    Keep,
    NoRelease,
    OpView,
    PendingInstall,
    PendingUpgrade,
    Present,
    RecoverPending,
    Reverted,
    Revision,
    Rollback,
    Succeed,
    Supersede,
    Uninstall,
    Uninstalling,
    Upgrade,
    Wait,
    Waiting,
    Watch,
    Workloads,
)

pytestmark = pytest.mark.unit

INSTALL = Present("install", "v1.1.0")
UPGRADE = Present("upgrade", "v1.2.0")
SUSPEND = Present("suspend", "v1.1.0", suspended=True)
RESUME = Present("resume", "v1.1.0", suspended=False)

NEXT_ACTION = [
    # (observed, desired, action)
    # --- present ---------------------------------------------------------------------------------
    (NoRelease(), INSTALL, Install()),
    (Waiting("install", "v1.1.0"), INSTALL, Wait()),
    (Waiting("install", "v1.1.0", failing=True), INSTALL, Wait()),
    (Waiting("upgrade", "v1.2.0"), INSTALL, Defer("a upgrade of the release is still in progress")),
    (Waiting("suspend", "v1.1.0"), RESUME, Defer("a suspend of the release is still in progress")),
    (PendingInstall(1), INSTALL, RecoverPending()),
    (PendingUpgrade(2), UPGRADE, RecoverPending()),
    (PendingUpgrade(3, "pending-rollback"), SUSPEND, RecoverPending()),
    (Uninstalling(1), INSTALL, Uninstall()),
    (Failed(1, "v1.1.0", previous=None), INSTALL, Uninstall()),
    (Failed(2, "v1.2.0", previous=1), UPGRADE, Upgrade()),
    (Deployed(1, "v1.1.0"), INSTALL, Watch(1, None)),  # idempotency: installed → only watched
    (Deployed(1, "1.1.0"), INSTALL, Watch(1, None)),  # chart versions compare with or without the v
    (Deployed(2, "v1.1.0", previous=1), INSTALL, Watch(2, 1)),
    (Deployed(1, "v1.0.0"), INSTALL, Upgrade()),
    (Deployed(1, "v1.1.0"), UPGRADE, Upgrade()),
    (Deployed(2, "v1.2.0", previous=1), UPGRADE, Watch(2, 1)),  # crash after the upgrade: watch, no repeat
    (Deployed(1, "v1.1.0", suspended=False), SUSPEND, Upgrade()),
    (Deployed(2, "v1.1.0", suspended=True, previous=1), SUSPEND, Watch(2, 1)),
    (Deployed(2, "v1.1.0", suspended=True, previous=1), RESUME, Upgrade()),
    (Deployed(3, "v1.1.0", suspended=False, previous=2), RESUME, Watch(3, 2)),
    # --- absent ----------------------------------------------------------------------------------
    (NoRelease(), Absent(), Done()),
    (Waiting("uninstall", "v1.1.0"), Absent(), Wait()),
    (Waiting("install", "v1.1.0"), Absent(), Supersede()),
    (PendingInstall(1), Absent(), Uninstall()),
    (PendingUpgrade(2), Absent(), Uninstall()),
    (Uninstalling(2), Absent(), Uninstall()),
    (Failed(1, "v1.1.0"), Absent(), Uninstall()),
    (Deployed(4, "v1.1.0", previous=3), Absent(), Uninstall()),
    # --- reverted (failed upgrade: back at revision 1; revision 2 was the upgrade) ---------------
    (Waiting("upgrade", "v1.2.0"), Reverted(to=1, after=2),
     Defer("a upgrade of the release is still in progress")),
    (PendingUpgrade(2), Reverted(to=1, after=2), RecoverPending()),
    (PendingInstall(2), Reverted(to=1, after=2), RecoverPending()),
    (NoRelease(), Reverted(to=1, after=2), Done()),
    (Uninstalling(2), Reverted(to=1, after=2), Done()),
    (Failed(2, "v1.2.0", previous=1), Reverted(to=1, after=2), Rollback(1)),
    (Deployed(2, "v1.2.0", previous=1), Reverted(to=1, after=2), Rollback(1)),
    (Deployed(3, "v1.1.0", previous=2), Reverted(to=1, after=2), Done()),  # the rollback happened
    (Deployed(1, "v1.1.0"), Reverted(to=1, after=1), Done()),  # the upgrade never wrote a revision
]


@pytest.mark.parametrize(("observed", "desired", "action"), NEXT_ACTION,
                         ids=[f"{type(o).__name__}-{type(d).__name__}-{type(a).__name__}"
                              for o, d, a in NEXT_ACTION])
def test_next_action_table(observed: domain.Observed, desired: domain.Desired, action: domain.Action) -> None:
    assert domain.next_action(observed, desired) == action


def test_every_observed_state_has_an_action_for_every_desired_kind() -> None:
    states = [NoRelease(), PendingInstall(1), PendingUpgrade(1), Uninstalling(1), Failed(1, "v1.1.0"),
              Failed(2, "v1.1.0", 1), Deployed(1, "v1.1.0"), Waiting("install", "v1.1.0")]
    for state in states:
        for desired in (INSTALL, UPGRADE, SUSPEND, RESUME, Absent(), Reverted(1, 1)):
            action = domain.next_action(state, desired)
            assert isinstance(action, (*domain.WRITES, *domain.TERMINAL, Supersede))


def test_actions_converge_without_a_loop() -> None:
    """Applying each write's expected effect reaches a terminal action within a few steps."""
    effect = {
        Install: lambda s: Deployed(1, "v1.1.0"),
        Uninstall: lambda s: NoRelease(),
        RecoverPending: lambda s: (NoRelease() if isinstance(s, PendingInstall)
                                   else Deployed(s.revision + 1, "v1.1.0", False, s.revision - 1)),
    }
    for start in (NoRelease(), PendingInstall(1), PendingUpgrade(2), Failed(1, "v1.1.0"), Uninstalling(1)):
        state: domain.Observed = start
        for _ in range(4):
            action = domain.next_action(state, INSTALL)
            if isinstance(action, domain.TERMINAL):
                break
            state = effect[type(action)](state)
        assert isinstance(action, Watch), start


CLASSIFY = [
    ([], False, NoRelease()),
    ([Revision(1, "deployed", "1.1.0")], False, Deployed(1, "v1.1.0", False, None)),
    ([Revision(1, "deployed", "1.1.0")], True, Deployed(1, "v1.1.0", True, None)),
    ([Revision(1, "superseded", "1.1.0"), Revision(2, "deployed", "1.2.0")], False,
     Deployed(2, "v1.2.0", False, 1)),
    ([Revision(1, "pending-install", "1.1.0")], False, PendingInstall(1)),
    ([Revision(1, "superseded", "1.1.0"), Revision(2, "pending-upgrade", "1.2.0")], False,
     PendingUpgrade(2, "pending-upgrade")),
    ([Revision(1, "superseded", "1.1.0"), Revision(2, "pending-rollback", "1.1.0")], False,
     PendingUpgrade(2, "pending-rollback")),
    ([Revision(1, "failed", "1.1.0")], False, Failed(1, "v1.1.0", None)),
    ([Revision(1, "deployed", "1.1.0"), Revision(2, "failed", "1.2.0")], False, Failed(2, "v1.2.0", 1)),
    ([Revision(2, "failed", "1.2.0"), Revision(1, "superseded", "1.1.0")], False, Failed(2, "v1.2.0", 1)),
    ([Revision(1, "uninstalling", "1.1.0")], False, Uninstalling(1)),
]


@pytest.mark.parametrize(("history", "suspended", "state"), CLASSIFY)
def test_classify_history(history: list[Revision], suspended: bool, state: domain.ReleaseState) -> None:
    assert domain.classify(history, suspended=suspended) == state


# --- waiting -----------------------------------------------------------------------------------------

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
LATER = NOW + timedelta(minutes=30)
EARLIER = NOW - timedelta(seconds=1)

READY = Workloads(ready=("Deployment/thehive", "StatefulSet/cassandra"))
SLOW = Workloads(ready=("Deployment/thehive",), waiting=(("StatefulSet/cassandra", "0/1 replicas ready"),))
BROKEN = Workloads(ready=("StatefulSet/cassandra",),
                   failing=(("Deployment/thehive", "ProgressDeadlineExceeded"),))
NOT_CREATED = Workloads(ready=("Deployment/thehive",), missing=("StatefulSet/cassandra",))


def op(operation: str = "install", *, deadline: datetime = LATER, failure: Failure | None = None,
       revision: int | None = 1, previous: int | None = None) -> OpView:
    return OpView(operation=operation, chart_version="v1.1.0", deadline=deadline, revision=revision,
                  previous_revision=previous, failure=failure, timeout_s=1800)


FAILING = Failure("readiness", "Deployment/thehive: ProgressDeadlineExceeded")

WAIT_STEPS = [
    # (name, op, observation, step)
    ("ready", op(), {"namespace": "present", "workloads": READY}, Succeed()),
    ("suspended-ready", op("suspend"), {"namespace": "present", "workloads": READY}, Succeed()),
    ("slow", op(), {"namespace": "present", "workloads": SLOW}, Keep("1 of 2 ready")),
    ("not-created", op(), {"namespace": "present", "workloads": NOT_CREATED}, Keep("1 of 2 ready")),
    ("no-snapshot", op(), {"namespace": "present"}, Keep("0 of 0 ready")),
    ("failing", op(), {"namespace": "present", "workloads": BROKEN},
     Fail(Failure("readiness", "Deployment/thehive: ProgressDeadlineExceeded"))),
    ("namespace-gone", op("upgrade"), {"namespace": "gone"},
     Fail(Failure("readiness", "the tenant namespace is gone while waiting for readiness"))),
    ("timed-out", op(deadline=EARLIER), {"namespace": "present", "workloads": SLOW},
     Fail(Failure("readiness-timeout", "not ready within 1800s: StatefulSet/cassandra: 0/1 replicas ready"))),
    ("timed-out-missing", op(deadline=EARLIER), {"namespace": "present", "workloads": NOT_CREATED},
     Fail(Failure("readiness-timeout", "not ready within 1800s: StatefulSet/cassandra: not created"))),
    ("ready-at-deadline-wins", op(deadline=EARLIER), {"namespace": "present", "workloads": READY}, Succeed()),
    # uninstall
    ("uninstall-release-left", op("uninstall"), {"namespace": "present", "release": Deployed(1, "v1.1.0")},
     Act(Uninstall())),
    ("uninstall-ns-present", op("uninstall"), {"namespace": "present", "release": NoRelease()},
     Act(DeleteNamespace())),
    ("uninstall-terminating", op("uninstall"), {"namespace": "terminating", "release": NoRelease()},
     Keep("namespace terminating")),
    ("uninstall-gone", op("uninstall"), {"namespace": "gone", "release": NoRelease()}, Succeed()),
    ("uninstall-timeout", op("uninstall", deadline=EARLIER),
     {"namespace": "terminating", "release": NoRelease()},
     Fail(Failure("namespace-deletion", "namespace still exists after 1800s"))),
    # failure path: install is undone
    ("undo-uninstall", op(failure=FAILING), {"namespace": "present", "release": Deployed(1, "v1.1.0")},
     Act(Uninstall())),
    ("undo-pending", op(failure=FAILING), {"namespace": "present", "release": PendingInstall(1)},
     Act(Uninstall())),
    ("undo-delete-ns", op(failure=FAILING), {"namespace": "present", "release": NoRelease()},
     Act(DeleteNamespace())),
    ("undo-terminating", op(failure=FAILING), {"namespace": "terminating", "release": NoRelease()},
     Keep("namespace terminating")),
    ("undo-stuck", op(failure=FAILING, deadline=EARLIER),
     {"namespace": "terminating", "release": NoRelease()},
     Finish(undone=False, note="the namespace is still terminating")),
    ("undone", op(failure=FAILING), {"namespace": "gone", "release": NoRelease()}, Finish(undone=True)),
    # failure path: upgrade is rolled back to the previous revision
    ("rollback", op("upgrade", failure=FAILING, revision=2, previous=1),
     {"namespace": "present", "release": Deployed(2, "v1.2.0", previous=1)}, Act(Rollback(1))),
    ("rollback-failed-rev", op("upgrade", failure=FAILING, revision=None, previous=1),
     {"namespace": "present", "release": Failed(2, "v1.2.0", previous=1)}, Act(Rollback(1))),
    ("rollback-pending", op("upgrade", failure=FAILING, revision=None, previous=1),
     {"namespace": "present", "release": PendingUpgrade(2)}, Act(RecoverPending())),
    ("rolled-back", op("upgrade", failure=FAILING, revision=2, previous=1),
     {"namespace": "present", "release": Deployed(3, "v1.1.0", previous=2)}, Finish(rolled_back_to=1)),
    ("nothing-written", op("upgrade", failure=FAILING, revision=None, previous=1),
     {"namespace": "present", "release": Deployed(1, "v1.1.0")}, Finish(rolled_back_to=1)),
    ("rollback-release-gone", op("upgrade", failure=FAILING, revision=2, previous=1),
     {"namespace": "gone", "release": NoRelease()}, Finish(rolled_back_to=None)),
    ("upgrade-no-previous", op("upgrade", failure=FAILING, previous=None),
     {"namespace": "present", "release": Deployed(1, "v1.2.0")}, Finish()),
    # failure path: suspend / resume are reported (a pending release is recovered first)
    ("suspend-failed", op("suspend", failure=FAILING),
     {"namespace": "present", "release": Deployed(2, "v1.1.0")},
     Finish()),
    ("resume-pending", op("resume", failure=FAILING), {"namespace": "present", "release": PendingUpgrade(3)},
     Act(RecoverPending())),
    ("uninstall-failed", op("uninstall", failure=Failure("namespace-deletion", "x")),
     {"namespace": "terminating", "release": NoRelease()}, Finish()),
]


@pytest.mark.parametrize(("name", "operation", "observation", "step"), WAIT_STEPS,
                         ids=[r[0] for r in WAIT_STEPS])
def test_next_wait_step_table(name: str, operation: OpView, observation: dict, step: domain.WaitStep) -> None:
    assert domain.next_wait_step(operation, now=NOW, **observation) == step


def test_summarize_matches_expected_workloads_only() -> None:
    view = domain.summarize(
        ["Deployment/thehive", "StatefulSet/cassandra", "Deployment/cortex"],
        [("Deployment/thehive", True, "1/1"), ("StatefulSet/cassandra", False, "0/1 replicas ready"),
         ("Deployment/stray", False, "not ours")],
        [("Deployment/stray", "ProgressDeadlineExceeded")])
    assert view == Workloads(ready=("Deployment/thehive",),
                             waiting=(("StatefulSet/cassandra", "0/1 replicas ready"),),
                             missing=("Deployment/cortex",))
    assert not view.all_ready
    assert domain.summarize([], []).all_ready is False  # nothing declared is never "ready"
    failing = domain.summarize(["Deployment/thehive"], [("Deployment/thehive", False, "x")],
                               [("Deployment/thehive", "ProgressDeadlineExceeded: y")])
    assert failing.failing == (("Deployment/thehive", "ProgressDeadlineExceeded: y"),) and not failing.waiting


def test_failure_round_trips_through_the_reason_column() -> None:
    f = Failure("readiness-timeout", "not ready within 5s: a: b")
    assert Failure.decode(f.encode()) == f
    assert Failure.decode(None) is None
    assert Failure.decode("no step here") == Failure("unknown", "no step here")


@pytest.mark.parametrize(("permanent", "attempt", "gives_up"), [
    (True, 1, True), (False, 1, False), (False, 6, False), (False, 7, True), (False, 8, True)])
def test_gives_up_on_permanent_errors_or_the_next_to_last_delivery(permanent: bool, attempt: int,
                                                                   gives_up: bool) -> None:
    assert domain.gives_up(permanent=permanent, attempt=attempt, max_deliver=8) is gives_up


def test_edge_ports_pick_the_lowest_free_pair() -> None:
    assert domain.pick_edge_ports([], base=15140, limit=15150) == {"events": 15140, "enrollment": 15141}
    used = [{"events": 15140, "enrollment": 15141}, {"events": 15144, "enrollment": 15145}]
    assert domain.pick_edge_ports(used, base=15140, limit=15150) == {"events": 15142, "enrollment": 15143}
    full = [{"events": p, "enrollment": p + 1} for p in range(15140, 15150, 2)]
    with pytest.raises(domain.NoFreeEdgePorts):
        domain.pick_edge_ports(full, base=15140, limit=15150)


def test_last_applied_follows_suspend_and_resume() -> None:
    assert domain.last_applied([]) is None
    assert domain.last_applied([("uninstall", "v1.1.0")]) is None
    assert domain.last_applied([("install", "v1.1.0")]) == Applied("v1.1.0", False)
    assert domain.last_applied([("install", "v1.1.0"), ("suspend", "v1.1.0")]) == Applied("v1.1.0", True)
    assert domain.last_applied([("install", "v1.1.0"), ("suspend", "v1.1.0"), ("resume", "v1.1.0"),
                                ("upgrade", "v1.2.0")]) == Applied("v1.2.0", False)


def test_drift_delta_announces_only_new_items() -> None:
    a = DriftKey("Deployment/thehive", "spec.replicas", "live", "3")
    b = DriftKey("Deployment/cortex", "spec.template.spec.containers[name=cortex].image", "live", "evil:1")
    assert domain.drift_delta([], [a]) == domain.DriftDelta(new=[a], changed=True, resolved=False)
    assert domain.drift_delta([a], [a]) == domain.DriftDelta(new=[], changed=False, resolved=False)
    assert domain.drift_delta([a], [a, b]) == domain.DriftDelta(new=[b], changed=True, resolved=False)
    assert domain.drift_delta([a, b], []) == domain.DriftDelta(new=[], changed=True, resolved=True)
    moved = DriftKey("Deployment/thehive", "spec.replicas", "live", "4")
    assert domain.drift_delta([a], [moved]).new == [moved]  # a new out-of-band value is a new edit


def test_namespace_and_versions() -> None:
    assert domain.namespace_for("acme") == "tenant-acme"
    assert domain.same_version("1.1.0", "v1.1.0") and not domain.same_version("v1.1.0", "v1.2.0")
    assert not domain.same_version(None, "v1.1.0")


def _helm_after(history: list[Revision], version: str) -> list[Revision]:
    """Helm's history after a successful install/upgrade: the deployed revision is superseded and
    the new one, on top, is deployed (failed ones stay failed)."""
    top = max((r.revision for r in history), default=0)
    kept = [Revision(r.revision, "superseded" if r.status == "deployed" else r.status, r.chart_version)
            for r in history]
    return [*kept, Revision(top + 1, "deployed", version)]


AFTER_WRITE = [
    ([], Install(), Present("install", "v1.1.0")),
    ([], Install(), Present("suspend", "v1.1.0", suspended=True)),
    ([Revision(1, "deployed", "1.1.0")], Upgrade(), Present("upgrade", "v1.2.0")),
    ([Revision(1, "superseded", "1.1.0"), Revision(2, "deployed", "1.2.0")], Upgrade(),
     Present("suspend", "v1.2.0", suspended=True)),
    ([Revision(1, "deployed", "1.1.0"), Revision(2, "failed", "1.2.0")], Upgrade(), Present("upgrade", "v1.2.0")),
    ([Revision(1, "superseded", "1.1.0"), Revision(2, "superseded", "1.1.0"), Revision(3, "failed", "1.2.0")],
     Upgrade(), Present("upgrade", "v1.3.0")),
]


@pytest.mark.parametrize(("history", "action", "desired"), AFTER_WRITE)
def test_after_write_equals_observing_the_history_again(history: list[Revision], action: domain.Action,
                                                          desired: Present) -> None:
    """What a successful write's own result says is what re-reading the history would say."""
    before = domain.classify(history)
    assert domain.next_action(before, desired) == action
    after = _helm_after(history, desired.chart_version.lstrip("v"))
    known = domain.after_write(before, action, desired, revision=after[-1].revision, status="deployed",
                               chart_version=desired.chart_version.lstrip("v"))
    assert known == domain.classify(after, suspended=desired.suspended)
    assert isinstance(domain.next_action(known, desired), Watch)


def test_after_write_observes_again_unless_the_result_settles_it() -> None:
    kw = {"revision": 1, "chart_version": "1.1.0"}
    assert domain.after_write(NoRelease(), Install(), INSTALL, status="failed", **kw) is None
    assert domain.after_write(NoRelease(), Install(), INSTALL, status="pending-install", **kw) is None
    assert domain.after_write(NoRelease(), Install(), Absent(), status="deployed", **kw) is None
    assert domain.after_write(PendingInstall(1), RecoverPending(), INSTALL, status="deployed", **kw) is None
    assert domain.after_write(Failed(1, "v1.1.0"), Uninstall(), INSTALL, status="deployed", **kw) is None
    assert domain.after_write(Deployed(1, "v1.1.0"), Rollback(1), INSTALL, status="deployed", **kw) is None
