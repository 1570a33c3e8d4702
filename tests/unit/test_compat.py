"""The chart compatibility matrix: parsing, label normalisation and the upgrade verdict."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml
from soctalk_common.compat import (
    CompatEntry,
    load_compatibility,
    parse_compatibility,
    table_rows,
    verdict,
    version_label,
)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]

# Seed 001's example matrix, verbatim.
SEED_EXAMPLE = """
- system: v1.0.0
  tenant:
    - version: v1.0.0
      status: supported
- system: v1.0.1
  tenant:
    - version: v1.0.0
      status: supported
    - version: v1.0.1
      status: supported
- system: v1.1.0
  tenant:
    - version: v1.0.0
      status: deprecated
      notes: "v1.0.x agents still work but upgrade recommended for FQDN egress changes"
    - version: v1.0.1
      status: supported
    - version: v1.1.0
      status: supported
"""

VERSIONS = ("v1.0.0", "v1.0.1", "v1.1.0")
# Every (system, tenant) combination of the seed's versions; anything not listed is blocked.
EXPECTED = {
    ("v1.0.0", "v1.0.0"): "supported",
    ("v1.0.1", "v1.0.0"): "supported",
    ("v1.0.1", "v1.0.1"): "supported",
    ("v1.1.0", "v1.0.0"): "deprecated",
    ("v1.1.0", "v1.0.1"): "supported",
    ("v1.1.0", "v1.1.0"): "supported",
}
ALL_PAIRS = list(itertools.product(VERSIONS, VERSIONS))


@pytest.fixture(scope="module")
def seed_entries() -> list[CompatEntry]:
    return parse_compatibility(yaml.safe_load(SEED_EXAMPLE))


@pytest.mark.parametrize(("system", "tenant"), ALL_PAIRS)
def test_every_seed_combination(seed_entries: list[CompatEntry], system: str, tenant: str) -> None:
    result = verdict(seed_entries, system, tenant)
    expected = EXPECTED.get((system, tenant), "blocked")
    assert result.status == expected
    assert result.known == ((system, tenant) in EXPECTED)
    assert result.allowed == (expected != "blocked")
    assert result.warn == (expected == "deprecated")
    if not result.known:
        assert "unknown" in (result.notes or "")


def test_deprecated_pair_keeps_its_notes(seed_entries: list[CompatEntry]) -> None:
    assert "FQDN egress" in (verdict(seed_entries, "v1.1.0", "v1.0.0").notes or "")


@pytest.mark.parametrize(("system", "tenant"), [("1.1.0", "1.0.0"), ("v1.1.0", "1.0.0"), ("1.1.0", "v1.0.0")])
def test_labels_with_and_without_v_are_the_same(
    seed_entries: list[CompatEntry], system: str, tenant: str
) -> None:
    result = verdict(seed_entries, system, tenant)
    assert (result.system, result.tenant, result.status) == ("v1.1.0", "v1.0.0", "deprecated")


def test_file_labels_without_v_are_normalised() -> None:
    entries = parse_compatibility(
        [{"system": "2.0.0", "tenant": [{"version": "2.0.0", "status": "supported"}]}]
    )
    assert (entries[0].system, entries[0].tenant) == ("v2.0.0", "v2.0.0")
    assert verdict(entries, "v2.0.0", "v2.0.0").status == "supported"


def test_an_explicit_blocked_entry_is_known_and_refused() -> None:
    entries = parse_compatibility(
        [
            {
                "system": "v2.0.0",
                "tenant": [{"version": "v1.0.0", "status": "blocked", "notes": "agents too old"}],
            }
        ]
    )
    result = verdict(entries, "v2.0.0", "v1.0.0")
    assert (result.status, result.known, result.allowed, result.notes) == (
        "blocked",
        True,
        False,
        "agents too old",
    )


@pytest.mark.parametrize("label", ["1.2.3", "v1.2.3", "v1.2.3-rc.1", "1.2.3+build.5"])
def test_version_label_accepts_semver(label: str) -> None:
    assert version_label(label).startswith("v")
    assert version_label(label).lstrip("v") == label.lstrip("v")


@pytest.mark.parametrize("label", ["", "v1", "1.2", "v01.2.3", "latest", "v1.2.3.4"])
def test_version_label_rejects_non_semver(label: str) -> None:
    with pytest.raises(ValueError, match="semantic version"):
        version_label(label)


def test_verdict_rejects_a_non_semver_version(seed_entries: list[CompatEntry]) -> None:
    with pytest.raises(ValueError):
        verdict(seed_entries, "latest", "v1.0.0")


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ({"system": "v1.0.0"}, "must be a list"),
        (
            [{"system": "v1.0.0", "tenant": [{"version": "v1.0.0", "status": "maybe"}]}],
            "entry 0 (system v1.0.0), tenant 0: unknown status 'maybe'",
        ),
        ([{"system": "v1.0.0", "tenant": [{"version": "v1.0.0"}]}], "unknown status None"),
        ([{"system": "one", "tenant": [{"version": "v1.0.0", "status": "supported"}]}], "entry 0: system"),
        (
            [{"system": "v1.0.0", "tenant": [{"version": "x", "status": "supported"}]}],
            "tenant 0: version: 'x'",
        ),
        ([{"system": "v1.0.0", "tenant": []}], "non-empty list"),
        ([{"system": "v1.0.0", "tenants": []}], "expected keys 'system' and 'tenant'"),
        (
            [{"system": "v1.0.0", "tenant": [{"version": "v1.0.0", "status": "supported", "colour": "red"}]}],
            "expected keys version",
        ),
        (
            [{"system": "v1.0.0", "tenant": [{"version": "v1.0.0", "status": "supported", "notes": 3}]}],
            "notes must be a string",
        ),
        (
            [
                {"system": "v1.0.0", "tenant": [{"version": "v1.0.0", "status": "supported"}]},
                {"system": "1.0.0", "tenant": [{"version": "1.0.0", "status": "blocked"}]},
            ],
            "entry 1 (system v1.0.0), tenant 0: pair system v1.0.0 × tenant v1.0.0 is listed twice",
        ),
    ],
)
def test_invalid_matrix_names_the_entry(document: object, fragment: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        parse_compatibility(document)
    assert fragment in str(excinfo.value)


def test_invalid_yaml_is_a_value_error(tmp_path: Path) -> None:
    bad = tmp_path / "compatibility.yaml"
    bad.write_text("- system: v1.0.0\n  tenant: [\n")
    with pytest.raises(ValueError, match="invalid YAML"):
        load_compatibility(bad)


def test_load_names_the_file_and_entry(tmp_path: Path) -> None:
    bad = tmp_path / "compatibility.yaml"
    bad.write_text("- system: v1.0.0\n  tenant:\n    - version: v1.0.0\n      status: sure\n")
    with pytest.raises(
        ValueError, match=r"compatibility\.yaml: entry 0 \(system v1\.0\.0\), tenant 0: unknown status 'sure'"
    ):
        load_compatibility(bad)


def test_repo_matrix_holds_the_seed_example_and_current_charts() -> None:
    entries = load_compatibility(REPO / "compatibility.yaml")
    for system, tenant in ALL_PAIRS:
        assert verdict(entries, system, tenant).status == EXPECTED.get((system, tenant), "blocked")
    system_version = yaml.safe_load((REPO / "charts/soctalk-system/Chart.yaml").read_text())["version"]
    tenant_version = yaml.safe_load((REPO / "charts/soctalk-tenant/Chart.yaml").read_text())["version"]
    assert verdict(entries, system_version, tenant_version).status == "supported"


def test_table_rows_use_the_seed_columns(seed_entries: list[CompatEntry]) -> None:
    rows = table_rows(seed_entries)
    assert len(rows) == len(EXPECTED)
    assert rows[3] == {
        "soctalk_system_version": "v1.1.0",
        "tenant_chart_version": "v1.0.0",
        "status": "deprecated",
        "notes": "v1.0.x agents still work but upgrade recommended for FQDN egress changes",
    }
