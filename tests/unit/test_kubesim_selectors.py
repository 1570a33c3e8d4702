"""Label and field selectors as the emulator parses them (the apimachinery grammar we use)."""

from __future__ import annotations

import pytest
from soctalk_kubesim.selectors import SelectorError, field_matcher, label_matcher

pytestmark = pytest.mark.unit


def obj(labels: dict[str, str] | None = None, **fields: object) -> dict:
    return {"metadata": {"name": "n", "namespace": "ns", "labels": labels or {}}, **fields}


@pytest.mark.parametrize(("selector", "labels", "expected"), [
    (None, {}, True),
    ("", {"a": "b"}, True),
    ("a=b", {"a": "b"}, True),
    ("a==b", {"a": "c"}, False),
    ("a!=b", {}, True),
    ("a!=b", {"a": "b"}, False),
    ("a", {"a": ""}, True),
    ("!a", {"a": "x"}, False),
    ("!a", {}, True),
    ("a in (x, y)", {"a": "y"}, True),
    ("a in (x,y)", {}, False),
    ("a notin (x,y)", {}, True),
    ("a notin (x,y)", {"a": "x"}, False),
    ("owner=helm,name=acme", {"owner": "helm", "name": "acme"}, True),
    ("owner=helm,name=acme", {"owner": "helm", "name": "other"}, False),
    ("app.kubernetes.io/instance=r1,tier in (a,b)", {"app.kubernetes.io/instance": "r1", "tier": "b"}, True),
])
def test_label_selectors(selector: str | None, labels: dict[str, str], expected: bool) -> None:
    assert label_matcher(selector)(obj(labels)) is expected


@pytest.mark.parametrize("selector", ["a in x", "!a=b", "a=b,(", "=b"])
def test_bad_label_selectors(selector: str) -> None:
    with pytest.raises(SelectorError):
        label_matcher(selector)


def test_field_selectors() -> None:
    secret = obj(type="helm.sh/release.v1")
    assert field_matcher("metadata.name=n,metadata.namespace==ns")(secret)
    assert field_matcher("type=helm.sh/release.v1")(secret)
    assert not field_matcher("metadata.name!=n")(secret)
    assert not field_matcher("status.phase=Running")(secret)
    with pytest.raises(SelectorError):
        field_matcher("metadata.name")
