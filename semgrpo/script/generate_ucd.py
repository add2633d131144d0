"""Write `semgrpo/script/ucd.py`, the character classes of every Unicode script, from the UCD.

Run by hand when the Unicode version moves (never at import or install time):

    python -m venv /tmp/ucd && /tmp/ucd/bin/pip install fonttools==4.65.0 unicodedata2==17.0.1 regex==2026.5.9
    /tmp/ucd/bin/python semgrpo/script/generate_ucd.py

Sources, all of one Unicode version (17.0.0, the version the pinned `regex` module implements):

- the Script property: fontTools' `fontTools.unicodedata.Scripts`, which is Scripts.txt of the UCD
  (with the ISO 15924 codes and names of PropertyValueAliases.txt); fontTools 4.65.0 ships Scripts-17.0.0.txt;
- the general categories (L*, M*, Nd, P*, Z*): `unicodedata2` 17.0.x (the standard library's `unicodedata`
  of Python 3.11 is Unicode 14.0.0 and would miss three versions of letters).

The semgrpo.script `regex` path reads the same properties from the `regex` module's own tables, so the
versions must agree: this script refuses to write when the two UCD versions differ, and then compares its
classes with `regex` on every code point and refuses to write on any difference (upgrade the pins together).
"""
from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent / "ucd.py"
# Script values that are no script of their own: their letters and marks are neutral (the README's rule).
NEUTRAL_SCRIPTS = ("Zyyy", "Zinh", "Zzzz")  # Common, Inherited, Unknown
TRAILING = ("common_letter", "digit", "space", "punct")  # then "other": everything no range covers
# White_Space (PropList.txt) is not in unicodedata: it is the separators (Z*) and these six controls.
WHITE_SPACE_CONTROLS = (0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x85)
MAX_CODE_POINT = 0x10FFFF


def _sources():
    from importlib.metadata import version as installed

    import fontTools
    import unicodedata2
    from fontTools.unicodedata import Scripts

    found = re.search(r"Scripts-(\d+\.\d+\.\d+)\.txt", inspect.getsource(Scripts))
    scripts_version = found.group(1) if found else "unknown"
    if scripts_version != unicodedata2.unidata_version:
        sys.exit(f"Scripts.txt {scripts_version} (fontTools {fontTools.version}) and unicodedata2 "
                 f"{unicodedata2.unidata_version} are different Unicode versions; pin both to one version")
    source = (f"Scripts-{scripts_version}.txt as shipped by fontTools {fontTools.version}; general categories "
              f"from unicodedata2 {installed('unicodedata2')} (Unicode {unicodedata2.unidata_version})")
    return Scripts, unicodedata2, scripts_version, source


def _script_of_every_code_point(scripts_module) -> list[str]:
    ranges, values = scripts_module.RANGES, scripts_module.VALUES
    out = []
    for i, start in enumerate(ranges):
        end = ranges[i + 1] - 1 if i + 1 < len(ranges) else MAX_CODE_POINT
        out += [values[i]] * (end - start + 1)
    return out


def build(scripts_module, ud) -> tuple[dict[str, str], tuple[str, ...], list[tuple[int, int, int]]]:
    """(ISO code -> Unicode name of every script with a letter, class names, (first, last, class) ranges)."""
    script_of = _script_of_every_code_point(scripts_module)
    letters: dict[str, int] = {}
    kinds = []
    for cp in range(MAX_CODE_POINT + 1):
        cat = ud.category(chr(cp))
        if cat[0] in "LM":
            sc = script_of[cp]
            kinds.append("common_letter" if sc in NEUTRAL_SCRIPTS else sc)
            letters[sc] = letters.get(sc, 0) + 1
        elif cat == "Nd":
            kinds.append("digit")
        elif cat[0] == "Z" or cp in WHITE_SPACE_CONTROLS:
            kinds.append("space")
        elif cat[0] == "P":
            kinds.append("punct")
        else:
            kinds.append(None)
    codes = sorted(sc for sc in letters if sc not in NEUTRAL_SCRIPTS)
    names = {code: scripts_module.NAMES[code] for code in codes}
    classes = tuple(codes) + TRAILING
    index = {name: k for k, name in enumerate(classes)}
    ranges: list[tuple[int, int, int]] = []
    for cp, kind in enumerate(kinds):
        if kind is None:
            continue
        k = index[kind]
        if ranges and ranges[-1][1] == cp - 1 and ranges[-1][2] == k:
            ranges[-1] = (ranges[-1][0], cp, k)
        else:
            ranges.append((cp, cp, k))
    return names, classes, ranges


