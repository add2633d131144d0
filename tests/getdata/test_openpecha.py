"""semgrpo.getdata.openpecha: the pair and title rules on hand-written texts, each expected row written out."""
import json

import pytest

from semgrpo.getdata import openpecha


def test_pairs_count_every_line_and_keep_both_sides_non_empty():
    bo = "ཀ།\n\n  ཁ། \nག།\n\t\nང།\nཅ།\n"
    zh = "甲\n乙\n丙\n\n \n戊\n"  # line 1: no Tibetan; line 3: no Chinese; line 6: past the Chinese file's end
    assert openpecha.pairs("T1", bo, zh) == [
        {"id": "T1:0", "bo": "ཀ།", "zh": "甲"},
        {"id": "T1:2", "bo": "ཁ།", "zh": "丙"},
        {"id": "T1:5", "bo": "ང།", "zh": "戊"},
    ]


def test_lines_are_those_of_str_splitlines():
    """CRLF is one line end; U+001D (in two of the corpus's Tibetan texts) and U+2028 end a line too."""
    bo = "ཀ།\r\nཁ།\x1dག།\u2028ང།"
    zh = "甲\n乙\n丙\n丁"
    assert [p["id"] for p in openpecha.pairs("T", bo, zh)] == ["T:0", "T:1", "T:2", "T:3"]
    assert openpecha.title_example("T", bo) == {"id": "T", "text": "ཁ།\nག།\nང།", "title": "ཀ།"}


def test_title_needs_three_non_empty_lines():
    assert openpecha.title_example("T", "title\n\n  \ntext\n") is None
    assert openpecha.title_example("T", "  title \n\nline 1\n line 2\t\n") == {
        "id": "T", "text": "line 1\nline 2", "title": "title"}


@pytest.mark.parametrize("title_len, text_len, kept", [
    (300, 2000, True), (301, 2000, False), (300, 2001, False), (1, 3, True),
])
def test_title_and_text_length_limits(title_len, text_len, kept):
    first = "a" * ((text_len - 1) // 2)
    text = f"{first}\n{'b' * (text_len - 1 - len(first))}"  # two lines joined by one newline
    assert len(text) == text_len
    example = openpecha.title_example("T", "t" * title_len + "\n" + text)
    assert (example is not None) == kept
    if kept:
        assert example == {"id": "T", "text": text, "title": "t" * title_len}


def test_build_writes_json_lines_in_the_order_of_the_ids():
    files = {"text-pairs/B-bo.txt": "ཀ\nཁ\nག\n", "text-pairs/B-zh.txt": "一\n二\n",
             "text-pairs/A-bo.txt": "ང\n", "text-pairs/A-zh.txt": "三\n"}
    pairs = openpecha.build("pairs", ["B", "A"], files.__getitem__)
    assert pairs == ('{"id": "B:0", "bo": "ཀ", "zh": "一"}\n{"id": "B:1", "bo": "ཁ", "zh": "二"}\n'
                     '{"id": "A:0", "bo": "ང", "zh": "三"}\n').encode()
    titles = openpecha.build("titles", ["A", "B"], files.__getitem__)  # A has one line: no example
    assert [json.loads(line) for line in titles.decode().splitlines()] == [{"id": "B", "text": "ཁ\nག", "title": "ཀ"}]
    assert openpecha.source_paths("pairs", ["B"]) == ["text-pairs/B-bo.txt", "text-pairs/B-zh.txt"]
    with pytest.raises(ValueError, match="unknown OpenPecha build"):
        openpecha.build("words", ["A"], files.__getitem__)
