"""Chart READMEs' values tables are generated from the schemas and must be current."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from soctalk_common import charts

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("chart", charts.CHARTS)
def test_readme_values_table_is_current(chart: str) -> None:
    assert charts.readme_is_current(chart), f"run: python -m soctalk_common.charts readme ({chart})"


@pytest.mark.parametrize("chart", charts.CHARTS)
def test_table_lists_every_top_level_key_once(chart: str) -> None:
    table = charts.generate_readme_values_table(chart)
    keys = [line.split("`")[1] for line in table.splitlines()[2:]]
    assert len(keys) == len(set(keys))
    assert {k.split(".")[0] for k in keys} == set(charts.load_schema(chart)["properties"])


def test_table_shows_required_type_default_and_description() -> None:
    rows = {
        line.split("`")[1]: line
        for line in charts.generate_readme_values_table(charts.TENANT_CHART).splitlines()[2:]
    }
    assert rows["wazuhIngress.mode"].startswith(
        '| `wazuhIngress.mode` | "loadbalancer" \\| "edge-haproxy" | yes |  |'
    )
    assert '`"adapter-token"`' in rows["adapter.tokenSecretRef.name"]
    assert "(uuid)" in rows["tenant.id"]


def test_a_schema_change_makes_the_readme_stale_until_regenerated(tmp_path: Path) -> None:
    chart = tmp_path / charts.TENANT_CHART
    shutil.copytree(charts.chart_dir(charts.TENANT_CHART), chart)
    schema_file = chart / "values.schema.json"
    schema = json.loads(schema_file.read_text())
    schema["properties"]["suspended"]["description"] = "Changed description."
    schema_file.write_text(json.dumps(schema, indent=2))

    assert not charts.readme_is_current(chart)
    assert charts.update_readme(chart) is True
    assert charts.readme_is_current(chart)
    assert "Changed description." in (chart / "README.md").read_text()
    assert charts.update_readme(chart) is False


def test_cli_check_passes_on_the_repo() -> None:
    assert charts.main(["readme", "--check"]) == 0
