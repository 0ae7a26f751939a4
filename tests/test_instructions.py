"""Tests for prompts and gold answers (ecomgpt_jax/ecominstruct/instructions.py; its CLI,
ecomgpt_jax/instructions.py, in test_instructions_cli.py)."""

import random

import pytest
from conftest import REAL_DATA_DIR
from task_folders import cls_task, make_task

from ecomgpt_jax.ecominstruct import instructions, reader
from ecomgpt_jax.ecominstruct.instructions import HEAD, Instruction

REAL = REAL_DATA_DIR
needs_real = pytest.mark.skipif(
    not REAL, reason="ECOMGPT_DATA_DIR is not set (real EcomInstruct held-out data)"
)


def head(defi):
    return (
        f"Below is an instruction that describes the {defi} task. "
        "Write a response that appropriately completes the request.\n"
    )


def test_head_constant():
    assert HEAD.format(defi="x") == head("x")


def test_ner_prompt_and_answer(tmp_path):
    meta = {
        "defi": "entity",
        "test_prompt": {
            "instruction": "### Instruction:\n{sentences}\nTypes: {label_set}{ex}.\n### Response:"
        },
        "label_set": {"en": ["Brand", "Product", "Color"], "zh": ["品牌"]},
        "label_key": "en",
        "label_sep": " | ",
    }
    spans = [
        {"term": "Acme", "type": "Brand", "start": 0, "end": 4},
        {"term": "red", "type": "Color", "start": 5, "end": 8},
        {"term": "blue", "type": "Color", "start": 13, "end": 17},
        {"term": "and", "start": 9, "end": 12},  # `type` is optional: matches no label
    ]
    task = make_task(
        tmp_path,
        "EN-Shop-NER-ent",
        meta,
        [{"sentences": ["Acme red ", "and blue"], "spans": spans}],
    )
    [inst] = instructions.task_instructions(task, "test")
    assert inst == Instruction(
        "EN-Shop-NER-ent",
        0,
        head("entity")
        + "### Instruction:\nAcme red and blue\nTypes: Brand | Product | Color.\n### Response:",
        "Brand: Acme\nProduct: None\nColor: red | blue",
    )


def test_condition_extract_uses_comma_not_label_sep(tmp_path):
    meta = {
        "defi": "span",
        "test_prompt": {"instruction": "{sentences} about {label_set}:"},
        "label_set": {"cn": ["颜色", "材质"]},
        "label_key": "cn",
        "label_sep": "; ",
    }
    rows = [
        {
            "sentences": "红色棉T恤",
            "spans": [{"term": "红色", "type": "颜色"}, {"term": "棉", "type": "材质"}],
        },
        {"sentences": "无", "spans": []},
    ]
    task = make_task(tmp_path, "ZH-Shop-Condition_Extract-x", meta, rows)
    insts = instructions.task_instructions(task, "test")
    assert [i.prompt for i in insts] == [
        head("span") + "红色棉T恤 about 颜色; 材质:",
        head("span") + "无 about 颜色; 材质:",
    ]
    assert [i.answer for i in insts] == ["红色, 棉", ""]


def test_extract_and_generate(tmp_path):
    meta = {
        "defi": "pick",
        "test_prompt": {"instruction": "Pick.\n{sentences}\n[{label_set}]\n### Response:"},
        "label_sep": "; ",
    }
    task = make_task(
        tmp_path,
        "ZH-Shop-Extract-pick",
        meta,
        [{"sentences": "a, b", "spans": [{"term": "a"}, {"term": "b"}]}],
    )
    [inst] = instructions.task_instructions(task, "test")
    assert inst.prompt == head("pick") + "Pick.\na, b\n[]\n### Response:"
    assert inst.answer == "a; b"
    meta = {
        "defi": "title",
        "test_prompt": {"instruction": "{sentences}\nGenerate.\n### Response:"},
    }
    task = make_task(
        tmp_path,
        "ZH-Shop-Generate-title",
        meta,
        [{"sentences": "颜色#:#红", "label_set": [""], "spans": [{"term": "红色T恤"}]}],
    )
    [inst] = instructions.task_instructions(task, "test")
    assert inst.prompt == head("title") + "颜色#:#红\nGenerate.\n### Response:"
    assert inst.answer == "红色T恤"


