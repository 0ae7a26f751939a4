"""Tests for ecominstruct.scoring: hand-computed cases, odd inputs, and the `rouge` package."""

import json
import logging
import math
import random

import pytest
import rouge
from seqeval.metrics import classification_report
from task_folders import write_shop_tasks, write_task

from ecomgpt_jax.ecominstruct import instructions, reader, scoring
from ecomgpt_jax.ecominstruct.scoring import ScoreSpec

ONE = 2.0 * (1.0 / (2.0 + 1e-8))  # the rouge package's F for a perfect match


def package_rouge_l(pred, gold):
    """rouge 1.0.1 itself for one pair, 0 where it raises (contract 5.2)."""
    try:
        return rouge.Rouge().get_scores(pred, gold, avg=True)["rouge-l"]["f"]
    except ValueError:
        return 0.0


@pytest.mark.parametrize(
    ("task_type", "raw", "cleaned"),
    [
        ("CLS", " Food. ", "Food"),
        ("CLS", ".", "error"),
        ("CLS", " . ", "error"),
        ("CLS", "", "error"),
        ("CLS", "a.b", "ab"),
        ("CLS", ". a", " a"),  # strip first, then remove dots: not stripped again
        ("Extract", "", "error"),
        ("Extract", ".", "error"),
        ("Extract", " . .", "error"),
        ("Extract", "x. ", "x. "),
        ("Condition_Extract", "a", "error"),
        ("Condition_Extract", " a ", "error"),
        ("Condition_Extract", "", "error"),
        ("Condition_Extract", "ab", "ab"),
        ("Condition_Extract", "红色", "红色"),
        ("Generate", "", "error"),
        ("Generate", " ", " "),
        ("Generate", ".", "."),
        ("NER", "", "error"),
        ("NER", ".", "."),
    ],
)
def test_clean_prediction(task_type, raw, cleaned):
    assert scoring.clean_prediction(task_type, raw) == cleaned


def test_clean_gold():
    assert scoring.clean_gold("Condition_Extract", "") == "error"
    assert scoring.clean_gold("Condition_Extract", "a") == "a"
    assert scoring.clean_gold("Extract", "") == ""


@pytest.mark.parametrize(
    ("pred", "gold", "expect"),
    [
        ("the cat sat", "the cat sat", ONE),
        ("", "x", 0.0),  # package raises: empty hypothesis
        (".", "x", 0.0),  # a lone "." splits into nothing
        ("x", "...", 0.0),
        ("红色连衣裙", "红色长裙", 0.0),  # no spaces: one token each
        ("红色 连衣裙", "红色 长裙", 2.0 * (0.25 / (1.0 + 1e-8))),
        ("a a b", "a b", ONE),  # counts are of distinct tokens
        ("a b. c d", "a c. b d", ONE),  # summary level: LCS unions across sentences
        (" ", "a", 0.0),
        (" ", " ", ONE),  # a whitespace-only sentence is one empty token
        ("Food, Price", "Food", 0.0),  # "Food," is a token
        ("Food", "food", 0.0),  # no lower-casing
        ("红色\u3000长裙", "红色 长裙", ONE),  # Unicode whitespace splits too
        ("a\xa0b", "a b", ONE),
    ],
)
def test_rouge_l_paper_hand(pred, gold, expect):
    assert scoring.rouge_l_paper(pred, gold) == pytest.approx(expect, abs=1e-12)
    assert scoring.rouge_l_paper(pred, gold) == pytest.approx(
        package_rouge_l(pred, gold), abs=1e-12
    )


def test_rouge_l_paper_matches_package_on_random_text():
    rng = random.Random(1)
    vocab = ["a", "B", "b", "c", "d", "红", "色", " ", "  ", ".", ". ", "\n", "\t", "x y"]
    vocab += ["\u3000", "\xa0"]
    for _ in range(3000):
        pred = "".join(rng.choice(vocab) for _ in range(rng.randrange(20)))
        gold = "".join(rng.choice(vocab) for _ in range(rng.randrange(20)))
        assert scoring.rouge_l_paper(pred, gold) == package_rouge_l(pred, gold), (pred, gold)


