"""semgrpo.eval.metrics: CMRC 2018 EM/F1 on hand-computed cases, BLEU/chrF/chrF++ vs sacrebleu, Tibetan ROUGE-L,
token NLL/KL vs a direct torch computation, summary statistics, bad input."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import regex
import sacrebleu
import torch
import torch.nn.functional as F
from _tolerance import loss_rtol

from semgrpo.eval.cmrc import cmrc_em, cmrc_f1, cmrc_segment
from semgrpo.eval.metrics import (
    bleu,
    chrf,
    chrf_pp,
    chrf_pp_text,
    cmrc_scores,
    metric_scheme,
    metric_tokens,
    nll_kl_summary,
    rouge_l,
    sentence_bleu,
    similarity_stats,
    summarize,
    token_nll_kl,
)
from semgrpo.script.text import tibetan_syllables

# ---------------------------------------------------------------- CMRC 2018


def _dataset(questions):
    """SQuAD-style dataset from [(id, [gold texts])], two questions per paragraph."""
    paras = []
    for i in range(0, len(questions), 2):
        qas = [{"id": qid, "question": "?", "answers": [{"text": t, "answer_start": 0} for t in golds]}
               for qid, golds in questions[i:i + 2]]
        paras.append({"id": f"P{i}", "context": "ctx", "qas": qas})
    return {"version": "v1.0", "data": [{"id": "A", "title": "t", "paragraphs": paras}]}


# (id, golds, prediction, em, f1) with F1 computed by hand from the longest common contiguous token run.
CASES = [
    # punctuation 《》 removed for EM and F1: tokens [战 国 无 双 3] on both sides
    ("punct", ["《战国无双3》"], "战国无双3", 1.0, 1.0),
    # mixed: gold [apple 公 司 iphone 7], pred [iphone 7 手 机]: run 2, P=2/4, R=2/5, F1=4/9
    ("mixed", ["Apple公司 iPhone 7"], "iPhone 7手机", 0.0, 4 / 9),
    # contiguous, not bag-of-tokens: [北 京 大 学] vs [大 学 北 京]: run 2, P=R=1/2
    ("order", ["北京大学"], "大学北京", 0.0, 0.5),
    # several golds: vs 村雨城 run 3, P=3/5, R=1 -> 0.75; vs 任天堂游戏谜之村雨城 run 5, P=1, R=1/2 -> 2/3
    ("multi", ["村雨城", "任天堂游戏谜之村雨城"], "谜之村雨城", 0.0, 0.75),
    # "……" is a two-character entry of the official list and never removed: EM 0;
    # gold [等 等 ……] (NLTK keeps "……" as one word), pred [等 等]: run 2, P=1, R=2/3 -> 0.8
    ("ellipsis", ["等等……"], "等等", 0.0, 0.8),
    # lower-case and strip
    ("case", ["NBA"], "  nba ", 1.0, 1.0),
    # NLTK words: gold [do n't stop .], pred [do stop]: run 1, P=1/2, R=1/4 -> 1/3
    ("treebank", ["don't stop."], "do stop", 0.0, 1 / 3),
    # '-' and '：' removed for EM: "光荣和ωforce" both sides
    ("dash", ["光荣和ω-force"], "光荣和ωforce：", 1.0, 1.0),
]


@pytest.mark.parametrize("qid,golds,pred,em,f1", CASES, ids=[c[0] for c in CASES])
def test_cmrc_single_question(qid, golds, pred, em, f1):
    assert cmrc_em(golds, pred) == em
    assert cmrc_f1(golds, pred) == pytest.approx(f1, abs=1e-12)


def test_cmrc_scores_average_unanswered_and_skipped():
    questions = [(qid, golds) for qid, golds, *_ in CASES] + [("unanswered", ["答案"])]
    predictions = {qid: pred for qid, _, pred, *_ in CASES}
    predictions["not_in_dataset"] = "答案"
    out = cmrc_scores(_dataset(questions), predictions)
    n = len(CASES) + 1
    em = 100 * (1 + 1 + 1) / n
    f1 = 100 * (1 + 4 / 9 + 0.5 + 0.75 + 0.8 + 1 + 1 / 3 + 1) / n
    assert out["total"] == n and out["skipped"] == 1 and out["unanswered"] == 1
    assert out["em"] == pytest.approx(em, abs=1e-9)
    assert out["f1"] == pytest.approx(f1, abs=1e-9)
    assert out["avg"] == pytest.approx((em + f1) / 2, abs=1e-9)


def test_cmrc_segment_keeps_punctuation_tokens_unless_removed():
    assert cmrc_segment("A，中b c") == ["a", "，", "中", "b", "c"]
    assert cmrc_segment("A，中b c", remove_punctuation=True) == ["a", "中", "b", "c"]
    assert cmrc_segment("  ") == []
    # a prediction that is only punctuation has no token: F1 0, EM only against an all-punctuation gold
    assert cmrc_f1(["答案"], "。。") == 0.0
    assert cmrc_em(["《》"], "“”") == 1.0


def test_cmrc_ids_are_stripped_like_the_official_script():
    out = cmrc_scores(_dataset([(" Q1 ", ["中国"])]), {"Q1": "中国"})
    assert out["em"] == 100.0 and out["f1"] == 100.0 and out["skipped"] == 0


@pytest.mark.parametrize("dataset,predictions,match", [
    ({"data": []}, {}, "no questions"),
    ([], {}, "SQuAD-style"),
    ({"data": [{"paragraphs": [{"qas": [{"id": "q", "answers": []}]}]}]}, {}, "answers"),
    ({"data": [{"no": 1}]}, {}, "paragraphs"),
    (_dataset([("q", ["a"])]), {"q": None}, "str"),
    (_dataset([("q", ["a"])]), [("q", "a")], "dict"),
])
def test_cmrc_bad_input(dataset, predictions, match):
    with pytest.raises(ValueError, match=match):
        cmrc_scores(dataset, predictions)


def test_cmrc_dev_set_gold_and_half(real_data_root):
    dataset = json.loads((real_data_root / "cmrc2018" / "dev.json").read_text(encoding="utf-8"))
    golds = {qa["id"]: qa["answers"][-1]["text"]
             for a in dataset["data"] for p in a["paragraphs"] for qa in p["qas"]}
    full = cmrc_scores(dataset, golds)
    assert full == {"em": 100.0, "f1": 100.0, "avg": 100.0, "total": len(golds), "skipped": 0, "unanswered": 0}
    half = dict(list(golds.items())[::2])
    out = cmrc_scores(dataset, half)
    assert out["em"] == pytest.approx(100 * len(half) / len(golds))
    assert out["unanswered"] == len(golds) - len(half)


# ---------------------------------------------------------------- BLEU / chrF / ROUGE-L

ZH_HYP = ["今天天气很好。", "我们去公园散步吧", "他喜欢读书"]
ZH_REF = ["今天的天气很好。", "我们去公园走走吧", "她喜欢看书"]
# tsheg U+0F0B, shad U+0F0D, nyis shad U+0F0E; syllables written out by hand below
BO_HYP = ["བཀྲ་ཤིས་བདེ་ལེགས།", "ང་བོད་ལ་འགྲོ་གི་ཡིན༎", "ཀ་ཁ་ག་ང"]
BO_REF = ["བཀྲ་ཤིས་བདེ་ལེགས་ཞུ།", "ང་ལྷ་ས་ལ་འགྲོ་གི་ཡིན།", "ཅ་ཆ་ཇ་ཉ"]
BO_HYP_SYL = ["བཀྲ ཤིས བདེ ལེགས", "ང བོད ལ འགྲོ གི ཡིན", "ཀ ཁ ག ང"]
BO_REF_SYL = ["བཀྲ ཤིས བདེ ལེགས ཞུ", "ང ལྷ ས ལ འགྲོ གི ཡིན", "ཅ ཆ ཇ ཉ"]


def test_tibetan_syllable_tokens():
    assert [" ".join(metric_tokens(t, script="tibetan")) for t in BO_HYP + BO_REF] == BO_HYP_SYL + BO_REF_SYL
    assert metric_tokens(" ཀ་ཁ་\nག ", script="tibetan") == ["ཀ", "ཁ", "ག"]
    assert metric_tokens("中 文", script="han") == ["中", "文"]


def test_bleu_chrf_chinese_equal_sacrebleu():
    assert bleu(ZH_HYP, ZH_REF, script="han") == sacrebleu.corpus_bleu(ZH_HYP, [ZH_REF], tokenize="zh").score
    assert chrf(ZH_HYP, ZH_REF, script="han") == sacrebleu.corpus_chrf(ZH_HYP, [ZH_REF]).score
    assert 0 < bleu(ZH_HYP, ZH_REF, script="han") < 100


def test_bleu_chrf_tibetan_equal_sacrebleu_on_syllables():
    expected = sacrebleu.corpus_bleu(BO_HYP_SYL, [BO_REF_SYL], tokenize="none").score
    assert bleu(BO_HYP, BO_REF, script="tibetan") == expected
    assert 0 < expected < 100
    assert chrf(BO_HYP, BO_REF, script="tibetan") == sacrebleu.corpus_chrf(BO_HYP_SYL, [BO_REF_SYL]).score
    assert bleu(BO_REF, BO_REF, script="tibetan") == pytest.approx(100.0)


def test_rouge_l_tibetan_hand_computed():
    # pair 1: hyp [ཀ ག ང ཅ], ref [ཀ ཁ ག ང]: LCS 3 (ཀ ག ང), P=R=3/4 -> 0.75
    # pair 2: hyp [ཀ ཁ], ref [ཀ ཆ ཁ ཇ ཉ]: LCS 2, P=1, R=2/5 -> 4/7
    # pair 3: identical -> 1; pair 4: disjoint -> 0
    hyps = ["ཀ་ག་ང་ཅ།", "ཀ་ཁ", "བཀྲ་ཤིས།", "ཀ"]
    refs = ["ཀ་ཁ་ག་ང།", "ཀ་ཆ་ཁ་ཇ་ཉ།", "བཀྲ་ཤིས", "ཁ"]
    assert rouge_l(hyps, refs, script="tibetan") == pytest.approx(100 * (0.75 + 4 / 7 + 1 + 0) / 4, abs=1e-9)


def test_rouge_l_chinese_characters():
    # [今 天 很 好] vs [今 天 天 气 很 好]: LCS 4, P=1, R=4/6 -> 0.8
    assert rouge_l(["今天很好"], ["今天天气很好"], script="han") == pytest.approx(80.0)


def test_chrf_pp_words_per_script():
    # Tibetan: the syllables (BLEU's tokens); Chinese: each Han character and CJK/full-width symbol, other runs whole
    assert [chrf_pp_text(t, script="tibetan") for t in BO_HYP] == BO_HYP_SYL
    assert chrf_pp_text("我们去 iPhone 7手机，好吗？ok.", script="han") == "我 们 去 iPhone 7 手 机 ， 好 吗 ？ ok."
    assert chrf_pp_text("简 供\u3000𠀀", script="han") == "简 供 𠀀"  # ideographic space, extension B
    assert chrf_pp_text("Hello, world!", script="latin") == "Hello, world!"
    # Without its spaces it is what chrF scores, so chrF++'s character n-grams are chrF's
    for t in ZH_HYP + ["我们去 iPhone 7手机，好吗？"]:
        assert "".join(chrf_pp_text(t, script="han").split()) == "".join(t.split())
    with pytest.raises(ValueError, match="script"):
        chrf_pp_text("a", script="klingon")


def test_chrf_pp_hand_computed_chinese():
    # hyp [今 天 很 好], ref [今 天 天 气 很 好]. Character n-grams: 1-grams 4 of 4 hyp / 6 ref match, 2-grams
    # 2 of 3 / 5 (今天, 很好), 3- and 4-grams none of 2 / 4 and 1 / 3; the hyp has no 5- or 6-grams, so those
    # orders are left out. Words are the characters: word 1-grams and 2-grams count as character 1- and 2-grams.
    # sacrebleu averages P and R over the 6 orders left and takes F-beta (beta 2) of the averages.
    p = [4 / 4, 2 / 3, 0 / 2, 0 / 1, 4 / 4, 2 / 3]
    r = [4 / 6, 2 / 5, 0 / 4, 0 / 3, 4 / 6, 2 / 5]
    ap, ar = sum(p) / 6, sum(r) / 6
    assert chrf_pp(["今天很好"], ["今天天气很好"], script="han") == pytest.approx(100 * 5 * ap * ar / (4 * ap + ar))


@pytest.fixture(scope="module")
def dev_pairs(real_data_root):
    path = real_data_root / "bo_zh_openpecha" / "dev.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _first_half(text: str, script: str) -> str:
    if script == "tibetan":
        syllables = tibetan_syllables(text)
        return "་".join(syllables[: max(1, len(syllables) // 2)])
    return text[: max(1, len(text) // 2)]


@pytest.mark.parametrize("field, script", [("bo", "tibetan"), ("zh", "han")])
def test_chrf_pp_equals_sacrebleu_on_dev_pairs(field, script, dev_pairs):
    """The 244 dev pairs of the OpenPecha corpus: a third of the outputs exact, a third the next line's reference,
    a third the first half of the reference (by syllable / character)."""
    refs = [r[field] for r in dev_pairs]
    hyps = [ref if i % 3 == 0 else refs[(i + 1) % len(refs)] if i % 3 == 1 else _first_half(ref, script)
            for i, ref in enumerate(refs)]
    hyp_words, ref_words = ([chrf_pp_text(t, script=script) for t in texts] for texts in (hyps, refs))
    for text, w in zip(refs, ref_words):
        if script == "tibetan":  # the syllables ROUGE-L counts
            assert w.split() == metric_tokens(text, script="tibetan")
        else:  # the text itself, each Han character a word of its own ("——" may stay one punctuation word)
            assert "".join(w.split()) == "".join(text.split())
            assert all(len(word) == 1 or not regex.search(r"\p{Han}", word) for word in w.split()), w
    expected = sacrebleu.corpus_chrf(hyp_words, [ref_words], word_order=2).score
    assert chrf_pp(hyps, refs, script=script) == expected
    assert expected == sacrebleu.metrics.CHRF(word_order=2).corpus_score(hyp_words, [ref_words]).score
    assert 20 < expected < 90
    # its character part is chrF's
    assert sacrebleu.metrics.CHRF(word_order=0).corpus_score(hyp_words, [ref_words]).score == chrf(hyps, refs, script=script)
    assert chrf_pp(refs, refs, script=script) == pytest.approx(100.0)


def test_chrf_pp_empty_outputs_score_zero():
    assert chrf_pp(["", "  "], ["今天", "很好"], script="han") == 0.0
    assert chrf_pp(["།", "་"], ["ཀ་ཁ", "ག"], script="tibetan") == 0.0  # delimiters only: no syllable


@pytest.mark.parametrize("script, scheme", [
    ("tibetan", "syllable"), ("Tibt", "syllable"), ("han", "han"), ("Hani", "han"), ("Hans", "han"),
    ("Khmr", "character"), ("Thai", "character"), ("Laoo", "character"), ("Mymr", "character"),
    ("Yiii", "character"), ("Jpan", "character"), ("Hani+Hira+Kana", "character"), ("latin", "latin"),
    ("Arab", "word"), ("Ethi", "word"), ("Cyrl", "word"), ("Mong", "word"), ("Sinh", "word"), ("Kore", "word"),
])
def test_metric_scheme_per_script(script, scheme):
    assert metric_scheme(script) == scheme


def _cldr(lang, n=40):
    """The first n CLDR territory names of a language, and the same list shifted by one (unrelated outputs)."""
    from babel import Locale

    names = [v for k, v in sorted(Locale.parse(lang).territories.items()) if v != k][:n]
    return names, names[1:] + names[:1]


def _graphemes(text):
    return [g for g in regex.findall(r"\X", text) if not g.isspace()]


def test_khmer_metrics_count_characters_and_equal_sacrebleu():
    """Khmer (no word spaces): the units are grapheme clusters; BLEU/chrF/chrF++ equal sacrebleu on them."""
    refs, unrelated = _cldr("km")
    hyps = [r if i % 2 else u for i, (r, u) in enumerate(zip(refs, unrelated))]  # half right, half wrong
    assert all(metric_tokens(t, script="Khmr") == _graphemes(t) for t in refs)  # no Latin in these names
    assert metric_tokens("ខ្មែរ ភាសា", script="khmer") == ["ខ្មែ", "រ", "ភា", "សា"]  # coeng + subscript in one
    joined = [[" ".join(_graphemes(t)) for t in texts] for texts in (hyps, refs)]
    assert bleu(hyps, refs, script="Khmr") == sacrebleu.corpus_bleu(joined[0], [joined[1]], tokenize="none").score
    assert 30 < bleu(hyps, refs, script="Khmr") < 90
    assert chrf(hyps, refs, script="Khmr") == sacrebleu.corpus_chrf(hyps, [refs]).score
    assert chrf_pp(hyps, refs, script="Khmr") == sacrebleu.corpus_chrf(joined[0], [joined[1]], word_order=2).score
    # Without units a Khmer name is one whitespace word: BLEU would see far fewer n-grams than characters
    assert len(sacrebleu.BLEU().corpus_score(hyps, [refs]).counts) == 4


def test_sentence_bleu_per_script_equals_sacrebleu():
    """The BLEU reward's score: the old tokenization for Tibetan, Chinese and Latin, the units for the others."""
    bo, zh = ("ཀ་ཁ་ག་ང།", "ཀ་ཁ་ག"), ("今天天气很好", "今天很好")
    assert sentence_bleu(*bo, script="tibetan") == sacrebleu.sentence_bleu("ཀ ཁ ག ང", ["ཀ ཁ ག"], tokenize="none").score
    assert sentence_bleu(*zh, script="han") == sacrebleu.sentence_bleu(zh[0], [zh[1]], tokenize="zh").score
    assert sentence_bleu("a b c d", "a b c", script="latin") == sacrebleu.sentence_bleu("a b c d", ["a b c"]).score
    km = ("ព្រះរាជាណាចក្រកម្ពុជា", "ព្រះរាជាណាចក្រ")
    want = sacrebleu.sentence_bleu(" ".join(_graphemes(km[0])), [" ".join(_graphemes(km[1]))], tokenize="none")
    assert sentence_bleu(*km, script="Khmr") == want.score > 0


