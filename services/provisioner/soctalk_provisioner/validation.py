"""Tenant config validation (pure): JSON Schema + the rules a schema cannot say, with JSON paths.

What callers can rely on:

* :meth:`TenantConfigValidator.errors` returns every problem as a :class:`FieldError` whose ``path`` is a
  JSON path into the config (``$.llm.apiKey``, ``$.allowedLlmHosts[0]``) and whose ``message`` never
  repeats the offending value — a config may carry a key where it should not, and rejections travel on
  the bus and into the lifecycle stream.
* A plaintext LLM key (``llm.apiKey`` as a string) is refused with a message telling the caller to seal
  it with ``soctalk keys public``.
* :func:`stored_form` turns a valid config into what Postgres keeps: defaults filled in, the LLM key
  replaced by its reference form; the sealed envelope (ciphertext only) is returned separately as an
  :class:`~soctalk_common.events.LlmKeySource`.
"""

from __future__ import annotations

import copy
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from soctalk_common import events as ev
from soctalk_common.redact import is_secret_field
from soctalk_common.settings import REPO_ROOT

SCHEMA_PATH = REPO_ROOT / "schemas" / "tenant-config.schema.json"

SEAL_HINT = ("seal it with the install's public key (`soctalk keys public`) and send "
             '{"sealed": "sealed:v1:..."}, or reference it: {"secretRef": {...}} / {"vaultPath": "..."}')

_FRIENDLY_PATTERN = {
    "$.slug": "must be DNS-safe: lowercase letters, digits and '-', starting and ending with a letter or "
              "digit, at most 56 characters (the namespace tenant-<slug> must be a valid DNS label)",
    "$.chartVersion": "must look like v1.2.3",
    "$.llm.apiKey.sealed": "must be a sealed envelope sealed:v1:<base64url> (`soctalk keys public`)",
}


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def as_event(self) -> ev.FieldError:
        return ev.FieldError(path=self.path, message=self.message)


class TenantConfigValidator:
    """The tenant-config JSON Schema (Draft 2020-12) plus semantic checks. Stateless after load."""

    def __init__(self, schema: dict[str, Any]) -> None:
        Draft202012Validator.check_schema(schema)
        self.schema = schema
        self._validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)

    @classmethod
    def load(cls, path: Path = SCHEMA_PATH) -> TenantConfigValidator:
        return cls(json.loads(Path(path).read_text()))

    def errors(self, config: Any, *, system_namespace: str = "soctalk-system") -> list[FieldError]:
        """Every problem with ``config``; empty when it may be accepted (chart version and slug
        uniqueness are checked by the caller, they need the database)."""
        found: list[FieldError] = []
        for err in sorted(self._validator.iter_errors(config), key=lambda e: (list(map(str, e.absolute_path)),
                                                                               str(e.validator))):
            found.extend(_explain(err))
        if not found:
            found.extend(_semantic(config, system_namespace))
        return _unique(found)


# ---------------------------------------------------------------------------------------------------
# Messages that never echo the instance
# ---------------------------------------------------------------------------------------------------


def _explain(err: ValidationError) -> list[FieldError]:
    path = err.json_path
    v, value, inst = err.validator, err.validator_value, err.instance
    if path == "$.llm.apiKey" and isinstance(inst, str):
        return [FieldError(path, "a plaintext API key is refused: " + SEAL_HINT)]
    if v == "required":
        missing = [p for p in value if isinstance(inst, dict) and p not in inst]
        return [FieldError(f"{path}.{p}", "is required") for p in missing]
    if v == "additionalProperties":
        known = set(err.schema.get("properties", {}))
        extra = sorted(k for k in inst if k not in known) if isinstance(inst, dict) else []
        return [FieldError(f"{path}.{k}", "is not allowed (unknown property)" + _key_hint(k)) for k in extra]
    if v in ("oneOf", "anyOf"):
        return _explain_choice(err)
    return [FieldError(path, _simple(str(v), value, path))]


_TEMPLATES = {
    "type": "must be of type {v}", "enum": "must be one of {v}", "const": "must be {v}",
    "format": "must be a valid {v}", "minLength": "must be at least {v} characters",
    "maxLength": "must be at most {v} characters", "minItems": "must have at least {v} items",
    "maxItems": "must have at most {v} items", "uniqueItems": "must not repeat items",
    "minimum": "must be ≥ {v}", "exclusiveMinimum": "must be > {v}", "maximum": "must be ≤ {v}",
}


def _key_hint(name: str) -> str:
    if not is_secret_field(name):
        return ""
    if name.lower().endswith(("ref", "path")):
        return '; give the key\'s location as apiKey: {"secretRef": {...}} or {"vaultPath": "..."}'
    return "; never send a key in plaintext: " + SEAL_HINT


