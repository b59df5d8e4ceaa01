"""PII detection: Presidio's analyzer with pattern and checksum recognizers, no downloadable model.

* :class:`presidio_analyzer.AnalyzerEngine` runs on a :class:`NoOpNlpEngine`; every recognizer is a
  :class:`presidio_analyzer.PatternRecognizer` compiled with ``regex.ASCII`` (so ``\\b``/``\\w`` treat
  kana and kanji as boundaries: ``連絡先はtaro@example.comまで`` is found), with a checksum or context
  validation where the type has one (Luhn + issuer ranges, My Number check digit + context words,
  IBAN mod-97, ``phonenumbers`` validity, IP parsing).
* Text is folded for detection (full-width → ASCII, zero-width characters dropped, dash variants between
  digits → ``-``); offsets are mapped back to the original text.
* Recognizer sets are chosen per language deliberately: text containing kana/kanji is analysed with the
  Japanese set (Japanese postal codes, names before honorifics) and without the US-only ones (SSN), so
  order numbers in Japanese tickets are not taken for US identifiers.
* Japanese person names through GiNZA (``ja-ginza``, optional extra ``ja``) when the policy enables it;
  the pipeline is loaded once per process.

:func:`register_recognizer` is the one way to add a recognizer; the built-ins use it too.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import logging
import threading
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import regex

log = logging.getLogger("llmops.pii")
logging.getLogger("presidio-analyzer").setLevel(logging.WARNING)  # it logs every analyze() at INFO

LANGUAGES = ("en", "ja")
STRUCTURED = ("EMAIL", "PHONE", "CREDIT_CARD", "MY_NUMBER", "IP_ADDRESS", "API_KEY", "PRIVATE_KEY")

# -- folding ----------------------------------------------------------------------------------------
# Invisible characters that hide or split text: zero-width, soft hyphen, word joiner, bidi controls,
# the variation selectors and the Unicode "tag" block (ASCII smuggling).
_INVISIBLE = {
    *range(0x200B, 0x2010),
    0x00AD,
    0x034F,
    0x061C,
    0x180E,
    *range(0x2060, 0x2070),
    *range(0x202A, 0x202F),
    0xFEFF,
    *range(0xFE00, 0xFE10),
    *range(0xE0000, 0xE0080),
}
_DASHES = set("‐‑‒–—―−ー－﹣")


def is_invisible(ch: str) -> bool:
    return ord(ch) in _INVISIBLE


_STRIP_INVISIBLE = dict.fromkeys(_INVISIBLE)


def strip_invisible(text: str) -> str:
    return text if text.isascii() else text.translate(_STRIP_INVISIBLE)


# Characters NFKC leaves alone need no work: ASCII, hiragana, full-width katakana, CJK ideographs and
# the common Japanese punctuation. Everything else (full-width forms, half-width katakana, invisible
# characters, compatibility characters, dashes) goes through the per-character fold.
_NEEDS_FOLD = regex.compile(
    r"[^\x00-\x7F\u3001-\u3002\u3005\u300C-\u300F\u3041-\u3096\u30A1-\u30FA\u30FC\u4E00-\u9FFF]+"
)


def fold(text: str) -> tuple[str, Sequence[int]]:
    """NFKC-fold each character (full-width digits/letters → ASCII), drop invisible characters and turn
    dash variants between digits into ``-``.

    Returns the folded text and, for each folded character, the index of its source character.
    """
    if text.isascii():  # nothing to fold: offsets are the identity (the scan below cost 15 µs per 2 KB)
        return text, range(len(text))
    out: list[str] = []
    index: list[int] = []
    last = 0
    for m in _NEEDS_FOLD.finditer(text):
        if m.start() > last:  # an untouched run: copied, its offsets are a range
            out.append(text[last : m.start()])
            index.extend(range(last, m.start()))
        for i in range(m.start(), m.end()):
            ch = text[i]
            if ord(ch) in _INVISIBLE:
                continue
            folded = "-" if ch in _DASHES and _between_digits(text, i) else unicodedata.normalize("NFKC", ch)
            out.append(folded)
            index.extend([i] * len(folded))
        last = m.end()
    if last == 0:  # nothing to fold: offsets are the identity
        return text, range(len(text))
    out.append(text[last:])
    index.extend(range(last, len(text)))
    return "".join(out), index


def _between_digits(text: str, i: int) -> bool:
    prev = unicodedata.normalize("NFKC", text[i - 1]) if i > 0 else ""
    nxt = unicodedata.normalize("NFKC", text[i + 1]) if i + 1 < len(text) else ""
    return prev[-1:].isdigit() and nxt[:1].isdigit()


_CJK = regex.compile(r"[\p{Hiragana}\p{Katakana}\p{Han}]")


def language_of(text: str) -> str:
    """'ja' when the text contains kana or kanji, else 'en'."""
    return "ja" if not text.isascii() and _CJK.search(text) else "en"


# -- checksums ------------------------------------------------------------------------------------
_NOT_DIGIT = regex.compile(r"[^0-9]")


def _digits(s: str) -> str:
    return _NOT_DIGIT.sub("", s)


def luhn_ok(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = int(ch)
        if i % 2 == parity:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_issuer(digits: str) -> str | None:
    """The card network of a PAN by its issuer range (IIN), or None if no current range matches."""
    n = len(digits)
    p2, p3, p4, p6 = int(digits[:2]), int(digits[:3]), int(digits[:4]), int(digits[:6])
    if digits[0] == "4" and n in (13, 16, 19):
        return "visa"
    if (51 <= p2 <= 55 or 2221 <= p4 <= 2720) and n == 16:
        return "mastercard"
    if p2 in (34, 37) and n == 15:
        return "amex"
    if 3528 <= p4 <= 3589 and 16 <= n <= 19:
        return "jcb"
    if (300 <= p3 <= 305 or p2 in (36, 38, 39) or p4 == 3095) and 14 <= n <= 19:
        return "diners"
    if (p4 == 6011 or 644 <= p3 <= 649 or p2 == 65 or 622126 <= p6 <= 622925) and 16 <= n <= 19:
        return "discover"
    if p2 == 62 and 16 <= n <= 19:
        return "unionpay"
    if (p2 == 50 or 56 <= p2 <= 69) and 12 <= n <= 19:
        return "maestro"
    if 2200 <= p4 <= 2204 and n == 16:
        return "mir"
    return None


def my_number_ok(digits: str) -> bool:
    """Check digit of the Japanese Individual Number (12 digits)."""
    if len(digits) != 12 or not digits.isdigit():
        return False
    body = [int(c) for c in digits[:11]][::-1]
    s = sum(p * (n + 1 if n <= 6 else n - 5) for n, p in enumerate(body, start=1))
    check = 0 if s % 11 <= 1 else 11 - s % 11
    return check == int(digits[11])


_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24,
    "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21,
    "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27,
    "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24,
    "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_ok(value: str) -> bool:
    s = "".join(value.split()).upper()
    if _IBAN_LENGTHS.get(s[:2]) != len(s):
        return False
    moved = s[4:] + s[:4]
    try:
        return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1
    except ValueError:
        return False


def ssn_ok(value: str) -> bool:
    d = _digits(value)
    area, group, serial = d[:3], d[3:5], d[5:]
    return area not in ("000", "666") and not area.startswith("9") and group != "00" and serial != "0000"


_EXTENSION = regex.compile(r"\s?(?:x|ext\.?)\s?\d{1,5}$")


@functools.lru_cache(maxsize=4096)
def phone_ok(value: str, region: str) -> bool:
    """A plausible phone number. Domestic Japanese and North American numbers are checked by their
    numbering plans (fast); international ``+`` numbers by ``phonenumbers``' metadata. An extension
    (``x123``, ``ext. 123``) is not part of the check."""
    value = _EXTENSION.sub("", value)
    digits = _digits(value)
    if not 9 <= len(digits) <= 15 or len(set(digits)) <= 2:
        return False
    if value.lstrip().startswith("+"):
        import phonenumbers

        try:  # possible (length per country), not "assigned": new area codes must not slip through
            return bool(phonenumbers.is_possible_number(phonenumbers.parse(value, None)))
        except phonenumbers.NumberParseException:
            return False
    if digits.startswith("0"):  # Japanese domestic: 0 + 9 digits (landline, 0120/0800) or 0[5789]0 + 8
        if digits[1:3] in ("50", "70", "80", "90"):
            return len(digits) == 11
        if digits.startswith(("0120", "0800")):
            return len(digits) in (10, 11)
        return len(digits) == 10 and digits[1] != "0"
    # North American Numbering Plan: NPA and NXX start with 2-9, NPA is not N11
    if len(digits) == 11 and digits[0] == "1":
        digits = digits[1:]
    return len(digits) == 10 and digits[0] in "23456789" and digits[3] in "23456789" and digits[1:3] != "11"


def ip_ok(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


# -- recognizers ----------------------------------------------------------------------------------
Validator = Callable[[str, str, int, int], bool]  # (match text, whole folded text, start, end) -> keep?


@dataclass(frozen=True)
class RecognizerSpec:
    """One recognizer: entity type, languages it runs for, regex(es) on folded text, score and an
    optional validator that sees the match *and its surroundings* (checksums, context words)."""

    entity: str
    patterns: tuple[str, ...]
    score: float = 0.85
    languages: tuple[str, ...] = LANGUAGES
    validate: Validator | None = None
    name: str = ""
    ascii: bool = True  # False for patterns that use Unicode classes such as \p{Han}
    prefilter: str | None = None  # a cheap regex that must match somewhere before the patterns run
    # cheaper still: one of these strings must occur (in the lower-cased text with ``literals_lower``) — C-speed
    # substring tests, where an alternation of literals costs ``regex`` 30-120 µs per 2 KB record
    literals: tuple[str, ...] = ()
    literals_lower: bool = False
    # where a match of the patterns can start: they are tried there alone (``match``) instead of searched
    # for through the whole text (look-behinds still see the text before). It must find every possible
    # start: a look-behind that no position inside a match passes keeps candidates from hiding in others
    starts: str | None = None


_SPECS: list[RecognizerSpec] = []
_lock = threading.Lock()


def register_recognizer(spec: RecognizerSpec) -> None:
    """Add a recognizer (before or after the engine is built: the engine is rebuilt on change)."""
    with _lock:
        _SPECS.append(spec)
        _engine.cache_clear()


def recognizers() -> list[RecognizerSpec]:
    return list(_SPECS)


def _context(words: Iterable[str], before: int = 40, after: int = 20) -> Validator:
    lowered = tuple(w.lower() for w in words)

    def check(_m: str, text: str, start: int, end: int) -> bool:
        window = text[max(0, start - before) : end + after].lower()
        return any(w in window for w in lowered)

    return check


def _all(*checks: Validator) -> Validator:
    return lambda m, t, s, e: all(c(m, t, s, e) for c in checks)


_CARD_CONTEXT = ("card", "カード", "クレジット", "credit", "visa", "決済", "pan")


def _card(m: str, t: str, s: int, e: int) -> bool:
    """Luhn-valid, and either in a current issuer range or named as a card nearby."""
    d = _digits(m)
    if not (12 <= len(d) <= 19 and luhn_ok(d)):
        return False
    return card_issuer(d) is not None or _context(_CARD_CONTEXT, before=30, after=10)(m, t, s, e)


def _phone(region: str) -> Validator:
    return lambda m, _t, _s, _e: phone_ok(m, region)


_PHONE_CONTEXT = ("call", "phone", "tel", "reach", "contact", "mobile", "cell", "fax", "text me", "number")
_MY_NUMBER_CONTEXT = ("マイナンバー", "個人番号", "my number", "mynumber", "individual number")
_NAME_CONTEXT_EN = (
    r"(?:(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof)\.?\s+|(?i:my name is|name\s*:|dear|signed|regards,?|contact person:?)\s+)"
)
_CAP = r"(?!(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof)\b)[A-Z][a-z]+(?:[-'][A-Z]?[a-z]+)?"

for _spec in (
    RecognizerSpec(
        "PRIVATE_KEY",
        (
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?"
            r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----",
        ),
        1.0,
        prefilter="-----BEGIN",
    ),
    RecognizerSpec(
        "API_KEY",
        (
            r"(?<![A-Za-z0-9_\-])(?:sk-(?:proj-|ant-(?:api\d\d-)?|svcacct-)?[A-Za-z0-9_\-]{20,}"
            r"|(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}"
            r"|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,}"
            r"|xox[abposr]-[A-Za-z0-9\-]{10,}|AIza[0-9A-Za-z_\-]{35}"
            r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}|glpat-[A-Za-z0-9_\-]{20}"
            r"|eyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,})(?![A-Za-z0-9_\-])",
        ),
        0.95,
        literals=(
            *("sk-", "sk_", "rk_", "pk_", "AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA"),
            *("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xox", "AIza", "glpat-", "eyJ"),
        ),
    ),
    RecognizerSpec(
        "API_KEY",
        (
            # secrets by assignment context: aws_secret_access_key = ..., password: ..., api_key="..."
            # (only the value, group "v", is the finding)
            r"(?i:secret|password|passwd|api[_\-]?key|access[_\-]?key|token|client[_\-]?secret)[\"']?\s*[:=]\s*"
            r"[\"']?(?P<v>[A-Za-z0-9/+_\-]{16,})",
        ),
        0.95,
        name="API_KEY_ASSIGNED",
        prefilter=r"[:=]\s*[\"']?[A-Za-z0-9/+_\-]{16}",  # a long value after ':' or '=' (clock times have none)
    ),
    RecognizerSpec(
        "EMAIL",
        (r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}(?![A-Za-z])",),
        0.95,
        prefilter="@",
    ),
    RecognizerSpec(
        "IBAN",
        (r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?![A-Za-z0-9])",),
        0.95,
        validate=lambda m, _t, _s, _e: iban_ok(m),
        prefilter=r"[A-Z]{2}\d\d",
    ),
    RecognizerSpec(
        "CREDIT_CARD",
        (r"(?<![\d\-])\d(?:[ \-]?\d){11,18}(?![\d\-])",),
        0.95,
        validate=_card,
    ),
    RecognizerSpec(
        "MY_NUMBER",
        (r"(?<![\d\-])\d{4}[ \-]?\d{4}[ \-]?\d{4}(?![\d\-])",),
        0.95,
        validate=_all(lambda m, _t, _s, _e: my_number_ok(_digits(m)), _context(_MY_NUMBER_CONTEXT)),
        # the validator needs a context word near the match: without one anywhere, nothing can pass
        literals=_MY_NUMBER_CONTEXT,
        literals_lower=True,
    ),
    RecognizerSpec(
        "PHONE",
        (
            r"(?<![\w+\-])\+\d{1,3}[ \-.]?(?:\(0?\d{1,4}\)|\d{1,4})(?:[ \-.]?\d{2,4}){1,3}(?![\w\-])",
            r"(?<![\w\-])\(?0\d{1,4}\)?[ \-]?\d{1,4}[ \-]?\d{3,4}(?![\w\-])",
        ),
        0.9,
        languages=("ja",),
        validate=_phone("JP"),
        name="PHONE_JP",
    ),
    RecognizerSpec(
        "PHONE",
        (
            r"(?<![\w+\-])\+\d{1,3}[ \-.]?(?:\(0?\d{1,4}\)|\d{1,4})(?:[ \-.]?\d{2,4}){1,3}"
            r"(?:\s?(?:x|ext\.?)\s?\d{1,5})?(?![\w\-])",
            r"(?<![\w\-(])(?:\(\d{3}\) ?|\d{3}[\-. ])\d{3}[\-. ]\d{4}(?:\s?(?:x|ext\.?)\s?\d{1,5})?(?![\w\-])",
            r"(?<![\w\-])0\d{1,4}[ \-]\d{1,4}[ \-]\d{3,4}(?![\w\-])",
        ),
        0.9,
        languages=("en",),
        validate=_phone("US"),
        name="PHONE_EN",
    ),
    RecognizerSpec(  # ten digits in a row are a phone number only when the text says so
        "PHONE",
        (r"(?<![\w\-])1?[2-9]\d{2}[2-9]\d{6}(?![\w\-])",),
        0.8,
        languages=("en",),
        validate=_all(_phone("US"), _context(_PHONE_CONTEXT, before=30, after=5)),
        name="PHONE_EN_DIGITS",
        prefilter=r"\d{10}",
        starts=r"(?<![\w\-])[1-9]\d{9}",  # its look-behind tried at every character cost 0.13 ms per 2 KB
    ),
    RecognizerSpec(
        "US_SSN", (r"(?<![\d\-])\d{3}-\d{2}-\d{4}(?![\d\-])",), 0.85, ("en",), lambda m, _t, _s, _e: ssn_ok(m)
    ),
    RecognizerSpec(
        "IP_ADDRESS",
        (r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])",),
        0.9,
        validate=lambda m, _t, _s, _e: ip_ok(m),
        prefilter=r"\d\.\d",
    ),
    RecognizerSpec(  # its own prefilter: hex words are everywhere in prose, hex digits around a colon are not
        "IP_ADDRESS",
        (
            r"(?<![:\w])(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}(?![:\w])"
            r"|(?<![:\w])(?:[0-9a-fA-F]{1,4}:){1,6}:(?:[0-9a-fA-F]{1,4}:){0,5}[0-9a-fA-F]{1,4}(?![:\w])",
        ),
        0.9,
        validate=lambda m, _t, _s, _e: ip_ok(m),
        name="IP_ADDRESS_V6",
        prefilter=r"[0-9a-fA-F]:[0-9a-fA-F:]",
        starts=r"(?<![:\w])[0-9a-fA-F]{1,4}:[0-9a-fA-F:]",  # clock times pass the prefilter, few pass this
    ),
    RecognizerSpec(
        "JP_POSTAL_CODE", (r"〒\s?(?P<v>\d{3}-?\d{4})(?![\d\-])",), 0.9, name="JP_POSTAL_CODE_MARK", prefilter="〒"
    ),
    RecognizerSpec(
        "JP_POSTAL_CODE",
        (r"(?<![\d\-])\d{3}-\d{4}(?![\d\-])",),
        0.6,
        ("ja",),
        _context(("郵便", "住所", "都", "道", "府", "県", "postal", "zip"), before=15, after=12),
    ),
    RecognizerSpec("PERSON", (rf"(?<={_NAME_CONTEXT_EN}){_CAP}(?: {_CAP}){{0,2}}",), 0.75, ("en",), name="PERSON_EN"),
    RecognizerSpec(
        "PERSON",
        (
            r"(?<![\p{Han}\p{Katakana}])[\p{Han}々]{1,3}[ 　]?[\p{Han}々]{1,3}"
            r"(?=[ 　]?(?:様|さん|氏|殿|先生|くん|ちゃん))",
            r"(?<![\p{Han}\p{Katakana}])[\p{Katakana}ー]{2,6}[ 　・]?[\p{Katakana}ー]{2,6}(?=[ 　]?(?:様|さん|氏|殿))",
            r"(?<=(?:氏名|名前|お名前|担当者?)[:：]\s?)[\p{Han}々]{1,3}[ 　]?[\p{Han}々\p{Hiragana}]{1,3}",
        ),
        0.75,
        ("ja",),
        name="PERSON_JA",
        ascii=False,
    ),
):
    _SPECS.append(_spec)


def _anchored(pattern: Any, starts: Any, text: str) -> Iterator[Any]:
    """The matches of ``pattern`` that begin where ``starts`` matches, without overlaps (as finditer)."""
    end = 0
    for a in starts.finditer(text):
        if a.start() < end:
            continue
        m = pattern.match(text, a.start())
        if m is not None:
            end = max(m.end(), a.start() + 1)
            yield m


# -- Presidio -------------------------------------------------------------------------------------
_FLAGS = regex.ASCII | regex.MULTILINE | regex.VERSION0


def _presidio_recognizer(spec: RecognizerSpec, language: str) -> Any:
    """A Presidio recognizer for one spec. It matches with its own loop (a validator that sees the match
    in context, an optional value group ``v``, a prefilter) and skips Presidio's per-match explanation
    objects, which cost more than the regexes themselves on long records."""
    from presidio_analyzer import Pattern, PatternRecognizer, RecognizerResult

    flags = _FLAGS if spec.ascii else _FLAGS & ~regex.ASCII
    compiled = [regex.compile(p, flags) for p in spec.patterns]
    prefilter = regex.compile(spec.prefilter, flags) if spec.prefilter else None
    literals, lower = spec.literals, spec.literals_lower
    starts = regex.compile(spec.starts, flags) if spec.starts else None
    name = spec.name or spec.entity

    class _Recognizer(PatternRecognizer):
        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None, regex_flags: Any = None) -> Any:
            if prefilter is not None and prefilter.search(text) is None:
                return []
            if literals:
                haystack = text.lower() if lower else text
                if not any(w in haystack for w in literals):
                    return []
            found = []
            for pattern in compiled:
                group = "v" if "v" in pattern.groupindex else 0
                matches = pattern.finditer(text) if starts is None else _anchored(pattern, starts, text)
                for m in matches:
                    start, end = m.span(group)
                    if start == end:
                        continue
                    if spec.validate is not None and not spec.validate(text[start:end], text, start, end):
                        continue
                    meta = {
                        RecognizerResult.RECOGNIZER_NAME_KEY: name,
                        RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                    }
                    found.append(RecognizerResult(spec.entity, start, end, spec.score, recognition_metadata=meta))
            return found

    patterns = [Pattern(f"{spec.entity}_{i}", p, spec.score) for i, p in enumerate(spec.patterns)]
    return _Recognizer(
        supported_entity=spec.entity,
        name=name,
        supported_language=language,
        patterns=patterns,
        global_regex_flags=flags,
    )


@functools.cache
def _engine(ja_names: bool) -> Any:
    from presidio_analyzer import AnalyzerEngine, EntityRecognizer, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NoOpNlpEngine

    class _Engine(AnalyzerEngine):
        """Presidio's analyzer with what is the same for every text of a language worked out once: the
        supported entities (``analyze`` listed every recognizer's anew per call) and the NLP artifacts —
        the no-op engine's are empty whatever the text, and building them made a spaCy ``Doc`` per call."""

        def __init__(self, **kwargs: Any) -> None:
            self.skip_context = False
            self.entities: dict[str, list[str]] = {}
            self.artifacts: dict[str, Any] = {}
            super().__init__(**kwargs)

        def get_supported_entities(self, language: str | None = None) -> list[str]:
            if language in self.entities:
                return list(self.entities[language])
            return list(super().get_supported_entities(language))

        def _enhance_using_context(
            self, text: str, raw_results: Any, nlp_artifacts: Any, recognizers: Any, context: Any = None
        ) -> Any:
            if self.skip_context:
                return raw_results
            return super()._enhance_using_context(text, raw_results, nlp_artifacts, recognizers, context)

    recs = [_presidio_recognizer(s, lang) for s in _SPECS for lang in s.languages]
    if ja_names:
        recs.append(GinzaPersonRecognizer())
    registry = RecognizerRegistry(recognizers=recs, global_regex_flags=_FLAGS, supported_languages=list(LANGUAGES))
    nlp = NoOpNlpEngine(models=[{"lang_code": lang, "model_name": "noop"} for lang in LANGUAGES])
    engine = _Engine(
        registry=registry,
        nlp_engine=nlp,
        supported_languages=list(LANGUAGES),
        context_aware_enhancer=_NoContext(),  # context is checked by the validators, on the folded text
    )
    # Presidio's context step regroups the results by recognizer — two scans of every result per recognizer
    # (~1,200 comparisons on a record with 25 findings) — only to hand each group to a no-op: none of these
    # recognizers enhances by context (the validators check context, on the folded text) and the enhancer is
    # _NoContext. The results are already grouped in recognizer order, so skipping it changes nothing.
    no_op = EntityRecognizer.enhance_using_context
    engine.skip_context = all(type(r).enhance_using_context is no_op for r in recs)
    engine.entities = {lang: engine.get_supported_entities(lang) for lang in LANGUAGES}
    engine.artifacts = {lang: nlp.process_text("", lang) for lang in LANGUAGES}
    return engine


def _no_context_class() -> Any:
    from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer

    class _Cls(ContextAwareEnhancer):
        def __init__(self) -> None:
            super().__init__(
                context_similarity_factor=0,
                min_score_with_context_similarity=0,
                context_prefix_count=0,
                context_suffix_count=0,
            )

        def enhance_using_context(
            self, text: str, raw_results: Any, nlp_artifacts: Any, recognizers: Any, context: Any = None
        ) -> Any:
            return raw_results

    return _Cls


def _NoContext() -> Any:
    return _no_context_class()()


# -- Japanese names through GiNZA (optional) ------------------------------------------------------
class NamePipelineUnavailable(RuntimeError):
    pass


@functools.cache
def ginza() -> Any:
    """The ja_ginza spaCy pipeline, loaded once per process (≈ 3 s, ≈ 760 MB)."""
    try:
        import spacy

        nlp = spacy.load("ja_ginza", exclude=["compound_splitter", "bunsetu_recognizer"])
    except (ImportError, OSError) as exc:
        raise NamePipelineUnavailable(
            "the Japanese name pipeline is enabled but ja-ginza is not installed — "
            "fix: uv sync --extra ja, or set guard.ja_name_pipeline: false"
        ) from exc
    log.info("loaded the ja_ginza name pipeline")
    return nlp


def _ginza_class() -> Any:
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    class _Ginza(EntityRecognizer):
        def __init__(self) -> None:
            super().__init__(supported_entities=["PERSON"], name="PERSON_JA_GINZA", supported_language="ja")

        def load(self) -> None:
            ginza()

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            doc = ginza()(text)
            return [
                RecognizerResult("PERSON", ent.start_char, ent.end_char, 0.7)
                for ent in doc.ents
                if ent.label_ == "Person" and len(ent.text.strip()) >= 2
            ]

    return _Ginza


def GinzaPersonRecognizer() -> Any:
    return _ginza_class()()


# -- the detector ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    pii_type: str
    start: int  # offsets in the original text
    end: int
    score: float = 1.0


_THRESHOLD = 0.5


def detect(text: str, *, ja_names: bool = False) -> list[Finding]:
    """PII findings in ``text`` (offsets into the original), non-overlapping, in text order."""
    if not text:
        return []
    folded, index = fold(text)
    if not folded.strip():
        return []
    language = language_of(folded)
    engine = _engine(ja_names and language == "ja")
    results = engine.analyze(
        text=folded, language=language, score_threshold=_THRESHOLD, nlp_artifacts=engine.artifacts[language]
    )
    # Non-overlapping: highest score first, then the longer span. The chosen spans are kept sorted (being
    # disjoint, by start and end alike), so a candidate is checked against its two neighbours only.
    chosen: list[Any] = []
    starts: list[int] = []
    for r in sorted(results, key=lambda r: (-r.score, -(r.end - r.start), r.start)):
        i = bisect.bisect_left(starts, r.start)
        if (i == 0 or chosen[i - 1].end <= r.start) and (i == len(chosen) or r.end <= chosen[i].start):
            chosen.insert(i, r)
            starts.insert(i, r.start)
    return [Finding(r.entity_type, index[r.start], index[r.end - 1] + 1, round(float(r.score), 3)) for r in chosen]


def warm_up(*, ja_names: bool = False) -> None:
    """Build the analyzer (and load the name pipeline) now rather than on the first record."""
    detect("warm-up 090-0000-0000 太郎", ja_names=ja_names)
