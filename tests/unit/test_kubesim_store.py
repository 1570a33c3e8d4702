"""The emulator's store: namespaced reads use the per-namespace index and agree with a full scan,
through creates, deletes, finalizers and namespace deletion; served objects never alias what a later
write changes."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from soctalk_kubesim.kinds import BUILTIN_KINDS, KindTable
from soctalk_kubesim.store import ApiError, Store

_ops = st.lists(st.tuples(st.sampled_from(["create", "delete", "finalize", "drop-ns"]),
                          st.integers(0, 3), st.integers(0, 5)), max_size=60)


def _store() -> tuple[Store, list]:
    pending: list = []
    kinds = KindTable(list(BUILTIN_KINDS))
    return Store(kinds, schedule=pending.append), pending


@settings(max_examples=150, deadline=None)
@given(ops=_ops, seed=st.integers(0, 1000))
def test_a_namespaced_list_is_the_full_scan_filtered(ops, seed) -> None:  # type: ignore[no-untyped-def]
    store, pending = _store()
    secrets, nss = store.kinds.find("", "v1", "secrets"), store.kinds.find("", "v1", "namespaces")
    assert secrets is not None and nss is not None
    rng = random.Random(seed)
    for op, ns_i, name_i in ops:
        ns, name = f"ns-{ns_i}", f"s-{name_i}"
        try:
            if op == "create":
                if not store.exists(nss, None, ns):
                    store.create(nss, None, {"metadata": {"name": ns}})
                meta = {"name": name, "finalizers": ["x"] if rng.random() < 0.2 else []}
                store.create(secrets, ns, {"metadata": meta, "stringData": {"k": "v"}})
            elif op == "delete":
                store.delete(secrets, ns, name)
            elif op == "finalize":
                obj = store.get(secrets, ns, name)
                store.update(secrets, ns, name, {**obj, "metadata": {**obj["metadata"], "finalizers": []}})
            else:
                store.delete(nss, None, ns)
        except ApiError:
            pass
        while pending:  # the namespace controller's work
            pending.pop(0)()
        every = store.list(secrets, None, lambda _o: True)
        for i in range(4):
            ns = f"ns-{i}"
            want = [o for o in every if o["metadata"]["namespace"] == ns]
            assert store.list(secrets, ns, lambda _o: True) == want


def test_served_objects_are_not_changed_by_later_writes() -> None:
    store, _ = _store()
    secrets, nss = store.kinds.find("", "v1", "secrets"), store.kinds.find("", "v1", "namespaces")
    assert secrets is not None and nss is not None
    store.create(nss, None, {"metadata": {"name": "a"}})
    first = store.create(secrets, "a", {"metadata": {"name": "s", "labels": {"v": "1"}}, "data": {"k": "MQ=="}})
    listed = store.list(secrets, "a", lambda _o: True)[0]
    store.patch(secrets, "a", "s", "merge", {"metadata": {"labels": {"v": "2"}}, "data": {"k": "Mg=="}})
    store.patch(secrets, "a", "s", "apply", {"apiVersion": "v1", "kind": "Secret",
                                             "metadata": {"name": "s", "labels": {"w": "3"}}}, manager="m")
    assert first["metadata"]["labels"] == {"v": "1"} and first["data"] == {"k": "MQ=="}
    assert listed["metadata"]["labels"] == {"v": "1"}
    now = store.get(secrets, "a", "s")
    assert now["metadata"]["labels"] == {"v": "2", "w": "3"} and now["data"] == {"k": "Mg=="}
