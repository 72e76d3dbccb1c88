"""A documented subset of regular expressions, turned into GBNF over the characters of a JSON string.

JSON Schema's ``pattern`` is searched for in the *decoded* string; the grammar
constrains the *encoded* JSON text.  So every character the regex admits is
emitted the way it must appear inside a JSON string literal: ``"`` as ``\\"``,
``\\`` as ``\\\\``, control characters as escapes.

Supported: literal characters and escapes (``\\.``, ``\\n``, ``\\t``, ``\\uXXXX``,
``\\xXX``), ``.``, classes ``[a-z_]`` and ``[^...]``, ``\\d \\w \\s`` and
their negations (as their ASCII meaning: a subset of Python's Unicode
classes, so every match is also a match for Python's ``re``), groups
``(...)``, ``(?:...)``, alternation ``|``, quantifiers ``* + ? {m} {m,} {m,n}``
(a lazy ``?`` after them changes nothing here), ``^`` at the start and ``$`` at
the end.  A pattern not anchored by them may have any characters before or
after.  Anything else (backreferences, lookaround, ``\\b``, flags) raises
ValueError naming it.
"""

from __future__ import annotations

from ._rules import Rules

_MAX_CODE = 0x10FFFF
# Characters never written raw inside a JSON string.
_JSON_NEEDS_ESCAPE = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
                      "\t": "\\t"}

Ranges = list[tuple[int, int]]

_DIGIT: Ranges = [(0x30, 0x39)]
_WORD: Ranges = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
_SPACE: Ranges = [(0x09, 0x0D), (0x20, 0x20)]
_PRINTABLE_ASCII: Ranges = [(0x20, 0x7E)]


def _normalize(ranges: Ranges) -> Ranges:
    out: Ranges = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _complement(ranges: Ranges, universe: Ranges | None = None) -> Ranges:
    universe = universe or [(0, _MAX_CODE)]
    out: Ranges = []
    for ulo, uhi in universe:
        cur = ulo
        for lo, hi in _normalize(ranges):
            if hi < cur or lo > uhi:
                continue
            if lo > cur:
                out.append((cur, lo - 1))
            cur = max(cur, hi + 1)
        if cur <= uhi:
            out.append((cur, uhi))
    return out


def _json_chars(ranges: Ranges) -> str:
    """GBNF for one JSON-string character whose decoded value lies in ``ranges``."""
    ranges = [(lo, hi) for lo, hi in _normalize(ranges)]
    raw: Ranges = []
    escaped: list[str] = []
    for lo, hi in ranges:
        # surrogates are not characters; control characters and " \ need escapes
        for a, b in _complement([(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C), (0xD800, 0xDFFF)], [(lo, hi)]):
            raw.append((a, b))
        for c, esc in _JSON_NEEDS_ESCAPE.items():
            if lo <= ord(c) <= hi:
                escaped.append(esc)
    if not raw and not escaped:
        raise ValueError("the pattern has a character class that matches no character")
    from ._rules import class_char, literal
    alts = []
    if raw:
        alts.append("[" + "".join(class_char(chr(a)) if a == b else f"{class_char(chr(a))}-{class_char(chr(b))}"
                                  for a, b in raw) + "]")
    alts += [literal(e) for e in sorted(set(escaped))]
    return alts[0] if len(alts) == 1 else "(" + " | ".join(alts) + ")"


def any_json_char() -> str:
    """Any one character of a JSON string (escapes included), for unconstrained strings."""
    return _json_chars([(0, _MAX_CODE)])


