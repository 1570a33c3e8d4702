"""The compatibility gate over seed 001's example matrix, every combination, and ``compat check``."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from soctalk_common.compat import load_compatibility, parse_compatibility
from soctalk_common.settings import Settings
from soctalk_provisioner import compat_cli
from soctalk_provisioner.compatibility import gate

pytestmark = pytest.mark.unit

from tests.unit.test_compat import SEED_EXAMPLE  # noqa: E402 - seed 001's matrix, one copy

ENTRIES = parse_compatibility(yaml.safe_load(SEED_EXAMPLE))

SYSTEMS = ["v1.0.0", "v1.0.1", "v1.1.0", "v2.0.0"]
TENANTS = ["v1.0.0", "v1.0.1", "v1.1.0", "v0.9.0"]
EXPECTED = {
    ("v1.0.0", "v1.0.0"): "supported",
    ("v1.0.1", "v1.0.0"): "supported",
    ("v1.0.1", "v1.0.1"): "supported",
    ("v1.1.0", "v1.0.0"): "deprecated",
    ("v1.1.0", "v1.0.1"): "supported",
    ("v1.1.0", "v1.1.0"): "supported",
}  # everything else (a newer tenant chart on an older system, unknown versions) is blocked
MATRIX = [(s, t, EXPECTED.get((s, t), "blocked")) for s in SYSTEMS for t in TENANTS]


@pytest.mark.parametrize(("system", "tenant", "status"), MATRIX, ids=[f"{s}x{t}" for s, t, _ in MATRIX])
def test_can_upgrade_every_combination_of_the_seed_example(system: str, tenant: str, status: str) -> None:
    v = gate(ENTRIES, system, tenant)
    assert v.status == status
    assert v.allowed is (status != "blocked")
    assert v.warn is (status == "deprecated")
    assert v.known is ((system, tenant) in EXPECTED)


def test_deprecated_carries_its_notes_and_unknown_pairs_say_so() -> None:
    assert "FQDN egress" in (gate(ENTRIES, "v1.1.0", "v1.0.0").notes or "")
    assert "unknown combination" in (gate(ENTRIES, "v1.0.0", "v1.1.0").notes or "")


@pytest.mark.parametrize(("system", "tenant"), [("1.1.0", "1.0.1"), ("v1.1.0", "1.0.1"), ("1.1.0", "v1.0.1")])
def test_versions_with_or_without_v_are_the_same_label(system: str, tenant: str) -> None:
    assert gate(ENTRIES, system, tenant).status == "supported"


@pytest.mark.parametrize("tenant", ["latest", "", "v1", "1.0.0; drop table"])
def test_a_malformed_version_is_blocked_not_an_exception(tenant: str) -> None:
    v = gate(ENTRIES, "v1.1.0", tenant)
    assert v.status == "blocked" and not v.known


def test_the_repo_matrix_allows_the_install_default_chart() -> None:
    """Otherwise every request without a chartVersion would be rejected."""
    s = Settings()
    entries = load_compatibility(s.compatibility_file)
    assert gate(entries, s.system_version, s.default_tenant_chart_version).allowed


# --- soctalk compat check --------------------------------------------------------------------------

@pytest.fixture
def matrix_file(tmp_path: Path) -> Path:
    path = tmp_path / "compatibility.yaml"
    path.write_text(SEED_EXAMPLE)
    return path


@pytest.mark.parametrize(("system", "tenant", "status", "code"), [
    ("v1.1.0", "v1.1.0", "supported", 0),
    ("v1.1.0", "v1.0.0", "deprecated", 0),
    ("v1.0.0", "v1.1.0", "blocked", 1),
    ("v9.9.9", "v1.0.0", "blocked", 1),
    ("v1.1.0", "nonsense", "blocked", 1),
])
def test_check_prints_the_verdict_and_exits_non_zero_when_blocked(matrix_file: Path, system: str, tenant: str,
                                                                  status: str, code: int) -> None:
    out = io.StringIO()
    verdict, exit_code = compat_cli.check(system, tenant, matrix_file, out=out)
    assert (verdict.status, exit_code) == (status, code)
    printed = out.getvalue()
    assert status in printed
    assert printed.startswith("warning: ") is (status == "deprecated")


def test_check_with_an_unreadable_matrix_is_a_usage_error(tmp_path: Path) -> None:
    out = io.StringIO()
    bad = tmp_path / "bad.yaml"
    bad.write_text("- system: v1.0.0\n  tenant:\n    - version: v1.0.0\n      status: maybe\n")
    for path in (bad, tmp_path / "missing.yaml"):
        verdict, code = compat_cli.check("v1.0.0", "v1.0.0", path, out=out)
        assert (verdict.status, code) == ("blocked", compat_cli.EXIT_BAD_FILE)
    assert "unknown status 'maybe'" in out.getvalue()