def test_rouge_l_paper_long_text_does_not_recurse():
    # The package's recursive LCS back-tracking overflows here; ours is iterative.
    words = " ".join(f"w{i}" for i in range(1500))
    assert scoring.rouge_l_paper(words, words) == pytest.approx(ONE)


def test_rouge_l_mean_equals_package_average():
    preds = ["a b c", "b c d. e", "红色", "x y", "q"]
    golds = ["a c", "b d e", "红色", "y x. z", "r"]
    expect = rouge.Rouge().get_scores(preds, golds, avg=True)["rouge-l"]["f"]
    assert scoring.rouge_l_paper_mean(preds, golds) == expect


def test_cjk_tokenizer():
    tok = scoring.CJKTokenizer()
    assert tok.tokenize("红色T恤 Nike-Air, 2021款！") == [
        "红",
        "色",
        "t",
        "恤",
        "nike",
        "air",
        "2021",
        "款",
    ]
    assert tok.tokenize(" . ") == []
    # Supplementary-plane ideographs (extensions B and G) and U+3007 are word characters to
    # `re`: each must still be a token of its own.
    assert tok.tokenize("\U00020000\U00020001好") == ["\U00020000", "\U00020001", "好"]
    assert tok.tokenize("二〇二一年\U00030000x") == [
        "二",
        "〇",
        "二",
        "一",
        "年",
        "\U00030000",
        "x",
    ]


def test_set_f1_hand():
    micro, macro = scoring.set_f1([{"a", "b"}, {"c"}, set()], [{"a"}, {"d"}, {"e"}])
    # tp=1, |P|=3, |T|=3 -> p=r=1/3; mean p_i = (1/2+0+0)/3, mean r_i = (1+0+0)/3.
    assert micro == pytest.approx(1 / 3)
    assert macro == pytest.approx(2 / 9)
    assert scoring.set_f1([set()], [set()]) == (0.0, 0.0)


def test_score_cls_hand():
    got = scoring.score_task(
        ScoreSpec("CLS"),
        None,
        ["Food.", " ", "Food, Price", "Service"],
        ["Food", "Price", "Food", "Service, Price"],
    )
    # cleaned preds: Food / error / {Food, Price} / Service: tp=3 of 5 predicted, 5 gold.
    assert got["micro-f1"] == pytest.approx(0.6)
    assert got["macro-f1"] == pytest.approx(0.625)  # mean p = mean r = 2.5/4
    assert got["rouge-l-f1"] == pytest.approx(ONE / 4)  # "Food," and "Service," are tokens
    assert got["rouge-l-f1-cjk"] == pytest.approx((1 + 0 + 2 / 3 + 2 / 3) / 4)
    assert got["n"] == 4


def test_f1_items_are_case_sensitive():
    """No lower-casing (contract 5.1, 5.3): "food" is not the label "Food"."""
    got = scoring.score_task(ScoreSpec("CLS"), None, ["food", "Food"], ["Food", "Food"])
    assert (got["micro-f1"], got["macro-f1"]) == (0.5, 0.5)  # lower-cased: (1.0, 1.0)


def test_score_extract_hand():
    got = scoring.score_task(ScoreSpec("Extract"), None, ["x.", "", "a, b "], ["x.", "y", "a"])
    assert got["micro-f1"] == pytest.approx(4 / 7)  # p = 2/4, r = 2/3
    assert got["macro-f1"] == pytest.approx(4 / 7)  # mean p = 1/2, mean r = 2/3
    assert got["rouge-l-f1"] == pytest.approx(ONE / 3)
    assert got["rouge-l-f1-cjk"] == pytest.approx((1 + 0 + 2 / 3) / 3)


def test_score_condition_extract_hand():
    got = scoring.score_task(
        ScoreSpec("Condition_Extract"), None, ["a", "红色, 棉", "x"], ["", "红色", "b"]
    )
    # empty gold and 1-char preds become "error": example 0 is an exact "error" match.
    assert got["micro-f1"] == pytest.approx(4 / 7)
    assert got["macro-f1"] == pytest.approx(4 / 7)
    assert got["rouge-l-f1"] == pytest.approx(ONE / 3)
    assert got["rouge-l-f1-cjk"] == pytest.approx((1 + 0.8 + 0) / 3)