class _Parser:
    def __init__(self, pattern: str, rules: Rules, name: str) -> None:
        self.src = pattern
        self.pos = 0
        self.rules = rules
        self.name = name

    def error(self, what: str) -> ValueError:
        return ValueError(f"pattern {self.src!r}: {what} at offset {self.pos} is not supported")

    def peek(self) -> str:
        return self.src[self.pos] if self.pos < len(self.src) else ""

    def take(self) -> str:
        c = self.src[self.pos]
        self.pos += 1
        return c

    def alternation(self) -> str:
        alts = [self.sequence()]
        while self.peek() == "|":
            self.take()
            alts.append(self.sequence())
        return alts[0] if len(alts) == 1 else "(" + " | ".join(a or '""' for a in alts) + ")"

    def sequence(self) -> str:
        items: list[str] = []
        while self.pos < len(self.src) and self.peek() not in "|)":
            if self.peek() == "$":
                if self.pos == len(self.src) - 1:
                    break  # the end anchor, handled by the caller
                raise self.error("'$' before the end")
            if self.peek() == "^":
                raise self.error("'^' after the start")
            atom = self.atom()
            items.append(self.quantified(atom))
        return " ".join(i for i in items if i)

    def quantified(self, atom: str) -> str:
        c = self.peek()
        if c in ("*", "+", "?"):
            self.take()
            out = f"({atom}){c}"
        elif c == "{" and self._looks_like_count():
            self.take()
            spec = ""
            while self.peek() != "}":
                spec += self.take()
            self.take()
            lo_s, _, hi_s = spec.partition(",")
            lo = int(lo_s) if lo_s else 0
            if "," not in spec:
                out = f"({atom}){{{lo}}}"
            elif hi_s.strip() == "":
                out = f"({atom}){{{lo},}}"
            else:
                hi = int(hi_s)
                if hi < lo:
                    raise ValueError(f"pattern {self.src!r}: {{{spec}}} has max below min")
                out = f"({atom}){{{lo},{hi}}}"
        else:
            return atom
        if self.peek() == "?":  # lazy: the same language
            self.take()
        if self.peek() in ("*", "+", "{"):
            raise self.error("a possessive or repeated quantifier")
        return out

    def _looks_like_count(self) -> bool:
        end = self.src.find("}", self.pos)
        if end < 0:
            return False
        body = self.src[self.pos + 1:end]
        lo, comma, hi = body.partition(",")
        return lo.strip().isdigit() and (not comma or hi.strip() == "" or hi.strip().isdigit())

    def atom(self) -> str:
        c = self.take()
        if c == "(":
            if self.src.startswith("?:", self.pos):
                self.pos += 2
            elif self.peek() == "?":
                raise self.error("a group with '(?'")
            inner = self.alternation()
            if self.peek() != ")":
                raise ValueError(f"pattern {self.src!r}: missing ')'")
            self.take()
            return f"({inner})" if inner else ""
        if c == "[":
            return _json_chars(self.char_class())
        if c == ".":
            return _json_chars(_complement([(0x0A, 0x0A)]))
        if c == "\\":
            ranges = self.escape(in_class=False)
            return _json_chars(ranges)
        if c in "*+?":
            raise self.error(f"a quantifier {c!r} with nothing before it")
        if c == "{" and self._looks_like_count():
            raise self.error("a count with nothing before it")
        return _json_chars([(ord(c), ord(c))])

    def escape(self, in_class: bool) -> Ranges:
        if self.pos >= len(self.src):
            raise ValueError(f"pattern {self.src!r} ends with a lone backslash")
        c = self.take()
        simple = {"n": 0x0A, "t": 0x09, "r": 0x0D, "f": 0x0C, "v": 0x0B, "0": 0x00}
        if c in simple:
            return [(simple[c], simple[c])]
        if c == "d":
            return _DIGIT
        if c == "w":
            return _WORD
        if c == "s":
            return _SPACE
        # The negations stay within printable ASCII: a subset of what Python's
        # Unicode-aware \D, \W, \S match, so every output also matches there.
        if c == "D":
            return _complement(_DIGIT, _PRINTABLE_ASCII)
        if c == "W":
            return _complement(_WORD, _PRINTABLE_ASCII)
        if c == "S":
            return _complement(_SPACE, _PRINTABLE_ASCII)
        if c in "xu":
            n = 2 if c == "x" else 4
            digits = self.src[self.pos:self.pos + n]
            if len(digits) != n or any(ch not in "0123456789abcdefABCDEF" for ch in digits):
                raise ValueError(f"pattern {self.src!r}: \\{c} needs {n} hex digits at offset {self.pos}")
            self.pos += n
            o = int(digits, 16)
            return [(o, o)]
        if c == "b" and in_class:
            return [(0x08, 0x08)]
        if c.isalnum():
            self.pos -= 1
            raise self.error(f"the escape \\{c}")
        return [(ord(c), ord(c))]

    def char_class(self) -> Ranges:
        negate = self.peek() == "^"
        if negate:
            self.take()
        ranges: Ranges = []
        first = True
        while True:
            if self.pos >= len(self.src):
                raise ValueError(f"pattern {self.src!r}: missing ']'")
            c = self.take()
            if c == "]" and not first:
                break
            first = False
            if c == "\\":
                lo_r = self.escape(in_class=True)
            elif c == "[" and self.peek() == ":":
                raise self.error("a POSIX class [:...:]")
            else:
                lo_r = [(ord(c), ord(c))]
            if self.peek() == "-" and self.pos + 1 < len(self.src) and self.src[self.pos + 1] != "]" \
                    and len(lo_r) == 1 and lo_r[0][0] == lo_r[0][1]:
                self.take()
                d = self.take()
                hi_r = self.escape(in_class=True) if d == "\\" else [(ord(d), ord(d))]
                if len(hi_r) != 1 or hi_r[0][0] != hi_r[0][1]:
                    raise self.error("a class range ending in a class escape")
                a, b = lo_r[0][0], hi_r[0][0]
                if b < a:
                    raise ValueError(f"pattern {self.src!r}: bad range {chr(a)}-{chr(b)}")
                ranges.append((a, b))
            else:
                ranges += lo_r
        if negate:
            # [^...] of the pattern: the characters outside, surrogates never included
            return _complement(ranges)
        return ranges


def pattern_to_gbnf(pattern: str, rules: Rules, name: str = "pattern") -> str:
    """A rule for the *contents* of a JSON string (between the quotes) whose text matches ``pattern``."""
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a str, not {type(pattern).__name__}")
    p = _Parser(pattern, rules, name)
    anchored_start = pattern.startswith("^")
    if anchored_start:
        p.pos = 1
    body = p.alternation()
    if p.pos < len(pattern) and pattern[p.pos] == ")":
        raise ValueError(f"pattern {pattern!r}: unbalanced ')' at offset {p.pos}")
    anchored_end = pattern.endswith("$") and not pattern.endswith("\\$") and p.pos == len(pattern) - 1
    if p.pos < len(pattern) and not anchored_end:
        raise p.error(f"{pattern[p.pos]!r}")
    if "|" in pattern and not body.startswith("("):
        body = f"({body})"
    free = f"({any_json_char()})*"
    parts = ([] if anchored_start else [free]) + [body or '""'] + ([] if anchored_end else [free])
    return rules.add(name, " ".join(parts))
