"""The demo's data: term pairs of any language and its source language from the CLDR data babel ships.

CLDR names the same things in every language: territories, languages, scripts, currencies, months, days,
cities... A pair is one key named in both languages. The demo translates from the source (Chinese by default,
or English) into the language it teaches (Tibetan by default).
"""
from __future__ import annotations

import hashlib

import regex

from semgrpo.errors import UserError
from semgrpo.script import script_consistent, script_profile
from semgrpo.script.languages import check_language, language_name, language_script
from semgrpo.script.tables import SCRIPT_CLASSES

# Fewer pairs than this leave too few for the split (the dev set feeds tau's 32 prompts) and for the
# tiny model to learn from: the Tibetan demo has 282.
MIN_PAIRS = 250
# More pairs than this are cut down to it, so that every language's demo is the size of the Tibetan one
# (and takes its time): the categories of TRIM_ORDER are kept whole in that order, the last one partly
# (by a hash of the id, not alphabetically). ug, am and km have 1,300-1,400 pairs.
MAX_PAIRS = 300
TRIM_ORDER = ("territory", "month", "day", "quarter", "era", "measurement", "language", "script", "currency",
              "variant", "city")
_PLACEHOLDER = regex.compile(r"[{}]")


class DemoError(UserError):
    """The demo cannot be built for the requested languages (unknown code, too few CLDR pairs)."""


def check_pair(language: str, source: str) -> None:
    """Both are CLDR locales and differ, else a DemoError naming what is wrong."""
    for key, code in (("demo.language", language), ("demo.source", source)):
        try:
            check_language(code)
        except ValueError as exc:
            raise DemoError(f"{key}: {exc}") from None
    if language == source:
        raise DemoError(f"demo.language and demo.source are both {language!r}: the demo translates between two "
                        "languages")


def cldr_sources(language: str, source: str) -> list[tuple[str, dict, dict]]:
    """(category, mapping in `language`, mapping in `source`) for every CLDR category the demo uses."""
    from babel import Locale

    lang, src = Locale.parse(language), Locale.parse(source)

    def wide(data, context="format"):
        return dict(data[context]["wide"])

    def cities(locale):
        return {k: v.get("city") for k, v in locale.time_zones.items()}

    return [
        ("language", dict(lang.languages), dict(src.languages)),
        ("territory", dict(lang.territories), dict(src.territories)),
        ("script", dict(lang.scripts), dict(src.scripts)),
        ("currency", dict(lang.currencies), dict(src.currencies)),
        ("variant", dict(lang.variants), dict(src.variants)),
        ("measurement", dict(lang.measurement_systems), dict(src.measurement_systems)),
        ("month", wide(lang.months), wide(src.months)),
        ("day", wide(lang.days), wide(src.days)),
        ("quarter", wide(lang.quarters), wide(src.quarters)),
        ("era", dict(lang.eras["wide"]), dict(src.eras["wide"])),
        ("city", cities(lang), cities(src)),
    ]


def _has_letter_of(texts: list[str], scripts: tuple[str, ...]) -> list[bool]:
    columns = [SCRIPT_CLASSES.index(c) for c in scripts]
    return (script_profile(texts)[:, columns].sum(axis=1) > 0).tolist()


def cldr_pairs(language: str = "bo", source: str = "zh") -> list[dict]:
    """Genuine term pairs of `language` and `source` from the CLDR data shipped with ``babel``.

    A pair is kept when both locales name the same key, the `language` side is written in its script
    (`semgrpo.script.script_consistent`: a letter of it and no letter of another script, so CLDR's fallbacks
    to the code or to English are dropped) and is not just the key, the `source` side has a letter of its
    script, and neither holds a ``{placeholder}``. Duplicates are dropped: a string already used by an
    earlier id (in id order) is not used again, so every reference is unambiguous. More than `MAX_PAIRS` are
    trimmed to it (`TRIM_ORDER`).

    Returns:
        Records ``{"id": "<category>:<key>", language: str, source: str}`` sorted by id.

    Raises:
        DemoError: unknown codes, or fewer than `MIN_PAIRS` pairs (the message names the count).
    """
    check_pair(language, source)
    target_script, source_script = language_script(language), language_script(source)
    rows = [(category, key, text, src_map.get(key))
            for category, lang_map, src_map in cldr_sources(language, source) for key, text in lang_map.items()]
    rows = [r for r in rows if isinstance(r[2], str) and isinstance(r[3], str) and r[2].strip() != str(r[1])
            and not _PLACEHOLDER.search(r[2]) and not _PLACEHOLDER.search(r[3])]
    in_script = script_consistent([r[2] for r in rows], script=target_script) if rows else []
    has_source = _has_letter_of([r[3] for r in rows], source_script) if rows else []
    candidates = sorted(({"id": f"{category}:{key}", language: text.strip(), source: src_text.strip()}
                         for (category, key, text, src_text), ok, src_ok in zip(rows, in_script, has_source)
                         if ok and src_ok), key=lambda r: r["id"])
    seen_lang, seen_src, pairs = set(), set(), []
    for rec in candidates:
        if rec[language] in seen_lang or rec[source] in seen_src:
            continue
        seen_lang.add(rec[language])
        seen_src.add(rec[source])
        pairs.append(rec)
    if len(pairs) < MIN_PAIRS:
        import babel

        raise DemoError(
            f"babel {babel.__version__} has only {len(pairs)} {language_name(language)}/{language_name(source)} "
            f"CLDR pairs ({language}/{source}); the demo needs at least {MIN_PAIRS}: choose another demo.language "
            "(ug, am, km, mn, si, lo, my, dz... have over 500) or demo.source")
    return trim_pairs(pairs)


def trim_pairs(pairs: list[dict], limit: int = MAX_PAIRS) -> list[dict]:
    """At most `limit` pairs: whole categories in `TRIM_ORDER`, the last one partly, by a hash of the id."""
    if len(pairs) <= limit:
        return pairs
    def order(rec):
        category = rec["id"].split(":", 1)[0]
        rank = TRIM_ORDER.index(category) if category in TRIM_ORDER else len(TRIM_ORDER)
        return rank, hashlib.sha256(rec["id"].encode("utf-8")).hexdigest()
    kept = sorted(pairs, key=order)[:limit]
    return sorted(kept, key=lambda r: r["id"])


def cldr_source_passages(language: str = "bo", source: str = "zh", *, names_per_passage: int = 16) -> list[str]:
    """Plain source-language text for the demo's alignment-tax meter: every CLDR name, joined into lines.

    No instruction format and none of the demo's language: the dominant-language behaviour of the base model
    that the fine-tuning should leave alone (the demo's stand-in for the paper's CMRC passages). Chinese names
    are joined with ``、`` and end in ``。``; other languages with ``, `` and ``.``.
    """
    source_script = language_script(source)
    names = []
    for _, _, src_map in cldr_sources(language, source):
        items = [v.strip() for _, v in sorted(src_map.items(), key=lambda kv: str(kv[0]))
                 if isinstance(v, str) and not _PLACEHOLDER.search(v)]
        names += [v for v, ok in zip(items, _has_letter_of(items, source_script) if items else []) if ok]
    names = list(dict.fromkeys(names))
    joiner, end = ("、", "。") if "Hani" in source_script else (", ", ".")
    return [joiner.join(names[i:i + names_per_passage]) + end for i in range(0, len(names), names_per_passage)]
