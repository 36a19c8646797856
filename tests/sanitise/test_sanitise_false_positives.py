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

import orjson
from sanitise_corpus import CLEAN_TYPES, clean_json_body, clean_values

from replay.model import ConnKey, Exchange, Request, Response
from replay.sanitise import Policy, Sanitiser
from replay.sanitise.detectors import BUILTIN, Prep, name_class

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
    "pem": 0.0,
    "password_pair": 0.0,
    "secret_pair": 0.0,
    # high_entropy runs on URL paths and fragments only: every hash and base64 value *is* a
    # random token by shape (the table in docs/sanitise.md shows it; no clean UUID, id or word)
    "high_entropy": 0.12,
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
    for rule in ("email", "jwt", "iban", "ssn", "ipv6", "api-key", "private-key",
                 "password-pairs", "secret-pairs", "password-names", "secret-names"):
        assert by_rule.get(rule, 0) == 0, (rule, by_rule)


NUMBER_KINDS = ("id_6_11", "id_12_15", "id_16", "id_17_19", "epoch_s", "epoch_ms", "epoch_us",
                "epoch_ns", "price", "phone_e164", "phone_spaced", "order_dashed", "digits_spaced")
NUMBERS_PER_KIND = 5000


def ordinary_number(kind: str, r: random.Random) -> str:
    """An ordinary number of the given kind (what the card detector must leave alone)."""
    if kind.startswith("id_"):
        lo, hi = (int(x) for x in kind[3:].split("_")) if kind.count("_") == 2 else (16, 16)
        n = r.randint(lo, hi)
        return str(r.randrange(10 ** (n - 1), 10**n))
    if kind.startswith("epoch_"):
        base = r.randrange(1_500_000_000, 1_900_000_000)
        scale = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[kind[6:]]
        return str(base * scale + r.randrange(scale))
    if kind == "price":
        return f"{r.uniform(0, 10**7):.2f}"
    if kind == "phone_e164":
        return str(r.choice([1, 44, 49, 33, 91, 86, 55, 7])) + str(r.randrange(10**9, 10**11))
    if kind == "phone_spaced":
        return f"0{r.randint(20, 99)} {r.randint(1000, 9999)} {r.randint(1000, 9999)}"
    if kind == "order_dashed":
        return f"{r.randint(100, 999)}-{r.randint(10**6, 10**7 - 1)}-{r.randint(10**6, 10**7 - 1)}"
    if kind == "digits_spaced":  # dates, quantities and codes in text: '2024 05 17 1200 3'
        return " ".join(str(r.randrange(10 ** r.randint(1, 4))) for _ in range(r.randint(3, 6)))
    raise ValueError(kind)


def measure_card_numbers() -> dict[str, int]:
    """Card detector hits per kind of ordinary number, NUMBERS_PER_KIND each, alone and in a
    sentence ('total 12.50, ref <n> ok')."""
    r = random.Random(17)
    det = BUILTIN["card"]
    out = {}
    for kind in NUMBER_KINDS:
        hits = 0
        for _ in range(NUMBERS_PER_KIND):
            v = ordinary_number(kind, r)
            text = v if r.random() < 0.5 else f"total 12.50, ref {v} ok"
            hits += bool(det.find(Prep(text.encode())))
        out[kind] = hits
    return out


def test_card_false_positives_on_ordinary_numbers() -> None:
    hits = measure_card_numbers()
    # no scheme issues numbers starting with 0, 1 or 7, and none is shorter than 12 digits
    for kind in ("id_6_11", "epoch_s", "epoch_ms", "epoch_us", "epoch_ns", "price",
                 "phone_spaced", "order_dashed"):
        assert hits[kind] == 0, (kind, hits)
    # long ids with a scheme prefix pass Luhn one time in ten: the honest ambiguity
    assert sum(hits.values()) / (NUMBERS_PER_KIND * len(NUMBER_KINDS)) <= 0.03, hits


SEP_KINDS = ("version", "date_slash", "date_dot", "ipv4", "price", "price_eu", "dotted_id",
             "phone_dot", "epoch_frac", "path_digits", "nbsp_phone", "nbsp_amount", "grouped_4x4")


