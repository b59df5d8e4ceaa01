"""Labelled evaluation corpus for the guard's PII recognizers (English and Japanese).

Sentences are built from varied templates filled with Faker values (``en_US``, ``ja_JP``, ``en_GB`` and
``de_DE`` for IBANs); every inserted value's span is recorded as it is inserted, so the labels are exact.
Some values are written in full-width digits, some glued to kana/kanji without spaces, as they appear
in Japanese tickets. Hard negatives (order numbers, dates, versions, prices, tracking ids, invalid card
numbers, 12-digit ids without My Number context) measure precision.

    python benchmarks/guard_corpus.py            # writes benchmarks/data/pii_corpus.jsonl (seeded)
"""

from __future__ import annotations

import json
import random
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path

from faker import Faker

OUT = Path(__file__).parent / "data" / "pii_corpus.jsonl"
_FW = str.maketrans(string.digits + "-", "０１２３４５６７８９－")


@dataclass
class Record:
    text: str = ""
    lang: str = "en"
    spans: list[dict[str, object]] = field(default_factory=list)

    def add(self, s: str) -> Record:
        self.text += s
        return self

    def pii(self, entity: str, value: str) -> Record:
        self.spans.append({"type": entity, "start": len(self.text), "end": len(self.text) + len(value)})
        self.text += value
        return self


def my_number(rng: random.Random) -> str:
    body = "".join(rng.choice(string.digits) for _ in range(11))
    digits = [int(c) for c in body][::-1]
    s = sum(p * (n + 1 if n <= 6 else n - 5) for n, p in enumerate(digits, start=1))
    return body + str(0 if s % 11 <= 1 else 11 - s % 11)


def nanp(fake: Faker) -> str:
    """A Faker en_US number whose area code and exchange are dialable (Faker also emits 0xx/1xx ones)."""
    while True:
        value = fake.phone_number()
        digits = "".join(c for c in value.split("x")[0] if c.isdigit())
        digits = digits[1:] if len(digits) == 11 and digits[0] == "1" else digits
        if len(digits) == 10 and digits[0] in "23456789" and digits[3] in "23456789" and digits[1:3] != "11":
            return value


def jp_phone(fake: Faker) -> str:
    """A Faker ja_JP number; its '##-####-####' format lacks the trunk 0 every Japanese number has."""
    value = fake.phone_number()
    return value if value.startswith("0") else "03" + value[2:]


def api_key(rng: random.Random) -> str:
    alnum = string.ascii_letters + string.digits
    kind = rng.randrange(6)
    if kind == 0:
        return "sk-proj-" + "".join(rng.choice(alnum) for _ in range(40))
    if kind == 1:
        return "sk-ant-api03-" + "".join(rng.choice(alnum + "-_") for _ in range(60))
    if kind == 2:
        return "AKIA" + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(16))
    if kind == 3:
        return "ghp_" + "".join(rng.choice(alnum) for _ in range(36))
    if kind == 4:
        return "xoxb-" + "-".join("".join(rng.choice(string.digits) for _ in range(12)) for _ in range(2))
    return "AIza" + "".join(rng.choice(alnum + "-_") for _ in range(35))


