"""The provisioner's state machine, steps and retry policy: table-driven, no I/O."""

from __future__ import annotations

import itertools
import typing

import pytest
from soctalk_common import events as ev
from soctalk_provisioner import domain
from soctalk_provisioner.domain import (
    LIVE,
    PREVIOUS,
    TRANSITIONS,
    Defer,
    GiveUp,
    IllegalTransition,
    Retry,
    RetryPolicy,
    State,
    Step,
    Trigger,
)

pytestmark = pytest.mark.unit

S, T = State, Trigger

LEGAL = sorted(((s, t, dst) for (s, t), dst in TRANSITIONS.items() if dst != PREVIOUS), key=str)
ILLEGAL = sorted(((s, t) for s, t in itertools.product(State, Trigger) if (s, t) not in TRANSITIONS), key=str)


@pytest.mark.parametrize(("state", "trigger", "expected"), LEGAL, ids=[f"{s}-{t}" for s, t, _ in LEGAL])
def test_every_legal_pair_moves_to_its_target(state: State, trigger: Trigger, expected: State) -> None:
    assert domain.transition(state, trigger) == expected


@pytest.mark.parametrize(("state", "trigger"), ILLEGAL, ids=[f"{s}-{t}" for s, t in ILLEGAL])
def test_every_other_pair_is_illegal(state: State, trigger: Trigger) -> None:
    result = domain.transition(state, trigger)
    assert isinstance(result, IllegalTransition)
    assert result.state == state and result.trigger == trigger
    assert str(trigger) in result.reason and str(state) in result.reason


@pytest.mark.parametrize("before", LIVE)
def test_cancel_decommission_returns_to_the_state_before(before: State) -> None:
    assert domain.transition(S.DECOMMISSIONING, T.CANCEL_DECOMMISSION, previous=before) == before


@pytest.mark.parametrize("previous", [None, "decommissioned", "purged", "requested", "bogus"])
def test_cancel_decommission_without_a_live_previous_state_is_illegal(previous: str | None) -> None:
    assert isinstance(domain.transition(S.DECOMMISSIONING, T.CANCEL_DECOMMISSION, previous=previous),
                      IllegalTransition)


def test_unknown_state_or_trigger_is_illegal_not_an_exception() -> None:
    assert isinstance(domain.transition("exploded", T.ACCEPT), IllegalTransition)
    assert isinstance(domain.transition(S.ACTIVE, "teleport"), IllegalTransition)


def test_state_changes_are_exactly_the_design_graph() -> None:
    """DESIGN §3, edge by edge (self-loops are idempotent reports, listed separately in the table)."""
    design = {
        (S.REQUESTED, S.PENDING), (S.PENDING, S.PROVISIONING), (S.PROVISIONING, S.ACTIVE),
        (S.ACTIVE, S.DEGRADED), (S.DEGRADED, S.ACTIVE),
        (S.ACTIVE, S.UPGRADING), (S.UPGRADING, S.ACTIVE), (S.UPGRADING, S.DEGRADED),
        (S.ACTIVE, S.SUSPENDED), (S.DEGRADED, S.SUSPENDED), (S.SUSPENDED, S.ACTIVE),
        *[(s, S.DECOMMISSIONING) for s in LIVE],
        (S.DECOMMISSIONING, S.DECOMMISSIONED), (S.DECOMMISSIONED, S.PURGED),
        (S.PENDING, S.FAILED), (S.PROVISIONING, S.FAILED),
        (S.FAILED, S.PENDING),  # :retry (then the re-sent step result moves it on)
        (S.DECOMMISSIONING, PREVIOUS),  # cancel during the grace period
    }
    edges = {(s, dst) for (s, _), dst in TRANSITIONS.items() if s != dst}
    assert edges == design


@pytest.mark.parametrize("terminal", [S.DECOMMISSIONED, S.PURGED])
def test_nothing_but_purge_leaves_the_end_states(terminal: State) -> None:
    out = {t for (s, t) in TRANSITIONS if s == terminal}
    assert out == ({T.PURGE} if terminal == S.DECOMMISSIONED else set())


