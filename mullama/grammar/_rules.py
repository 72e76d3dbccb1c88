"""Building blocks of GBNF text: literal escaping, a rule table with stable names, integer ranges."""

from __future__ import annotations

import re

# Characters that must be escaped inside a GBNF "..." literal or [...] class.
_LITERAL_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_CLASS_ESCAPES = {"]": "\\]", "[": "\\[", "\\": "\\\\", "-": "\\-", "^": "\\x5E", "\n": "\\n", "\r": "\\r",
                  "\t": "\\t"}


def _code(c: str) -> str:
    o = ord(c)
    if o < 0x20 or o == 0x7F:
        return f"\\x{o:02X}"
    if 0xD800 <= o <= 0xDFFF:
        raise ValueError(f"lone surrogate U+{o:04X} cannot appear in a grammar")
    return c


def literal(text: str) -> str:
    """``text`` as a GBNF string literal (every character escaped that needs it)."""
    return '"' + "".join(_LITERAL_ESCAPES.get(c) or _code(c) for c in text) + '"'


def class_char(c: str) -> str:
    """One character as it may stand inside a GBNF ``[...]`` class."""
    return _CLASS_ESCAPES.get(c) or _code(c)


_NAME_BAD = re.compile(r"[^a-zA-Z0-9-]+")


class Rules:
    """An ordered table of named rules; equal bodies share one name, clashing names get a suffix."""

    def __init__(self) -> None:
        self._bodies: dict[str, str] = {}

    def add(self, name: str, body: str) -> str:
        base = _NAME_BAD.sub("-", name).strip("-") or "r"
        candidate, n = base, 0
        while candidate in self._bodies and self._bodies[candidate] != body:
            n += 1
            candidate = f"{base}-{n}"
        self._bodies[candidate] = body
        return candidate

    def reserve(self, name: str) -> str:
        """A fresh name whose body comes later (for recursive references)."""
        base = _NAME_BAD.sub("-", name).strip("-") or "r"
        candidate, n = base, 0
        while candidate in self._bodies:
            n += 1
            candidate = f"{base}-{n}"
        self._bodies[candidate] = ""
        return candidate

    def set(self, name: str, body: str) -> None:
        self._bodies[name] = body

    def __contains__(self, name: str) -> bool:
        return name in self._bodies

    def text(self, root: str) -> str:
        lines = [f"root ::= {root}"] if root != "root" else []
        lines += [f"{name} ::= {body}" for name, body in self._bodies.items()]
        return "\n".join(lines) + "\n"


# -- integer ranges ------------------------------------------------------------------------

MAX_DIGITS = 16  # unbounded integers get at most this many digits (so generation ends)


def _same_length(lo: str, hi: str) -> list[str]:
    """Alternatives matching the digit strings from ``lo`` to ``hi`` (equal lengths, leading zeros kept)."""
    if not lo:
        return [""]
    n = len(lo) - 1
    if lo[0] == hi[0]:
        return [_seq(lo[0], alt) for alt in _same_length(lo[1:], hi[1:])]
    if lo[1:] == "0" * n and hi[1:] == "9" * n:
        return [_seq(_digits(lo[0], hi[0]), _any_digits(n))]
    out: list[str] = []
    out += [_seq(lo[0], alt) for alt in _same_length(lo[1:], "9" * n)]
    if int(hi[0]) - int(lo[0]) > 1:
        out.append(_seq(_digits(str(int(lo[0]) + 1), str(int(hi[0]) - 1)), _any_digits(n)))
    out += [_seq(hi[0], alt) for alt in _same_length("0" * n, hi[1:])]
    return out


def _seq(a: str, b: str) -> str:
    if a in "0123456789" and len(a) == 1:
        a = f'"{a}"'
    return f"{a} {b}".strip() if b else a


def _digits(lo: str, hi: str) -> str:
    return f'"{lo}"' if lo == hi else f"[{lo}-{hi}]"


def _any_digits(n: int) -> str:
    return "" if n == 0 else "[0-9]" if n == 1 else f"[0-9]{{{n}}}"


def natural_range(lo: int, hi: int | None) -> str:
    """A GBNF expression for the decimal integers ``lo..hi`` (``hi=None``: no upper bound), lo >= 0."""
    assert lo >= 0 and (hi is None or hi >= lo)
    alts: list[str] = []
    top = hi if hi is not None else 10 ** MAX_DIGITS - 1
    for d in range(len(str(lo)), len(str(top)) + 1):
        first = 0 if d == 1 else 10 ** (d - 1)
        a, b = max(lo, first), min(top, 10 ** d - 1)
        if a > b:
            continue
        if hi is None and a == first and d > len(str(lo)):
            # every longer length is open: one alternative for all of them
            rest = MAX_DIGITS - 1
            lo_len = d - 1
            alts.append(f"[1-9] [0-9]{{{lo_len},{rest}}}" if lo_len < rest else f"[1-9] [0-9]{{{rest}}}")
            break
        alts += _same_length(str(a).zfill(d), str(b).zfill(d))
    return alts[0] if len(alts) == 1 else "(" + " | ".join(alts) + ")"


def integer_range(lo: int | None, hi: int | None) -> str:
    """A GBNF expression for the JSON integers in ``[lo, hi]`` (None: unbounded on that side)."""
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"no integer satisfies minimum {lo} and maximum {hi}")
    alts: list[str] = []
    # negative part: -1 .. lo  (as "-" magnitude)
    if lo is None or lo < 0:
        mag_lo = 1 if hi is None or hi >= 0 else -hi
        mag_hi = None if lo is None else -lo
        if mag_hi is None or mag_hi >= mag_lo:
            alts.append(f'"-" {natural_range(mag_lo, mag_hi)}')
    # non-negative part
    if hi is None or hi >= 0:
        nlo = 0 if lo is None or lo < 0 else lo
        alts.append(natural_range(nlo, hi))
    return alts[0] if len(alts) == 1 else "(" + " | ".join(alts) + ")"
