"""Sanitisation: no secret or personal datum leaves production unmasked, and diffs still work.

``Policy.load(path | None)`` / ``Policy.default()`` give a validated policy;
``Sanitiser(policy, key).apply(ex)`` returns the sanitised Exchange (or None to drop it) and
``.report`` counts what was done. ``load_key(file, env)`` reads the pseudonym key. Everything here
is sans-I/O except ``Policy.load`` and ``load_key``, which read the files they are given.
See docs/sanitise.md.
"""

from __future__ import annotations

from replay.sanitise.core import Sanitiser, SanitiseReport
from replay.sanitise.detectors import BUILTIN as DETECTORS
from replay.sanitise.detectors import is_card, is_email, is_iban, is_ipv4, is_ipv6, is_jwt, is_ssn
from replay.sanitise.policy import DEFAULT_POLICY_YAML, Policy, Rule, load_key
from replay.sanitise.pseudonym import Pseudonymiser, luhn_ok

__all__ = [
    "DEFAULT_POLICY_YAML",
    "DETECTORS",
    "Policy",
    "Pseudonymiser",
    "Rule",
    "SanitiseReport",
    "Sanitiser",
    "is_card",
    "is_email",
    "is_iban",
    "is_ipv4",
    "is_ipv6",
    "is_jwt",
    "is_ssn",
    "load_key",
    "luhn_ok",
]
