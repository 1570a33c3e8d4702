"""Redaction of secret material before anything is logged, audited or published.

The logging layer (a structlog processor) runs every event dict through :func:`redact`, and any
free-form text that may have touched material (error bodies, subprocess output) through
:func:`scrub_text` with the values the caller currently holds.

What callers can rely on:

* :func:`redact` never mutates its input; it returns a new structure of the same shape in which the
  value of every key whose name *contains* one of :data:`SECRET_FIELD_NAMES` (case-insensitive, ``-``
  and ``_`` treated alike) is replaced by :data:`REDACTED`, at any depth. Keys in
  :data:`REFERENCE_FIELD_NAMES` name a secret without being one (``secret_name``, ``token_prefix``)
  and keep their value.
* String leaves are additionally scrubbed of well-known secret *shapes* (SocTalk adapter tokens,
  sealed envelopes, ``Bearer``/``Basic`` credentials, PEM private keys) whatever their key is, so a
  token pasted into a ``msg`` field is still caught.
* Over-redaction is the chosen failure mode: a harmless field named ``tokens_total`` is redacted too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "[REDACTED]"

#: Substrings of key names whose values are secret material. Matched case-insensitively against the
#: key with ``-`` folded to ``_`` (so ``X-Api-Key`` and ``api_key`` both match).
SECRET_FIELD_NAMES: frozenset[str] = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "token",
        "api_key",
        "apikey",
        "secret",
        "authd_pass",
        "private_key",
        "privatekey",
        "sealed",
        "authorization",
        "credential",
        "cookie",
        "signing_key",
        "client_key",
        "material",
    }
)

#: Exact key names that *refer* to a secret (a name, a path, a public prefix) and are safe to log.
#: Values inside them are still walked, so a nested ``password`` is redacted anyway.
REFERENCE_FIELD_NAMES: frozenset[str] = frozenset(
    {
        "secret_name",
        "secret_names",
        "secret_namespace",
        "secret_path",
        "secret_ref",
        "secret_refs",
        "secret_version",
        "secret_purpose",
        "token_prefix",
    }
)

# Shapes of material we mint or handle, caught wherever they appear in text. Kept narrow so ordinary
# log text is not mangled: each needs a distinctive marker plus a long high-entropy tail.
_SECRET_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"sta_[a-z0-9]{12}_[A-Za-z0-9_-]{20,}"),  # adapter token (see soctalk_secrets.domain)
    re.compile(r"sealed:v\d+:[A-Za-z0-9_=-]{16,}"),  # sealed envelope (see soctalk_common.sealing)
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL),
)


def is_secret_field(name: str) -> bool:
    """True when a key with this name holds secret material (see module docstring for the rule)."""
    folded = name.lower().replace("-", "_")
    if folded in REFERENCE_FIELD_NAMES:
        return False
    compact = folded.replace("_", "")
    # Matching the compacted form too catches ``apiKey``/``privateKey`` spellings.
    return any(s in folded or s.replace("_", "") in compact for s in SECRET_FIELD_NAMES)


def scrub_patterns(text: str) -> str:
    """Replace well-known secret shapes (adapter tokens, sealed envelopes, bearer credentials)."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


def redact(obj: Any) -> Any:
    """Return a copy of ``obj`` with secret fields and secret-shaped strings replaced by ``[REDACTED]``.

    Mappings, lists, tuples, sets and frozensets are walked recursively; other objects are returned
    unchanged (they are not inspected, so log plain data, not objects holding material).
    """
    if isinstance(obj, Mapping):
        out: dict[Any, Any] = {}
        for key, value in obj.items():
            if isinstance(key, str) and is_secret_field(key):
                out[key] = REDACTED
            else:
                out[key] = redact(value)
        return out
    if isinstance(obj, str):
        return scrub_patterns(obj)
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(redact(v) for v in obj)
    if isinstance(obj, set | frozenset):
        return type(obj)(redact(v) for v in obj)
    return obj


def scrub_text(text: str, known_values: Iterable[str]) -> str:
    """Replace every occurrence of each known secret value in ``text`` with ``[REDACTED]``.

    Longer values are replaced first so a value that contains another is removed whole. Empty values
    are ignored (they would match everywhere). Well-known secret shapes are scrubbed as well.
    """
    values = sorted({v for v in known_values if v}, key=len, reverse=True)
    for value in values:
        text = text.replace(value, REDACTED)
    return scrub_patterns(text)