def test_score_generate_hand():
    got = scoring.score_task(
        ScoreSpec("Generate"), None, ["红色T恤", "", "  "], ["红T恤衫", "abc", "a"]
    )
    # character sets: {红,色,T,恤}/{红,T,恤,衫}; {e,r,o}/{a,b,c}; {}/{a}
    assert got["micro-f1"] == pytest.approx(0.4)  # p = 3/7, r = 3/8
    assert got["macro-f1"] == pytest.approx(0.25)  # mean p = mean r = (3/4)/3
    assert got["rouge-l-f1"] == 0.0  # Chinese without spaces: one token, no match
    assert got["rouge-l-f1-cjk"] == pytest.approx(0.75 / 3)


def test_gold_f1_items_are_stripped_for_extract_and_generate_not_cls():
    """Contract 5.1's F1 items of the gold: Extract splits `gold.strip()`, Generate takes
    the characters of `gold.strip()`, CLS splits the gold as it is (no dot removal)."""

    def micro(task_type, pred, gold):
        return scoring.score_task(ScoreSpec(task_type), None, [pred], [gold])["micro-f1"]

    assert micro("Extract", "a", " a") == 1.0  # unstripped: " a" != "a", 0
    assert micro("Generate", "ab", "ab ") == 1.0  # unstripped: {a, b, " "}, 0.8
    assert micro("CLS", "Misc", "Misc.") == 0.0  # dots removed from the gold too: 1.0


def test_parse_ner():
    assert scoring.parse_ner("颜色: 红色\n材质: 棉, 麻\n颜色: 白, 红色", ", ") == {
        "颜色": ["红色", "白"],
        "材质": ["棉", "麻"],
    }
    none = {"None": ["None"]}
    assert scoring.parse_ner("", ", ") == none
    assert scoring.parse_ner("no colon\n品牌: \n颜色:红\n颜色：红", ", ") == none
    assert scoring.parse_ner("a: b: c", ", ") == {"a": ["b: c"]}
    assert scoring.parse_ner("颜色: None", ", ") == {"颜色": ["None"]}


def test_ner_tags():
    assert scoring.ner_tags("红色上衣白色", {"颜色": ["红色", "白色"]}) == [
        "B-颜色", "I-颜色", "O", "O", "B-颜色", "I-颜色",
    ]  # fmt: skip
    # later matches overwrite earlier ones
    assert scoring.ner_tags("红色红", {"颜色": ["红色"], "风格": ["色红"]}) == [
        "B-颜色", "B-风格", "I-风格",
    ]  # fmt: skip
    assert scoring.ner_tags("aaa", {"X": ["aa"]}) == ["B-X", "B-X", "I-X"]
    # an empty span matches at every position: every character becomes B-<type>
    assert scoring.ner_tags("abc", {"X": ["bc"], "Y": [""]}) == ["B-Y", "B-Y", "B-Y"]
    assert scoring.ner_tags("abc", {"Y": [""], "X": ["bc"]}) == ["B-Y", "B-X", "I-X"]
    assert scoring.ner_tags("None of it", {"X": ["None"], "None": ["None"]}) == ["O"] * 10
    assert scoring.ner_tags("", {"X": ["a"]}) == []


def test_ner_f1_hand():
    sentences = ["红色上衣", "白色裤子"]
    golds = ["颜色: 红色\n材质: None", "颜色: 白色\n材质: None"]
    micro, macro = scoring.ner_f1(sentences, ["颜色: 红色", "材质: 白色"], golds, ", ")
    assert micro == pytest.approx(0.5)  # 1 of 2 predicted entities right, 1 of 2 found
    assert macro == pytest.approx(1 / 3)  # 颜色: p=1, r=1/2 -> 2/3; 材质: 0
    # empty span after the real one overwrites it; before it, the real one survives
    assert scoring.ner_f1(["红色上衣"], ["颜色: 红色, "], ["颜色: 红色"], ", ") == (0.0, 0.0)
    assert scoring.ner_f1(["红色上衣"], ["颜色: , 红色"], ["颜色: 红色"], ", ") == (0.5, 0.5)