def build(seed: int = 20261124, per_template: int = 12) -> list[dict[str, object]]:
    rng = random.Random(seed)
    Faker.seed(seed)
    en, ja, gb, de = Faker("en_US"), Faker("ja_JP"), Faker("en_GB"), Faker("de_DE")
    cards = ["visa16", "mastercard", "amex", "jcb16", "discover", "diners", "maestro", "visa13"]
    out: list[Record] = []

    def fw(s: str) -> str:  # full-width digits for a third of Japanese values
        return s.translate(_FW) if rng.random() < 0.33 else s

    en_templates = [
        lambda r: r.add("Please contact me at ").pii("EMAIL", en.email()).add(" about the refund."),
        lambda r: r.add("You can reach our office on ").pii("PHONE", nanp(en)).add(" during business hours."),
        lambda r: r.add("Charge the card ").pii("CREDIT_CARD", en.credit_card_number(rng.choice(cards))).add(" again."),
        lambda r: r.add("Her SSN is ").pii("US_SSN", en.ssn()).add(" per the form."),
        lambda r: r.add("Login attempts from ").pii("IP_ADDRESS", en.ipv4_public()).add(" were blocked."),
        lambda r: r.add("The host ").pii("IP_ADDRESS", en.ipv6()).add(" is unreachable."),
        lambda r: r.add("Wire it to IBAN ").pii("IBAN", rng.choice([gb, de]).iban()).add(" by Friday."),
        lambda r: r.add("Oops, I pasted our key ").pii("API_KEY", api_key(rng)).add(" in the chat."),
        lambda r: r.add("Dear Mr. ").pii("PERSON", en.last_name()).add(", thank you for your order."),
        lambda r: r.add("Hello, my name is ").pii("PERSON", en.name()).add(" and I need help."),
        lambda r: r.add("Ping ").pii("EMAIL", en.company_email()).add(" or call ").pii("PHONE", nanp(en)).add("."),
        lambda r: (
            r.add("International: ").pii("PHONE", "+44 20 7946 0" + str(rng.randrange(100, 999))).add(" (London).")
        ),
    ]
    ja_templates = [
        lambda r: r.add("連絡先は").pii("EMAIL", ja.email()).add("までお願いします。"),
        lambda r: r.add("電話番号：").pii("PHONE", fw(jp_phone(ja))).add("（平日のみ）"),
        lambda r: r.add("携帯").pii("PHONE", fw(jp_phone(ja).replace("-", ""))).add("に折り返してください。"),
        lambda r: r.add("カード番号は").pii("CREDIT_CARD", fw(ja.credit_card_number(rng.choice(cards)))).add("です。"),
        lambda r: r.add("マイナンバーは").pii("MY_NUMBER", fw(my_number(rng))).add("です。"),
        lambda r: r.add("個人番号：").pii("MY_NUMBER", my_number(rng)).add("（本人確認済み）"),
        lambda r: (
            r.add("〒").pii("JP_POSTAL_CODE", fw(ja.postcode())).add(" " + ja.prefecture() + ja.city() + "に発送。")
        ),
        lambda r: r.add("接続元IPは").pii("IP_ADDRESS", ja.ipv4_public()).add("でした。"),
        lambda r: r.add("APIキー").pii("API_KEY", api_key(rng)).add("が漏洩しました。"),
        lambda r: r.add("").pii("PERSON", ja.last_name() + ja.first_name()).add("様、いつもお世話になっております。"),
        lambda r: r.add("担当の").pii("PERSON", ja.last_name()).add("さんに確認します。"),
        lambda r: r.add("メール").pii("EMAIL", ja.email()).add("、電話").pii("PHONE", fw(jp_phone(ja))).add("まで。"),
    ]
    for templates, lang in ((en_templates, "en"), (ja_templates, "ja")):
        for t in templates:
            for _ in range(per_template):
                out.append(t(Record(lang=lang)))

    invalid_card = lambda: (lambda d: d[:-1] + str((int(d[-1]) + 1) % 10))(en.credit_card_number("visa16"))  # noqa: E731
    negatives_en = [
        lambda: f"Order {rng.randrange(10**11, 10**12)} shipped in {rng.randrange(2, 9)} boxes.",
        lambda: f"Tracking number 1Z{rng.getrandbits(64):016X} is in transit.",
        lambda: f"Release v{rng.randrange(1, 9)}.{rng.randrange(0, 20)}.{rng.randrange(0, 50)} fixes the login bug.",
        lambda: f"The invoice total is ${rng.randrange(100, 99999):,}.{rng.randrange(0, 99):02d} due {en.date()}.",
        lambda: f"Card {invalid_card()} was declined (not a valid number).",
        lambda: (
            f"Ticket #{rng.randrange(10000, 99999)} was escalated at {rng.randrange(1, 12)}:{rng.randrange(0, 59):02d}."
        ),
        lambda: f"Part number {rng.randrange(100, 999)}-{rng.randrange(1000, 9999)} is back in stock.",
        lambda: "How do I rotate my API key safely? Where is the secret stored?",
        lambda: (
            f"We measured {rng.randrange(100, 999)}.{rng.randrange(0, 9)} ms at p95 over {rng.randrange(2, 30)} days."
        ),
    ]
    negatives_ja = [
        lambda: f"注文番号{rng.randrange(10**11, 10**12)}の商品を発送しました。",
        lambda: (
            f"伝票番号{rng.randrange(1000, 9999)}-{rng.randrange(1000, 9999)}-{rng.randrange(10, 99)}をご確認ください。"
        ),
        lambda: f"{rng.randrange(2020, 2027)}年{rng.randrange(1, 12)}月{rng.randrange(1, 28)}日に納品予定です。",
        lambda: f"合計金額は{rng.randrange(1000, 999999):,}円（税込）です。",
        lambda: "マイナンバー制度について教えてください。",
        lambda: f"型番{rng.choice('ABCDEFG')}{rng.randrange(100, 999)}-{rng.randrange(10, 99)}の在庫があります。",
        lambda: f"会議室{rng.randrange(100, 999)}で{rng.randrange(9, 18)}時から打ち合わせです。",
    ]
    for gens, lang in ((negatives_en, "en"), (negatives_ja, "ja")):
        for g in gens:
            for _ in range(per_template):
                out.append(Record(text=g(), lang=lang))
    return [{"text": r.text, "lang": r.lang, "spans": r.spans} for r in out]


def main() -> int:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    rows = build()
    with OUT.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    spans = sum(len(r["spans"]) for r in rows)  # type: ignore[arg-type]
    print(f"wrote {len(rows)} records with {spans} labelled spans to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