def test_word_scripts_equal_sacrebleu_intl_and_count_words():
    for lang, script in (("ug", "Arab"), ("am", "Ethi"), ("mn", "Cyrl")):
        refs, unrelated = _cldr(lang)
        hyps = [r if i % 2 else u for i, (r, u) in enumerate(zip(refs, unrelated))]
        assert bleu(hyps, refs, script=script) == sacrebleu.corpus_bleu(hyps, [refs], tokenize="intl").score
        assert chrf(hyps, refs, script=script) == sacrebleu.corpus_chrf(hyps, [refs]).score
        assert chrf_pp(hyps, refs, script=script) == sacrebleu.corpus_chrf(hyps, [refs], word_order=2).score
    # ROUGE-L on words, punctuation dropped: [ئۇيغۇر تىلى] vs [ئۇيغۇر تىلى ۋە]: LCS 2, P=1, R=2/3 -> 0.8
    assert rouge_l(["ئۇيغۇر تىلى،"], ["ئۇيغۇر تىلى ۋە"], script="Arab") == pytest.approx(80.0)
    assert metric_tokens("አማርኛ ቋንቋ።", script="Ethi") == ["አማርኛ", "ቋንቋ"]  # Ethiopic full stop dropped
    assert metric_tokens("Монгол Улс", script="Cyrl") == ["монгол", "улс"]  # lower-cased, as rouge-score does