def _simple(validator: str, value: Any, path: str) -> str:
    if validator == "pattern":
        if path in _FRIENDLY_PATTERN:
            return _FRIENDLY_PATTERN[path]
        if value.startswith("^(?=.{1,253}$)"):
            return "must be a lowercase DNS hostname (e.g. api.openai.com)"
        if value.startswith("^https?://"):
            return "must be an http(s) URL"
        return f"must match {value}"
    shown = ", ".join(map(str, value)) if validator == "enum" else (
        json.dumps(value) if validator == "const" else value)
    if validator not in _TEMPLATES:
        return f"fails the {validator} rule"
    return _TEMPLATES[validator].format(v=shown)


def _explain_choice(err: ValidationError) -> list[FieldError]:
    """``oneOf``/``anyOf``: when exactly one alternative fits the shape the caller chose (its required
    keys are all there), report that alternative's errors; otherwise say what the choices are."""
    branches: dict[int, list[ValidationError]] = {}
    for sub in err.context or []:
        branches.setdefault(int(sub.relative_schema_path[0]), []).append(sub)
    alternatives = err.validator_value
    here = list(err.absolute_path)
    chosen = [i for i, subs in branches.items()
              if not any(s.validator == "required" and list(s.absolute_path) == here for s in subs)]
    if len(chosen) == 1 and len(branches) == len(alternatives):
        out: list[FieldError] = []
        for sub in branches[chosen[0]]:
            out.extend(_explain(sub))
        if out:
            return out
    names = [next(iter(a.get("required", [])), None) or a.get("const", "…") for a in alternatives]
    if err.validator == "oneOf" and all(isinstance(a, dict) and a.get("required") for a in alternatives):
        hint = "; a plaintext key is refused: " + SEAL_HINT if err.json_path == "$.llm.apiKey" else ""
        return [FieldError(err.json_path, "must have exactly one of: " + ", ".join(map(str, names)) + hint)]
    expected = err.schema.get("description") if isinstance(err.schema, dict) else None
    return [FieldError(err.json_path, f"expected {expected}" if expected else "matches no allowed form")]


def _semantic(config: dict[str, Any], system_namespace: str) -> list[FieldError]:
    errors = []
    host = (urlsplit(config["llm"]["baseUrl"]).hostname or "").lower()
    if host and host not in config["allowedLlmHosts"]:
        errors.append(FieldError("$.allowedLlmHosts",
                                 f"must include the llm.baseUrl host {host} (the LLM egress allowlist)"))
    ref = config["llm"]["apiKey"].get("secretRef")
    if ref is not None and ref["namespace"] != system_namespace:
        errors.append(FieldError("$.llm.apiKey.secretRef.namespace",
                                 f"must be {system_namespace} (LLM keys live in the install namespace)"))
    return errors


def _unique(errors: list[FieldError]) -> list[FieldError]:
    seen: set[FieldError] = set()
    return [e for e in errors if not (e in seen or seen.add(e))]  # type: ignore[func-returns-value]


# ---------------------------------------------------------------------------------------------------
# What Postgres keeps
# ---------------------------------------------------------------------------------------------------


def llm_secret_name(tenant_id: uuid.UUID) -> str:
    """Seed 000: the per-tenant LLM Secret in the install namespace."""
    return f"tenant-{tenant_id}-llm"


def stored_form(config: dict[str, Any], *, tenant_id: uuid.UUID, default_chart_version: str,
                system_namespace: str, default_profile: str = "pilot-prod",
                default_secrets_backend: str = "kubernetes") -> tuple[dict[str, Any], ev.LlmKeySource]:
    """(config for ``Tenant.config``, key source for ``Tenant.llm_key_source`` / ``TenantAccepted``).

    Defaults are filled in from the install: ``chartVersion``, ``profile``, ``secretsBackend``.

    In the stored config ``llm.apiKey`` becomes ``llm.apiKeySource`` (``secretRef`` | ``vaultPath`` |
    ``sealed``) plus ``llm.apiKeyRef`` — the Secret the chart reads (seed 001 ``apiKeyRef``) — and
    ``llm.apiKeyVaultPath`` for a Vault key. No ciphertext, no plaintext.
    """
    stored = copy.deepcopy(config)
    stored.setdefault("chartVersion", default_chart_version)
    stored.setdefault("profile", default_profile)
    stored.setdefault("secretsBackend", default_secrets_backend)
    llm = stored["llm"]
    key = llm.pop("apiKey")
    own_secret = {"namespace": system_namespace, "name": llm_secret_name(tenant_id), "key": "api_key"}
    if "secretRef" in key:
        source = ev.LlmKeySource(secret_ref=ev.KubeSecretKeyRef(**key["secretRef"]))
        llm.update(apiKeySource="secretRef", apiKeyRef=dict(key["secretRef"]))
    elif "vaultPath" in key:
        source = ev.LlmKeySource(vault_path=key["vaultPath"])
        llm.update(apiKeySource="vaultPath", apiKeyVaultPath=key["vaultPath"], apiKeyRef=own_secret)
    else:
        source = ev.LlmKeySource(sealed=key["sealed"])
        llm.update(apiKeySource="sealed", apiKeyRef=own_secret)
    return stored, source
