"""Tests for the sample's example generators (ecominstruct/sample_generators.py): the
examples they wrote into the bundled sample, and the instructions built from them."""

import pytest

from ecomgpt_jax.ecominstruct import instructions, make_sample, reader

SAMPLE = make_sample.SAMPLE_DIR


@pytest.fixture(scope="module")
def tasks():
    return reader.discover_tasks(SAMPLE)


def test_examples_are_consistent(tasks):
    for task in tasks.values():
        splits = [s for s in ("train", "test") if task.has_split(s)]
        seen = {}
        for split in splits:
            examples = reader.read_examples(task, split)
            sentences = [ex["sentences"] for ex in examples]
            assert len(set(sentences)) == len(sentences)
            seen[split] = set(sentences)
            for ex in examples:
                if task.type == "CLS":
                    gold = ex["labels"][task.label_key]
                    assert gold and set(gold) <= set(task.label_set)
                elif task.type != "Generate":
                    # Only NER may have no span (its answer is then "<type>: None" lines).
                    assert ex["spans"] or (task.type == "NER")
                    for span in ex["spans"]:
                        assert ex["sentences"][span["start"] : span["end"]] == span["term"]
                        if task.type in ("NER", "Condition_Extract"):
                            assert span["type"] in task.label_set
        if len(seen) == 2:
            assert not seen["train"] & seen["test"]  # test never repeats train


def test_instructions_build_for_every_task(tasks):
    assert len(tasks) == 18
    for task in tasks.values():
        for split in ("train", "test"):
            if not task.has_split(split):
                continue
            examples = reader.read_examples(task, split)
            built = instructions.task_instructions(task, split)
            assert len(built) == len(examples), (task.name, split)
            for ex, ins in zip(examples, built, strict=True):
                assert ins.prompt.endswith("### Response:"), (task.name, split)
                assert ex["sentences"] in ins.prompt, (task.name, split)
                assert ins.answer.strip(), (task.name, split)
    ner = tasks["EN-Shop_Product-NER-product_entity"]
    first = instructions.task_instructions(ner, "test")[0]
    assert first.prompt.endswith("### Response:")
    assert first.answer == ("Brand: Bluepeak\nColor: green\nMaterial: bamboo\nProduct: keyboard")
    gen = instructions.task_instructions(tasks["ZH-OpenBG_Align-Generate-title_generate"], "test")
    assert gen[0].answer == "初夏2022秋季新款休闲藏青色羊毛针织衫"