@pytest.mark.parametrize("fn", [bleu, chrf, chrf_pp, rouge_l])
def test_text_metrics_bad_input(fn):
    with pytest.raises(ValueError, match="same length"):
        fn(["a", "b"], ["a"], script="han")
    with pytest.raises(ValueError, match="empty"):
        fn([], [], script="han")
    with pytest.raises(ValueError, match="script"):
        fn(["a"], ["a"], script="klingon")
    with pytest.raises(ValueError, match="list of strings"):
        fn("abc", "abc", script="han")
    with pytest.raises(ValueError, match=r"references\[1\]"):
        fn(["a", "b"], ["a", None], script="han")


# ---------------------------------------------------------------- NLL / KL


def _reference_nll_kl(base, adapted, ids, mask):
    """Direct per-position float64 computation with torch.nn.functional."""
    nb, na, kl = [], [], []
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            if not mask[b, t]:
                continue
            lb, la = base[b, t].double(), adapted[b, t].double()
            tgt = ids[b, t].view(1)
            nb.append(F.cross_entropy(lb.view(1, -1), tgt).item())
            na.append(F.cross_entropy(la.view(1, -1), tgt).item())
            kl.append(F.kl_div(F.log_softmax(la, -1), F.log_softmax(lb, -1), log_target=True,
                               reduction="sum").item())
    return np.array(nb), np.array(na), np.array(kl)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_rows", [1, 3, 1024])
