"""Languages by CLDR code (``bo``, ``ug``, ``km``...): their script and English name, from babel's CLDR data.

The script of a language is CLDR's likely script (likely subtags: ``ug`` -> ``ug_Arab_CN``) as UCD scripts
(`semgrpo.script.names`: ``Hans`` -> Han, ``Jpan`` -> Han + Hiragana + Katakana); a code that names its
script (``uz_Arab``, ``zh_Hant``) keeps it.
"""
from __future__ import annotations

import functools


def _babel():
    import babel
    from babel.core import get_global

    return babel, get_global("likely_subtags")


def check_language(code: object) -> str:
    """`code` when babel's CLDR data has it as a locale, else ValueError naming a few valid codes."""
    babel, _ = _babel()
    if isinstance(code, str) and code and babel.localedata.exists(code):
        return code
    ids = babel.localedata.locale_identifiers()
    raise ValueError(f"{code!r} is not a CLDR locale babel {babel.__version__} knows ({len(ids)} do: bo, ug, am, km, "
                     "mn, si, lo, my, dz, ii, zh, en, ...; python -c \"import babel.localedata as d; "
                     "print(sorted(d.locale_identifiers()))\")")


@functools.cache
def language_script(code: str) -> tuple[str, ...]:
    """The UCD scripts a language is written in (``"ug"`` -> ``("Arab",)``, ``"ja"`` -> ``("Hani", "Hira", "Kana")``).

    Raises:
        ValueError: not a CLDR locale, or its script is none of `semgrpo.script.names`.
    """
    from babel import Locale

    from semgrpo.script.names import resolve_script

    check_language(code)
    _, likely = _babel()
    locale = Locale.parse(code)
    script = locale.script
    if script is None:
        subtags = likely.get(locale.language, "").split("_")
        script = next((s for s in subtags[1:] if len(s) == 4 and s.istitle()), None)
    if script is None:
        raise ValueError(f"CLDR gives no script for the language {code!r}")
    return resolve_script(script)


def language_name(code: str) -> str:
    """The English name of a language (``"km"`` -> ``"Khmer"``), for prompts and messages."""
    from babel import Locale

    check_language(code)
    return Locale.parse(code).get_display_name("en")
