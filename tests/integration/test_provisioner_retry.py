"""Failed steps: bounded automatic retries on durable timers, then ``failed``; a retry — automatic or
``TenantRetryRequested`` — resumes at the first step not done, across provisioner restarts.
Real NATS + Postgres, a fake clock (policy here: 2 retries, 10 s base backoff)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from soctalk_common import events as ev
from soctalk_common import timers
from soctalk_provisioner.deps import RETRY_TIMER

from tests.integration import test_provisioner_harness as harness
from tests.integration.test_provisioner_harness import SEALED, Provisioner, secret_refs

pytestmark = pytest.mark.integration

prov = harness.prov


def chart_failed(tenant_id, *, undone: bool = False) -> ev.ChartFailed:  # type: ignore[no-untyped-def]
    return ev.ChartFailed(tenant_id=tenant_id, operation="install", step="readiness",
                          reason="wazuh-indexer not ready after 1800s", undone=undone)


async def _retry_due_at(prov: Provisioner, tenant_id):  # type: ignore[no-untyped-def]
    async with prov.uow() as tx:
        t = await timers.pending(tx, tenant_id, RETRY_TIMER)
        return t.due_at if t is not None else None


async def test_chart_retries_resume_at_the_chart_step_across_a_restart_then_fail_then_retry(
        prov: Provisioner) -> None:
    tenant = await prov.seed("provisioning", completed=["validate", "secrets"])
    t0 = prov.clock.now()
    await prov.publish(chart_failed(tenant.id))
    [failed] = await prov.wait_lifecycle(tenant.id, "StepFailed")
    assert (failed.step, failed.state_to, failed.details["attempt"]) == ("chart", "provisioning", 1)
    assert await _retry_due_at(prov, tenant.id) == t0 + timedelta(seconds=10)

    await prov.restart()  # the retry lives in Postgres, not in the process that scheduled it
    await prov.advance(10)
    [resent] = await prov.wait_emitted(tenant.id, "SecretsReady")
    assert isinstance(resent, ev.SecretsReady) and resent.references == secret_refs(tenant.slug)
    assert await prov.emitted(tenant.id, "TenantAccepted") == []  # resumed at the chart step, not the start
    await prov.wait_lifecycle(tenant.id, "StepRetried")
    # our own re-sent SecretsReady came back over the bus and was recorded (a legal self-loop)
    await prov.wait_lifecycle(tenant.id, "StepCompleted", n=2)

    await prov.publish(chart_failed(tenant.id))  # attempt 2: backoff doubles
    await prov.wait_lifecycle(tenant.id, "StepFailed", n=2)
    assert await _retry_due_at(prov, tenant.id) == prov.clock.now() + timedelta(seconds=20)
    await prov.publish(chart_failed(tenant.id))  # attempt 3 > 2 retries: give up
    after = await prov.wait_state(tenant.id, "failed")
    assert after is not None and (after.failed_step, after.attempts) == ("chart", 3)
    [gave_up] = await prov.lifecycle(tenant.id, "TenantFailed")
    assert gave_up.state_from == "provisioning" and "readiness" in gave_up.message
    assert await _retry_due_at(prov, tenant.id) is None

    await prov.restart()
    await prov.publish(ev.TenantRetryRequested(tenant_id=tenant.id))
    await prov.wait_emitted(tenant.id, "SecretsReady", n=2)  # the chart step again, from the recorded refs
    after = await prov.wait_state(tenant.id, "provisioning")  # failed → pending → (re-sent SecretsReady)
    assert after is not None and after.attempts == 0
    assert await prov.emitted(tenant.id, "TenantAccepted") == []
    [retry] = await prov.lifecycle(tenant.id, "RetryRequested")
    assert (retry.state_from, retry.state_to, retry.step) == ("failed", "pending", "chart")


async def test_a_secrets_failure_retries_with_tenant_accepted_resume(prov: Provisioner) -> None:
    tenant = await prov.seed("pending", completed=["validate"])
    await prov.publish(ev.SecretsFailed(tenant_id=tenant.id, step="vault-write", reason="503 from Vault"))
    await prov.wait_lifecycle(tenant.id, "StepFailed")
    await prov.advance(10)
    [again] = await prov.wait_emitted(tenant.id, "TenantAccepted")
    assert isinstance(again, ev.TenantAccepted)
    assert again.resume is True and again.slug == tenant.slug
    assert again.llm_key == ev.LlmKeySource(sealed=SEALED)
    assert await prov.state(tenant.id) == "pending"


async def test_an_undone_install_resumes_at_the_secrets_step(prov: Provisioner) -> None:
    """The helm-runner rolled the install back with the namespace: the namespace's secrets are gone too."""
    tenant = await prov.seed("provisioning", completed=["validate", "secrets"])
    await prov.publish(chart_failed(tenant.id, undone=True))
    [failed] = await prov.wait_lifecycle(tenant.id, "StepFailed")
    assert failed.details["undone_steps"] == ["secrets", "chart"]
    await prov.advance(10)
    [again] = await prov.wait_emitted(tenant.id, "TenantAccepted")
    assert isinstance(again, ev.TenantAccepted) and again.resume
    assert await prov.emitted(tenant.id, "SecretsReady") == []