def test_token_nll_kl_matches_torch(dtype, chunk_rows):
    g = torch.Generator().manual_seed(0)
    B, T, V = 3, 7, 37
    base = (torch.randn(B, T, V, generator=g) * 2).to(dtype)
    adapted = (base.float() + 0.5 * torch.randn(B, T, V, generator=g)).to(dtype)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[0, 0] = True
    out = token_nll_kl(base, adapted, ids, mask, chunk_rows=chunk_rows)
    nb, na, kl = _reference_nll_kl(base, adapted, ids, mask)
    # One fp32 log-sum-exp over V logits per token, against float64 on the same (rounded) logits: its error is
    # relative to the largest logit. A difference of two such values (delta, KL's p-weighted sum) doubles it.
    tol = loss_rtol(V, 1) * max(base.float().abs().max().item(), adapted.float().abs().max().item())
    assert out["nll_base"].shape == (int(mask.sum()),)
    np.testing.assert_allclose(out["nll_base"], nb, rtol=0, atol=tol)
    np.testing.assert_allclose(out["nll_adapted"], na, rtol=0, atol=tol)
    np.testing.assert_allclose(out["kl"], kl, rtol=0, atol=2 * tol)
    np.testing.assert_allclose(out["delta_nll"], na - nb, rtol=0, atol=2 * tol)
    assert (out["kl"] > 0).all()