def sep_number(kind: str, r: random.Random) -> str:
    """Dotted, slashed and no-break-spaced numbers that are no cards (and one ambiguous kind,
    random digits in the 4-4-4-4 grouping, which a card can be)."""
    d = r.randint
    if kind == "version":
        return ".".join(str(d(0, 40)) for _ in range(d(2, 5)))
    if kind == "date_slash":
        return r.choice([f"{d(1990, 2030)}/{d(1, 12):02}/{d(1, 28):02}", f"{d(1, 28):02}/{d(1, 12):02}/{d(1990, 2030)}"])
    if kind == "date_dot":
        return r.choice([f"{d(1990, 2030)}.{d(1, 12):02}.{d(1, 28):02}", f"{d(1, 28):02}.{d(1, 12):02}.{d(1990, 2030)}"])
    if kind == "ipv4":
        return ".".join(str(d(0, 255)) for _ in range(4))
    if kind == "price":
        return f"{r.uniform(0, 10**6):.2f}"
    if kind == "price_eu":  # 1.234.567,89
        return f"{d(1, 999)}.{d(0, 999):03}.{d(0, 999):03},{d(0, 99):02}"
    if kind == "dotted_id":  # ids in dotted parts of other sizes: 1234.567.8901.2345
        return ".".join(str(d(10 ** (k - 1), 10**k - 1)) for k in (4, 3, 4, 4))
    if kind == "phone_dot":
        return f"{d(200, 999)}.{d(200, 999)}.{d(1000, 9999)}"
    if kind == "epoch_frac":
        return f"{d(1_500_000_000, 1_900_000_000)}.{d(0, 999999):06}"
    if kind == "path_digits":
        return f"/img/{d(1990, 2030)}/{d(1, 12):02}/{d(1000, 9999)}.jpg"
    if kind == "nbsp_phone":
        return f"0{d(20, 99)}\u00a0{d(1000, 9999)}\u00a0{d(1000, 9999)}"
    if kind == "nbsp_amount":
        return r.choice(["", "EUR&nbsp;"]) + f"{d(1, 999)}\u00a0{d(0, 999):03}\u00a0{d(0, 999):03},{d(0, 99):02}"
    if kind == "grouped_4x4":
        return r.choice(".-/").join(str(d(1000, 9999)) for _ in range(4))
    raise ValueError(kind)


def test_card_false_positives_on_dotted_slashed_and_nbsp_numbers() -> None:
    """The card finder's dot, slash and no-break-space groupings (4-4-4-4[-n], 4-6-5, 4-6-4, one
    separator throughout) leave versions, dates, IPs, prices, phones and paths alone."""
    r = random.Random(23)
    det = BUILTIN["card"]
    hits = dict.fromkeys(SEP_KINDS, 0)
    for kind in SEP_KINDS:
        for _ in range(2000):
            v = sep_number(kind, r)
            text = v if r.random() < 0.5 else f"total 12.50, ref {v} ok"
            hits[kind] += bool(det.find(Prep(text.encode())))
    assert all(n == 0 for k, n in hits.items() if k != "grouped_4x4"), hits
    # random digits in a card's grouping: about 4 in 10 start like a scheme, 1 in 10 of those
    # passes Luhn (the honest ambiguity, as for spaced and dashed groups)
    assert hits["grouped_4x4"] / 2000 <= 0.05, hits


ORDINARY_NAMES = ["tint", "tintColor", "tinyUrl", "tiny_url", "destination", "continent", "continue",
                  "setting", "latin", "bulletin", "martin", "vatican", "vat", "vatRate", "vat_amount",
                  "vatIncluded", "private_number", "dlq", "dl", "download_url", "downloadNumber",
                  "handler", "idle", "nation", "nationality", "national_holiday", "driver",
                  "driver_id", "driverName", "passport", "passportjs", "nino_flag", "tin_type",
                  "tinVerified", "has_tin", "vat_number_required", "passport_number_format",
                  "tinder", "destinationId", "continentCode", "routing"]


def test_ordinary_names_holding_id_letters_are_not_secret() -> None:
    """Names of tax and national ids (``tin``, ``vat_number``, ``nino``...) are secret names;
    names that merely hold those letters, or describe such an id, are not."""
    for nm in ORDINARY_NAMES:
        assert name_class(nm.lower()) == 0, nm
    doc = {nm: f"v{i}" for i, nm in enumerate(ORDINARY_NAMES)}
    body = orjson.dumps(doc)
    san = Sanitiser(Policy.default(), b"fp-test-key-0123456789abcdef")
    ex = Exchange(id="n", conn=ConnKey("203.0.113.7", 5000, "10.0.0.9", 443),
                  request=Request("POST", "/api?" + "&".join(f"{k}={v}" for k, v in doc.items()),
                                  headers=[("Content-Type", "application/json")], body=body),
                  response=Response(200, "OK", headers=[("Content-Type", "application/json")],
                                    body=b"{}"))
    out = san.apply(ex)
    assert out is not None
    assert orjson.loads(out.request.body) == doc
    assert out.request.target == ex.request.target


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
    rule_of = {"api_key": "api-key", "pem": "private-key", "password_pair": "password-pairs",
               "secret_pair": "secret-pairs", "high_entropy": "url-token"}
    for name in BUILTIN:
        what = ", ".join(f"{t} ({c})" for t, c in by_type[name].most_common(3)) or "-"
        lines.append(
            f"| {name} | {hits[name]} | {hits[name] / n:.3%} | {what} | "
            f"{by_rule.get(rule_of.get(name, name), 0)} |"
        )
    lines.append("")
    lines.append(f"Clean bodies changed at all: {touched} of {nb} ({touched / nb:.1%}).")
    card = measure_card_numbers()
    lines += [
        "",
        f"Card detector on ordinary numbers ({NUMBERS_PER_KIND:,} of each kind, half of them "
        "alone, half inside a sentence):",
        "",
        "| number | hits | rate |",
        "|---|---:|---:|",
    ]
    for kind in NUMBER_KINDS:
        lines.append(f"| {kind} | {card[kind]} | {card[kind] / NUMBERS_PER_KIND:.2%} |")
    total = sum(card.values())
    n = NUMBERS_PER_KIND * len(NUMBER_KINDS)
    lines.append(f"| all | {total} | {total / n:.2%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    print(markdown())
