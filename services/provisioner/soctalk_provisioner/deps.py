"""The provisioner's ports and its own settings (built once, in :mod:`soctalk_provisioner.bootstrap`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict
from soctalk_common.clock import Clock, SystemClock
from soctalk_common.settings import Settings

from soctalk_provisioner.domain import RetryPolicy
from soctalk_provisioner.validation import SCHEMA_PATH, TenantConfigValidator

#: Durable timer kinds owned by the provisioner (``timers.kind``).
RETRY_TIMER = "retry"  # a failed step's automatic retry: re-emit the step's trigger event
GRACE_TIMER = "grace"  # decommission grace period: emit DecommissionDue
RETENTION_TIMER = "retention"  # soft-deleted tenant's retention window: hard delete + PurgeDue


class ProvisionerSettings(BaseSettings):
    """``SOCTALK_PROVISIONER_*``: step retry policy and the tenant-config schema location."""

    model_config = SettingsConfigDict(env_prefix="SOCTALK_PROVISIONER_", extra="ignore")

    step_retry_max: int = 3
    step_retry_base_s: float = 30.0
    step_retry_cap_s: float = 900.0
    tenant_schema: Path = SCHEMA_PATH

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(max_retries=self.step_retry_max, base_delay_s=self.step_retry_base_s,
                           max_delay_s=self.step_retry_cap_s)


@dataclass
class Deps:
    settings: Settings
    clock: Clock = field(default_factory=SystemClock)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    validator: TenantConfigValidator = field(default_factory=TenantConfigValidator.load)