def check_against_regex(classes: tuple[str, ...], ranges: list[tuple[int, int, int]]) -> list[str]:
    """Differences between these classes and the installed `regex` module's, code point by code point."""
    import regex

    want = [len(classes)] * (MAX_CODE_POINT + 1)  # len(classes) = "other"
    for first, last, k in ranges:
        want[first:last + 1] = [k] * (last - first + 1)
    everything = "".join(map(chr, range(MAX_CODE_POINT + 1)))
    got = [len(classes)] * (MAX_CODE_POINT + 1)
    sets = {name: rf"[[\p{{Script={name}}}]&&[\p{{L}}\p{{M}}]]" for name in classes if name not in TRAILING}
    sets.update(common_letter=r"[[\p{Script=Zyyy}\p{Script=Zinh}]&&[\p{L}\p{M}]]", digit=r"\p{Nd}",
                space=r"\p{White_Space}", punct=r"\p{P}")
    for k, name in enumerate(classes):
        for m in regex.finditer(sets[name] + "+", everything, flags=regex.V1):
            got[m.start():m.end()] = [k] * (m.end() - m.start())
    return [f"U+{cp:04X}: UCD {classes[a] if a < len(classes) else 'other'}, regex "
            f"{classes[b] if b < len(classes) else 'other'}" for cp, (a, b) in enumerate(zip(want, got)) if a != b]


def _wrapped(items: list[str], indent: str = "    ", width: int = 116) -> list[str]:
    """Items (each ending in a comma) packed into lines of at most `width` characters."""
    lines, line = [], indent.rstrip()
    for item in items:
        if len(line) + 1 + len(item) > width:
            lines.append(line)
            line = indent.rstrip()
        line += " " + item
    return lines + [line]


def render(names: dict[str, str], classes: tuple[str, ...], ranges: list, version: str, source: str) -> str:
    lines = [
        f'"""Character classes of every Unicode script, Unicode {version}. GENERATED: do not edit.',
        "",
        "Written by semgrpo/script/generate_ucd.py from",
        source + ".",
        "`semgrpo.script.tables` turns it into the class table both backends use (its docstring has the rule).",
        '"""',
        "",
        f'UNICODE_VERSION = "{version}"',
        "",
        "# ISO 15924 code -> Unicode name (the Script value of Scripts.txt), for every script with a letter or mark.",
        "SCRIPT_NAMES = {",
        *_wrapped([f'"{code}": "{name}",' for code, name in names.items()]),
        "}",
        "",
        "# Class names: the scripts in code order, then the neutral classes; 'other' is the rest.",
        "CLASSES = (",
        *_wrapped([f'"{name}",' for name in classes]),
        ")",
        "",
        "# (first, last, class index) of every code point that is not 'other', ascending, inclusive.",
        "RANGES = (",
        *_wrapped([f"(0x{first:X}, 0x{last:X}, {k})," for first, last, k in ranges]),
        ")",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    scripts_module, ud, version, source = _sources()
    names, classes, ranges = build(scripts_module, ud)
    try:
        differences = check_against_regex(classes, ranges)
    except ImportError:
        sys.exit("the regex module is not installed: the classes must be checked against it before writing")
    if differences:
        sys.exit(f"{len(differences)} code points differ from the installed regex module (a different Unicode "
                 f"version?); not written. First ones: {differences[:5]}")
    OUTPUT.write_text(render(names, classes, ranges, version, source), encoding="utf-8")
    print(f"wrote {OUTPUT}: Unicode {version}, {len(names)} scripts, {len(ranges)} ranges")


if __name__ == "__main__":
    main()
