"""Subchart pinning (Chart.lock matches the vendored subcharts; drift fails) and packaging."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import helm_python as helm
import pytest
import yaml
from soctalk_common import charts

pytestmark = pytest.mark.contract

REPO = Path(__file__).resolve().parents[2]
SEED_PINS = {"wazuh": "0.3.2-soctalk-v1", "thehive": "5.2.0-soctalk-v1", "cortex": "3.1.8-soctalk-v1"}


@pytest.fixture
def tenant_copy(tmp_path: Path) -> Path:
    dest = tmp_path / charts.TENANT_CHART
    shutil.copytree(charts.chart_dir(charts.TENANT_CHART), dest)
    return dest


def test_chart_lock_matches_the_tree() -> None:
    assert charts.lock_digest_check() == []
    assert charts.main(["lock", "--check"]) == 0


def test_dependencies_are_the_seed_pins_vendored_as_directories() -> None:
    meta = charts.chart_metadata(charts.TENANT_CHART)
    assert {d["name"]: (d["version"], d["repository"]) for d in meta["dependencies"]} == {
        name: (version, f"file://./charts/{name}") for name, version in SEED_PINS.items()
    }
    listed = helm.dependency_list(charts.chart_dir(charts.TENANT_CHART))
    assert {d["name"]: d["status"] for d in listed} == dict.fromkeys(SEED_PINS, "unpacked")
    lock = yaml.safe_load((charts.chart_dir(charts.TENANT_CHART) / "Chart.lock").read_text())
    assert {d["name"]: d["version"] for d in lock["dependencies"]} == SEED_PINS
    assert all(d["digest"].startswith("sha256:") for d in lock["dependencies"])


def test_lock_digest_is_the_one_helm_computes(tenant_copy: Path) -> None:
    committed = yaml.safe_load((tenant_copy / "Chart.lock").read_text())["digest"]
    (tenant_copy / "Chart.lock").unlink()
    helm.dependency_update(tenant_copy)
    assert yaml.safe_load((tenant_copy / "Chart.lock").read_text())["digest"] == committed


def test_editing_a_subchart_is_drift(tenant_copy: Path) -> None:
    values = tenant_copy / "charts/wazuh/values.yaml"
    values.write_text(values.read_text().replace('tag: "4.7.2"', 'tag: "4.7.3"', 1))
    problems = charts.lock_digest_check(tenant_copy)
    assert len(problems) == 1 and "subchart wazuh changed since Chart.lock was written" in problems[0]
    with pytest.raises(charts.ChartLockDrift, match="subchart wazuh changed"):
        charts.package(tenant_copy, tenant_copy.parent / "dist")
    charts.write_lock(tenant_copy)
    assert charts.lock_digest_check(tenant_copy) == []


def test_adding_a_file_to_a_subchart_is_drift(tenant_copy: Path) -> None:
    (tenant_copy / "charts/cortex/templates/extra.yaml").write_text("# patched\n")
    assert any("subchart cortex changed" in p for p in charts.lock_digest_check(tenant_copy))


def test_changing_a_pinned_version_is_drift(tenant_copy: Path) -> None:
    chart_yaml = tenant_copy / "Chart.yaml"
    chart_yaml.write_text(
        chart_yaml.read_text().replace('version: "5.2.0-soctalk-v1"', 'version: "5.2.1-soctalk-v1"')
    )
    problems = charts.lock_digest_check(tenant_copy)
    assert any("out of sync with Chart.yaml" in p for p in problems)
    assert any(
        "charts/thehive is thehive 5.2.0-soctalk-v1, Chart.yaml wants thehive 5.2.1-soctalk-v1" in p
        for p in problems
    )


def test_a_missing_lock_is_reported(tenant_copy: Path) -> None:
    (tenant_copy / "Chart.lock").unlink()
    assert charts.lock_digest_check(tenant_copy) == ["soctalk-tenant: Chart.lock is missing"]


def test_write_lock_does_not_churn(tenant_copy: Path) -> None:
    before = (tenant_copy / "Chart.lock").read_text()
    charts.write_lock(tenant_copy)
    assert (tenant_copy / "Chart.lock").read_text() == before


def test_package_builds_both_archives(tmp_path: Path) -> None:
    archives = charts.package_all(tmp_path)
    assert sorted(p.name for p in archives) == ["soctalk-system-1.1.0.tgz", "soctalk-tenant-1.1.0.tgz"]
    assert all(p.is_file() and os.path.getsize(p) > 0 for p in archives)
    tenant_tgz = next(p for p in archives if p.name.startswith("soctalk-tenant"))
    assert helm.digest(tenant_tgz).startswith("sha256:")
    with helm.Chart.load(tenant_tgz) as packed:
        assert (packed.version, packed.metadata["appVersion"]) == ("1.1.0", "v1.1.0")
        assert {d["name"]: d["version"] for d in packed.dependencies} == SEED_PINS
        assert packed.schema is not None
        values = charts.load_values_file(REPO / "deploy/examples/tenant-acme-values.yaml")
        from_archive = packed.render(values, name="soctalk-tenant", namespace="tenant-acme")
    from_tree = charts.render_manifests(charts.TENANT_CHART, values, namespace="tenant-acme")
    assert {k: v for k, v in from_archive.items() if not k.endswith("NOTES.txt")} == from_tree


def test_readme_documents_oci_publishing() -> None:
    text = (REPO / "charts/README.md").read_text()
    assert "helm push dist/charts/soctalk-tenant-1.1.0.tgz oci://ghcr.io/gbrigandi/charts" in text
    assert "oci://ghcr.io/gbrigandi/charts/soctalk-system" in text
