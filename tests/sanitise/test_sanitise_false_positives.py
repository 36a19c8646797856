"""False positives: how often each detector fires on clean traffic.

The clean corpus (sanitise_corpus.CLEAN_TYPES) holds what APIs are full of and what a detector
could mistake for a secret: ids of every length, epoch timestamps, dates and times, prices,
coordinates, version strings, UUIDs, hashes, base64, SKUs, URLs, user agents, MAC addresses,
C++ names. The rates are written down in docs/sanitise.md (run this file as a script to print
the table); the test keeps them from silently getting worse.

Run ``python tests/sanitise/test_sanitise_false_positives.py`` to print the markdown table.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from pathlib import Path

from sanitise_corpus import CLEAN_TYPES, clean_json_body, clean_values

from replay.sanitise import Policy, Sanitiser
from replay.sanitise.detectors import BUILTIN, Prep

PER_TYPE = 800
BODIES = 500

# Upper bounds for the share of clean *values* a detector fires on. Most are zero by design;
# the non-zero ones are the honest ambiguities (a four-part version string *is* an IPv4
# address in shape; 16-digit ids pass Luhn one time in ten).
MAX_VALUE_RATE = {
    "email": 0.0,
    "jwt": 0.0,
    "bearer": 0.0,
    "basic": 0.0,
    "api_key": 0.0,
    "iban": 0.0,
    "ssn": 0.0,
    "ipv6": 0.0,
    "card": 0.002,
    "phone": 0.001,
    "ipv4": 0.001,
}


def measure_values() -> tuple[dict[str, int], dict[str, Counter[str]], int]:
    """Per detector: number of clean values with a hit, and which value types they were."""
    vals = clean_values(per_type=PER_TYPE)
    hits: dict[str, int] = dict.fromkeys(BUILTIN, 0)
    by_type: dict[str, Counter[str]] = {d: Counter() for d in BUILTIN}
    for typ, v in vals:
        p = Prep(v.encode())
        for name, det in BUILTIN.items():
            if det.find(p):
                hits[name] += 1
                by_type[name][typ] += 1
    return hits, by_type, len(vals)


def measure_bodies() -> tuple[dict[str, int], int, int]:
    """Default policy over clean ~2 KB JSON bodies: redactions per rule, bodies touched."""
    rng = random.Random(11)
    from replay.model import Exchange, Response

    san = Sanitiser(Policy.default(), b"fp-measure-key-0123456789abcdef")
    touched = 0
    for i in range(BODIES):
        body = clean_json_body(rng)
        ex = Exchange(
            id=str(i),
            response=Response(
                200,
                headers=[("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
                body=body,
            ),
        )
        out = san.apply(ex)
        assert out is not None and out.response is not None
        if out.response.body != body:
            touched += 1
    return san.report.by_rule(), touched, BODIES


def test_false_positive_rates_per_detector() -> None:
    hits, by_type, n = measure_values()
    for name, bound in MAX_VALUE_RATE.items():
        rate = hits[name] / n
        assert rate <= bound, f"{name}: {rate:.4f} > {bound} ({dict(by_type[name])})"


def test_clean_bodies_mostly_untouched() -> None:
    by_rule, touched, n = measure_bodies()
    assert touched / n <= 0.1, (touched, by_rule)
    for rule in ("email", "jwt", "iban", "ssn", "ipv6"):
        assert by_rule.get(rule, 0) == 0, (rule, by_rule)


def markdown() -> str:
    """The table for docs/sanitise.md."""
    hits, by_type, n = measure_values()
    by_rule, touched, nb = measure_bodies()
    lines = [
        f"Clean values: {n:,} ({PER_TYPE} each of {len(CLEAN_TYPES)} types: "
        f"{', '.join(CLEAN_TYPES)}).",
        f"Clean bodies: {nb} JSON documents of ~2 KB built from the same types, default policy.",
        "",
        "| detector | values hit | rate | what it fired on | hits in clean bodies |",
        "|---|---:|---:|---|---:|",
    ]
    rule_of = {"api_key": "api-key"}
    for name in BUILTIN:
        what = ", ".join(f"{t} ({c})" for t, c in by_type[name].most_common(3)) or "-"
        lines.append(
            f"| {name} | {hits[name]} | {hits[name] / n:.3%} | {what} | "
            f"{by_rule.get(rule_of.get(name, name), 0)} |"
        )
    lines.append("")
    lines.append(f"Clean bodies changed at all: {touched} of {nb} ({touched / nb:.1%}).")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    print(markdown())
