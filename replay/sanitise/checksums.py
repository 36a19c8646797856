"""Check digits: Luhn (payment cards) and ISO 13616 mod 97 (IBANs).

A leaf module (no project imports): the detectors validate candidates with these and the
pseudonymiser writes valid ones with them, while the pseudonymiser also asks the detectors what
a value looks like (``format: auto``). Keeping the arithmetic here lets that dependency run one
way only (pseudonym -> detectors -> checksums) instead of in a circle.
"""

from __future__ import annotations


def _luhn_total(digits: bytes, doubled: bool) -> int:
    """Luhn's weighted digit sum from the right; ``doubled``: whether the rightmost digit is
    one of the doubled ones (it is when a check digit is still to come)."""
    total = 0
    for c in reversed(digits):
        x = c - 48
        if doubled:
            x = x * 2
            if x > 9:
                x -= 9
        total += x
        doubled = not doubled
    return total


def luhn_ok(digits: bytes) -> bool:
    """True if an ASCII digit string passes the Luhn check (payment card numbers)."""
    return _luhn_total(digits, False) % 10 == 0


def luhn_digit(partial: bytes) -> int:
    """The check digit that makes ``partial + digit`` Luhn-valid."""
    return (10 - _luhn_total(partial, True) % 10) % 10


def iban_mod97(compact: bytes) -> int:
    """ISO 13616 remainder of an IBAN without spaces (valid IBANs give 1)."""
    s = compact[4:] + compact[:4]
    num = "".join(str(int(chr(c), 36)) for c in s)
    return int(num) % 97