@pytest.mark.filterwarnings("ignore::UserWarning")  # seqeval: ill-defined precision
def test_score_ner_task():
    examples = [{"sentences": "红色上衣"}, {"sentences": "白色裤子"}, {"sentences": "棉麻"}]
    golds = ["颜色: 红色\n材质: None", "颜色: 白色\n材质: None", "颜色: None\n材质: 棉麻"]
    preds = ["颜色: 红色\n材质: None", "", "颜色： 白色\n材质: 棉麻: "]
    got = scoring.score_task(ScoreSpec("NER"), examples, preds, golds)
    tags_g = [["B-颜色", "I-颜色", "O", "O"], ["B-颜色", "I-颜色", "O", "O"], ["B-材质", "I-材质"]]
    # pred 3: a full-width colon and a line ending with ": " are both skipped -> all O
    tags_p = [["B-颜色", "I-颜色", "O", "O"], ["O"] * 4, ["O", "O"]]
    report = classification_report(tags_g, tags_p, output_dict=True)
    assert got["micro-f1"] == pytest.approx(report["micro avg"]["f1-score"]) == pytest.approx(0.5)
    assert got["macro-f1"] == pytest.approx(report["macro avg"]["f1-score"])
    expect_rouge = [
        package_rouge_l(scoring.clean_prediction("NER", p), g)
        for p, g in zip(preds, golds, strict=True)
    ]
    assert got["rouge-l-f1"] == pytest.approx(sum(expect_rouge) / 3)
    with pytest.raises(ValueError, match="needs the examples"):
        scoring.score_task(ScoreSpec("NER"), None, preds, golds)


def test_ner_no_entities_anywhere_is_nan_macro():
    micro, macro = scoring.ner_f1(["ab"], ["x: None"], ["x: None"], ", ")
    assert micro == 0.0 and math.isnan(macro)


@pytest.fixture
def data_dir(tmp_path):
    return write_shop_tasks(tmp_path)


def test_score_predictions(data_dir, caplog):
    """Partial coverage is in the scores only (the score CLI prints it, once), not logged."""
    rows = [
        {"task": "EN-Shop-CLS-topic", "index": 1, "prediction": "Price."},
        {"task": "ecom:ZH:Shop:Generate:title", "index": 0, "prediction": "红色T恤"},
    ]
    with caplog.at_level(logging.WARNING):
        scores = scoring.score_predictions(data_dir, rows)
    assert list(scores) == ["EN-Shop-CLS-topic", "ZH-Shop-Generate-title"]
    cls = scores["EN-Shop-CLS-topic"]
    assert cls["complete"] is False and cls["n"] == 1 and cls["n_total"] == 2
    assert cls["warning"] == "scored on 1 of 2 test examples"
    assert caplog.records == []
    assert cls["micro-f1"] == 1.0 and cls["rouge-l-f1"] == pytest.approx(ONE)
    gen = scores["ZH-Shop-Generate-title"]
    assert gen["complete"] is True and "warning" not in gen
    assert gen["micro-f1"] == pytest.approx(1.0) and gen["rouge-l-f1-cjk"] == pytest.approx(1.0)

    table = scoring.format_table(scores)
    lines = table.splitlines()
    assert lines[0].split() == ["task", "n", "rouge-l-f1", "micro-f1", "macro-f1", "rouge-l-f1-cjk"]
    assert lines[2].split() == ["EN-Shop-CLS-topic", "1*", "100.00", "100.00", "100.00", "100.00"]
    assert lines[5].split() == ["average", "2", "tasks", "100.00", "100.00", "100.00", "100.00"]
    assert lines[-1] == "* scored on part of the task's examples"