def test_token_nll_kl_hand_values():
    # V=2, base logits (0, 0) -> p=(1/2, 1/2); adapted (log 3, 0) -> q=(3/4, 1/4); target 0
    base = torch.zeros(1, 1, 2)
    adapted = torch.tensor([[[math.log(3.0), 0.0]]])
    out = token_nll_kl(base, adapted, torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1))
    assert out["nll_base"][0] == pytest.approx(math.log(2))
    assert out["nll_adapted"][0] == pytest.approx(-math.log(0.75))
    assert out["kl"][0] == pytest.approx(0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25))
    same = token_nll_kl(base, base.clone(), torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1))
    assert same["kl"][0] == 0.0 and same["delta_nll"][0] == 0.0
    # a base probability of exactly 0 contributes nothing to KL(base || adapted)
    inf = token_nll_kl(torch.tensor([[[0.0, -math.inf]]]), torch.tensor([[[0.0, 0.0]]]),
                       torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1))
    assert inf["kl"][0] == pytest.approx(math.log(2))


def test_token_nll_kl_bad_input():
    x = torch.zeros(2, 3, 5)
    ids, mask = torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3)
    with pytest.raises(ValueError, match="shape of base_logits"):
        token_nll_kl(x, torch.zeros(2, 3, 6), ids, mask)
    with pytest.raises(ValueError, match=r"\[B, T, V\]"):
        token_nll_kl(torch.zeros(2, 3), torch.zeros(2, 3), ids, mask)
    with pytest.raises(ValueError, match="target_ids must be a"):
        token_nll_kl(x, x, torch.zeros(2, 4, dtype=torch.long), mask)
    with pytest.raises(ValueError, match="integer"):
        token_nll_kl(x, x, ids.float(), mask)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        token_nll_kl(x, x, ids + 5, mask)
    with pytest.raises(ValueError, match="selects no token"):
        token_nll_kl(x, x, ids, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="floating"):
        token_nll_kl(x.long(), x.long(), ids, mask)
    with pytest.raises(ValueError, match="chunk_rows"):
        token_nll_kl(x, x, ids, mask, chunk_rows=0)