def test_cls_candidates(tmp_path):
    task, labels = cls_task(tmp_path)
    insts = instructions.task_instructions(task, "test", seed=0)
    ks = []
    for i, inst in enumerate(insts):
        assert inst.answer == f"{labels[i % 100]}, Other"
        prefix = head("cat") + f"s{i}\nCandidates: "
        assert inst.prompt.startswith(prefix) and inst.prompt.endswith("\n### Response:")
        shown = inst.prompt[len(prefix) : -len("\n### Response:")].split(", ")
        assert len(shown) == len(set(shown))
        assert {labels[i % 100], "Other"} <= set(shown) <= set(labels) | {"Other"}
        ks.append(len(set(shown) - {labels[i % 100], "Other"}))
    # k is uniform in [0, 50): never 50 or more, and both ends are reached in 200 draws.
    assert max(ks) <= 49 and min(ks) == 0 and max(ks) >= 45
    # The gold labels are not always in front: the union is shuffled.
    firsts = [inst.prompt.split("Candidates: ")[1].split(", ")[0] for inst in insts]
    assert sum(f == "Other" for f in firsts) < 150

    # Exactly the documented procedure with the per-example generator.
    rng = random.Random("0:EN-Shop-CLS-cat:7")
    pool = list(labels)
    rng.shuffle(pool)
    k = rng.randrange(50)
    expect = list(dict.fromkeys(pool[:k] + [labels[7], "Other"]))
    rng.shuffle(expect)
    assert (
        insts[7].prompt == head("cat") + "s7\nCandidates: " + ", ".join(expect) + "\n### Response:"
    )

    # Reproducible, independent of order, and dependent on the seed.
    assert instructions.task_instructions(task, "test", seed=0) == insts
    example = reader.read_examples(task, "test")[7]
    again = instructions.build_prompt(task, example, instructions.example_rng(0, task.name, 7))
    assert again == insts[7].prompt
    other = instructions.task_instructions(task, "test", seed=1)
    assert [i.answer for i in other] == [i.answer for i in insts]
    assert sum(a.prompt != b.prompt for a, b in zip(other, insts, strict=True)) > 150


@needs_real
def test_real_prompts_and_answers():
    tasks = reader.discover_tasks(REAL)
    first = {name: instructions.task_instructions(t, "test")[0] for name, t in tasks.items()}

    ner = first["ZH-MEPAVE-NER-attribute_value_extraction"]
    labels = tasks["ZH-MEPAVE-NER-attribute_value_extraction"].label_set
    assert ner.prompt == head("attribute value detection") + (
        "### Instruction:\nHC圆领拼接连衣裙\nExtract all attribute value with attribue name about "
        + ", ".join(labels)
        + " in the sentence. \n### Response:"
    )
    lines = ner.answer.split("\n")
    assert len(lines) == 26 and lines[0] == "下摆类型: None"
    assert "领型: 圆领" in lines and "风格: 拼接" in lines

    ce = first["ZH-MEPAVE-Condition_Extract-attribute_value_detection"]
    assert ce.answer == "圆领, 拼接"
    assert ce.prompt.endswith(
        "Detect all attribute value about 下摆类型, 厚度, 口袋类型, "
        + ", ".join(labels[3:])
        + " in the sentence. \n### Response:"
    )

    lenovo = first["EN-Lenovo-Condition_Extract-Condition_Extract"]
    assert lenovo.answer == "Pentium 4 processor"
    assert lenovo.prompt.endswith(
        "business professionals .\nDetect all named entity about "
        "Attribute, Brand, Component, Product in the sentence. \n### Response:"
    )

    gen = first["ZH-OpenBG_Align-Generate-title_generate"]
    assert gen.answer == "韩国东大门2021秋季新款净版修身气质高腰显瘦毛边小脚牛仔裤"
    assert gen.prompt.startswith(head("product title generation") + "颜色分类#:#图片色#;#")
    assert gen.prompt.endswith(
        "裤门襟#:#拉链\nGenerate a product title based on the above attribute information. "
        "\n### Response:"
    )

    ext = first["ZH-Multi_CPR-Extract-product_select_2"]
    assert ext.answer == "新豪轩门窗 斯图加特78系统 铝合金窗内开内倒落地窗断桥铝平开窗"
    assert ext.prompt.startswith(
        head("product select") + "### Instruction:\nSelect documents from the candidates"
    )

    absa = instructions.task_instructions(tasks["EN-ABSA-CLS-review_topic_category"], "test")
    assert absa[0].answer == "Food"
    for inst in absa:
        body = inst.prompt.split("from the following topics: ")[1]
        assert body.endswith(". \n### Response:")
        shown = body[: -len(". \n### Response:")].split(", ")
        assert set(inst.answer.split(", ")) <= set(shown)
        assert set(shown) <= {"Food", "Service", "Price", "Ambience", "Anecdotes/Miscellaneous"}
    multi = [i for i in absa if ", " in i.answer]
    assert multi and multi[0].answer.count(", ") >= 1