def test_condition_extract_with_another_label_sep(tmp_path):
    """Contract 3 joins a Condition_Extract gold with ", " (the paper hard-coded it) while
    5.1 splits golds and predictions on label_sep: with label_sep "|" a two-term gold is
    ONE item, matched only by a prediction that repeats it with ", "."""
    write_task(
        tmp_path,
        "ZH-Shop-Condition_Extract-attr",
        {
            "defi": "attr",
            "test_prompt": {"instruction": "{sentences} {label_set}"},
            "label_set": {"k": ["颜色", "材质"]},
            "label_key": "k",
            "label_sep": "|",
        },
        [
            {"sentences": "红色棉衣", "spans": [{"term": "红色"}, {"term": "棉"}]},
            {"sentences": "红色棉裤", "spans": [{"term": "红色"}, {"term": "棉"}]},
            {"sentences": "白色", "spans": [{"term": "白色"}]},
        ],
    )
    task = reader.discover_tasks(tmp_path)["ZH-Shop-Condition_Extract-attr"]
    examples = reader.read_examples(task, "test")
    assert [instructions.build_answer(task, e) for e in examples] == [
        "红色, 棉",
        "红色, 棉",
        "白色",
    ]
    preds = ["红色, 棉", "红色|棉", "白色|黑色"]
    rows = [{"task": task.name, "index": i, "prediction": p} for i, p in enumerate(preds)]
    got = scoring.score_predictions(tmp_path, rows)[task.name]
    # items: {红色, 棉}/{红色, 棉} hit; {红色, 棉}/{红色 | 棉} none; {白色}/{白色, 黑色} one.
    # micro: tp 2, 5 predicted, 3 gold -> p 0.4, r 2/3; macro: mean p 0.5, mean r 2/3.
    assert got["micro-f1"] == pytest.approx(0.5, abs=1e-12)
    assert got["macro-f1"] == pytest.approx(4 / 7, abs=1e-12)
    # "红色|棉" and "白色|黑色" are single whitespace tokens; CJK ROUGE drops "|" and ",".
    assert got["rouge-l-f1"] == pytest.approx(ONE / 3, abs=1e-12)
    assert got["rouge-l-f1-cjk"] == pytest.approx((1 + 1 + 2 / 3) / 3, abs=1e-12)


def test_average_leaves_out_nan_and_says_over_how_many_tasks():
    """A NER task without entities has macro-f1 NaN: null in the JSON, left out of the
    average, and the table says the average is over fewer tasks."""
    cls = scoring.score_task(ScoreSpec("CLS"), None, ["Food"], ["Food"])
    ner = scoring.score_task(ScoreSpec("NER"), [{"sentences": "ab"}], ["x: None"], ["x: None"])
    assert ner["micro-f1"] == 0.0 and math.isnan(ner["macro-f1"])
    scores = {"EN-Shop-CLS-topic": cls, "EN-Shop-NER-ents": ner}
    assert scoring.average_counts(scores) == {
        "rouge-l-f1": 2, "micro-f1": 2, "macro-f1": 1, "rouge-l-f1-cjk": 2,
    }  # fmt: skip
    text = json.dumps(scoring.scores_json(scores), allow_nan=False)  # no NaN left
    data = json.loads(text)
    assert data["EN-Shop-NER-ents"]["macro-f1"] is None
    assert data["average"] == {
        "rouge-l-f1": ONE, "micro-f1": 0.5, "macro-f1": 1.0, "rouge-l-f1-cjk": 1.0,
        "tasks": {"rouge-l-f1": 2, "micro-f1": 2, "macro-f1": 1, "rouge-l-f1-cjk": 2},
    }  # fmt: skip
    lines = scoring.format_table(scores).splitlines()
    assert lines[3].split() == ["EN-Shop-NER-ents", "1", "100.00", "0.00", "nan", "100.00"]
    assert lines[5].split() == ["average", "2", "tasks", "100.00", "50.00", "100.00+", "100.00"]
    assert lines[6:] == [
        "+ macro-f1: average over the 1 of 2 tasks where it is defined "
        "(NaN: a NER task with no entity in its golds or predictions)"
    ]
    only_ner = scoring.scores_json({"EN-Shop-NER-ents": ner})
    assert only_ner["average"]["macro-f1"] is None