# ---------------------------------------------------------------- summaries


def test_summaries_hand_computed():
    v = [10.0, 1.0, 4.0, 2.0, 3.0]  # sorted 1 2 3 4 10
    # p90: position 0.9*4 = 3.6 -> 4 + 0.6*(10-4) = 7.6; p10: 0.4 -> 1 + 0.4*(2-1) = 1.4
    assert summarize(v) == pytest.approx({"mean": 4.0, "median": 3.0, "p90": 7.6})
    assert summarize(torch.tensor(v)) == pytest.approx({"mean": 4.0, "median": 3.0, "p90": 7.6})
    assert similarity_stats(np.array(v)) == pytest.approx({"mean": 4.0, "median": 3.0, "p10": 1.4, "p90": 7.6})


def test_nll_kl_summary_delta():
    stats = {"nll_base": np.array([1.0, 1.0, 1.0]), "nll_adapted": np.array([2.0, 2.0, 4.0]),
             "kl": np.array([0.1, 0.2, 0.3])}
    out = nll_kl_summary(stats)
    # adapted: mean 8/3, median 2, p90 at 1.8 -> 2 + 0.8*2 = 3.6; base: all 1
    assert out["delta"] == pytest.approx({"mean": 5 / 3, "median": 1.0, "p90": 2.6})
    assert out["kl"] == pytest.approx({"mean": 0.2, "median": 0.2, "p90": 0.28})
    with pytest.raises(ValueError, match="one length"):
        nll_kl_summary({**stats, "kl": np.array([0.1])})
    with pytest.raises(ValueError, match="misses"):
        nll_kl_summary({"kl": np.array([0.1])})


@pytest.mark.parametrize("fn", [summarize, similarity_stats])
def test_summaries_bad_input(fn):
    with pytest.raises(ValueError, match="empty"):
        fn([])
    with pytest.raises(ValueError, match="non-finite"):
        fn([1.0, float("nan")])
    with pytest.raises(ValueError, match="one-dimensional"):
        fn([[1.0, 2.0]])