def test_a_full_life_walks_the_table() -> None:
    life = [
        (T.ACCEPT, S.PENDING), (T.SECRETS_READY, S.PROVISIONING), (T.CHART_INSTALLED, S.PROVISIONING),
        (T.ACTIVATED, S.ACTIVE), (T.DEGRADED, S.DEGRADED), (T.RECOVERED, S.ACTIVE), (T.UPGRADE, S.UPGRADING),
        (T.UPGRADE_FAILED, S.DEGRADED), (T.RECOVERED, S.ACTIVE), (T.UPGRADE, S.UPGRADING),
        (T.UPGRADE_APPLIED, S.ACTIVE), (T.SUSPEND, S.ACTIVE), (T.SUSPEND_APPLIED, S.SUSPENDED),
        (T.RESUME, S.SUSPENDED), (T.RESUME_APPLIED, S.ACTIVE), (T.DECOMMISSION, S.DECOMMISSIONING),
        (T.DECOMMISSION_DUE, S.DECOMMISSIONING), (T.CHART_REMOVED, S.DECOMMISSIONING),
        (T.SECRETS_REMOVED, S.DECOMMISSIONING), (T.SOFT_DELETE, S.DECOMMISSIONED), (T.PURGE, S.PURGED),
    ]
    state: State = S.REQUESTED
    for trigger, expected in life:
        result = domain.transition(state, trigger)
        assert result == expected, (state, trigger, result)
        state = result


# --- steps ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("state", "completed", "expected"), [
    (S.PENDING, ["validate"], Step.SECRETS),
    (S.FAILED, ["validate"], Step.SECRETS),
    (S.PENDING, ["validate", "secrets"], Step.CHART),
    (S.PROVISIONING, ["validate", "secrets"], Step.CHART),
    (S.FAILED, ["validate", "secrets"], Step.CHART),
    (S.PROVISIONING, ["validate", "secrets", "chart"], None),  # waiting for the adapter
    (S.ACTIVE, ["validate", "secrets", "chart", "activate"], None),
    (S.DECOMMISSIONING, ["validate", "secrets", "chart", "activate"], None),  # grace running
    (S.DECOMMISSIONING, ["activate", "decommission_due"], Step.UNINSTALL),
    (S.DECOMMISSIONING, ["decommission_due", "chart_removed"], None),
])
def test_next_action_resumes_at_the_first_step_not_done(state: State, completed: list[str],
                                                          expected: Step | None) -> None:
    assert domain.next_action(state, completed) == expected


@pytest.mark.parametrize(("state", "trigger", "completed"), [
    (S.PENDING, T.CHART_INSTALLED, ["validate"]),  # SecretsReady still queued for us
    (S.PENDING, T.ACTIVATED, ["validate", "secrets"]),
    (S.PROVISIONING, T.ACTIVATED, ["validate", "secrets"]),  # ChartApplied still queued for us
])
def test_results_ahead_of_the_recorded_steps_are_deferred(state: State, trigger: Trigger,
                                                           completed: list[str]) -> None:
    assert isinstance(domain.decide(state, trigger, completed), Defer)


def test_results_in_order_are_decided_by_the_table() -> None:
    assert domain.decide(S.PROVISIONING, T.ACTIVATED, ["validate", "secrets", "chart"]) == S.ACTIVE
    assert domain.decide(S.PROVISIONING, T.CHART_INSTALLED, ["validate", "secrets"]) == S.PROVISIONING
    assert isinstance(domain.decide(S.SUSPENDED, T.CHART_INSTALLED, []), IllegalTransition)


def test_complete_and_undo_keep_order_and_are_idempotent() -> None:
    done = domain.complete(domain.complete(["validate"], "secrets"), "secrets")
    assert done == ["validate", "secrets"]
    assert domain.undo(["validate", "secrets", "chart"], "secrets", "chart") == ["validate"]


# --- retry policy ------------------------------------------------------------------------------------

def test_retries_back_off_exponentially_with_a_cap_then_give_up() -> None:
    policy = RetryPolicy(max_retries=4, base_delay_s=10, max_delay_s=50)
    plans = [domain.after_failure(n, policy) for n in range(1, 6)]
    assert plans[:4] == [Retry(1, 10), Retry(2, 20), Retry(3, 40), Retry(4, 50)]
    assert plans[4] == GiveUp(5)


def test_no_retries_means_the_first_failure_gives_up() -> None:
    assert domain.after_failure(1, RetryPolicy(max_retries=0)) == GiveUp(1)


def test_every_chart_operation_maps_to_a_trigger() -> None:
    ops = set(typing.get_args(ev.ChartOperation))
    assert set(domain.CHART_APPLIED) == ops - {"uninstall"}  # an uninstall is reported as ChartRemoved
    assert set(domain.CHART_FAILED) == ops


def test_namespace_name_is_a_dns_label_for_the_longest_slug() -> None:
    assert len(domain.namespace_for("a" * 56)) == 63
