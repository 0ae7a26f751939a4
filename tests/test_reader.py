"""Tests for ecomgpt_jax.ecominstruct.reader: discovery, meta validation, JSON Lines parsing."""

import pathlib

import pytest
from conftest import REAL_DATA_DIR
from task_folders import write_task

from ecomgpt_jax.ecominstruct import reader
from ecomgpt_jax.ecominstruct.reader import DataError

REAL = REAL_DATA_DIR
needs_real = pytest.mark.skipif(
    not REAL, reason="ECOMGPT_DATA_DIR is not set (real EcomInstruct held-out data)"
)

CLS_META = {
    "task": "SOMETHING-ELSE-NER-wrong",  # must be ignored: the folder decides
    "defi": "review topic",
    "test_prompt": {
        "instruction": "### Instruction:\n{sentences}\nTopics: {label_set}.\n### Response:"
    },
    "label_set": {"default": ["Food", "Service", "Price"]},
    "label_key": "default",
    "label_sep": ", ",
}


def make_task(root, name, meta, lines=None, split="test"):
    """write_task with the split's lines as text (malformed JSON lines here)."""
    return write_task(root, name, meta, lines=lines, split=split)


def test_parse_task_name():
    assert reader.parse_task_name("EN-ABSA-CLS-review_topic_category") == (
        "EN",
        "ABSA",
        "CLS",
        "review_topic_category",
    )
    assert reader.parse_task_name("ZH-MEPAVE-Condition_Extract-attribute_value_detection") == (
        "ZH",
        "MEPAVE",
        "Condition_Extract",
        "attribute_value_detection",
    )
    with pytest.raises(DataError, match="reserved for SeqIO"):
        reader.parse_task_name("EN-ABSA-CLS-a:b")
    with pytest.raises(DataError, match="unknown task type 'QA'"):
        reader.parse_task_name("EN-ABSA-QA-x")
    with pytest.raises(DataError, match="four non-empty fields"):
        reader.parse_task_name("EN-ABSA-CLS-x-y")
    with pytest.raises(DataError, match="unknown LANG 'FR'"):
        reader.parse_task_name("FR-ABSA-CLS-x")
    # SeqIO's task-name characters (letters of any script, digits, "_", ".", "#"): a name
    # it would refuse is refused here, with the folder, before registration.
    assert reader.parse_task_name("ZH-店铺.v2-CLS-a#1") == ("ZH", "店铺.v2", "CLS", "a#1")
    with pytest.raises(DataError) as e:
        reader.parse_task_name("EN-D-CLS-a+b (old)")
    assert e.value.what == (
        "task name 'EN-D-CLS-a+b (old)' contains ' ()+': use letters, digits, '_', '.' or "
        "'#' within its fields"
    )


def test_data_error_message():
    assert str(DataError("bad", "a/b.json", 3)) == "a/b.json:3: bad"
    assert str(DataError("bad", "a/b.json")) == "a/b.json: bad"
    assert isinstance(DataError("x"), ValueError)


def test_discover_uses_folder_name_and_ignores_other_files(tmp_path):
    folder = make_task(
        tmp_path,
        "EN-ABSA-CLS-topic",
        CLS_META,
        ['{"sentences": "a", "labels": {"default": ["Food"]}}'],
    )
    (folder / ".meta-info.json.bak").write_text("not json at all")
    (folder / "notes.txt").write_text("ignored")
    make_task(
        tmp_path,
        "ZH-Shop-Generate-title",
        {"defi": "title", "test_prompt": {"instruction": "{sentences}\n### Response:"}},
    )
    tasks = reader.discover_tasks(tmp_path)
    assert list(tasks) == ["EN-ABSA-CLS-topic", "ZH-Shop-Generate-title"]
    task = tasks["EN-ABSA-CLS-topic"]
    assert (task.lang, task.dataset, task.type, task.short_name) == ("EN", "ABSA", "CLS", "topic")
    assert task.path == folder
    assert task.label_set == ["Food", "Service", "Price"]
    assert task.label_sep == ", "
    assert task.has_split("test") and not task.has_split("train")
    gen = tasks["ZH-Shop-Generate-title"]
    assert gen.type == "Generate" and gen.label_set == [] and gen.label_sep == ", "


def test_discover_errors(tmp_path):
    with pytest.raises(DataError, match="data directory does not exist"):
        reader.discover_tasks(tmp_path / "missing")
    assert reader.discover_tasks(tmp_path) == {}
    (tmp_path / "file.json").write_text("{}")
    with pytest.raises(DataError) as e:
        reader.discover_tasks(tmp_path / "file.json")
    assert str(e.value) == f"{tmp_path / 'file.json'}: data directory is a file, not a folder"

    bad = tmp_path / "a"
    make_task(bad, "EN-X-CLS-t", {k: v for k, v in CLS_META.items() if k != "label_key"})
    with pytest.raises(DataError, match=r"meta-info.json: missing or non-string field 'label_key'"):
        reader.discover_tasks(bad)

    bad = tmp_path / "b"
    make_task(bad, "EN-X-NER-t", {"defi": "d", "test_prompt": {"instruction": "{sentences}"}})
    with pytest.raises(DataError, match="'label_key' \\(needed by NER\\)"):
        reader.discover_tasks(bad)

    bad = tmp_path / "c"
    make_task(bad, "EN-X-Extract-t", {"test_prompt": {"instruction": "{sentences}"}})
    with pytest.raises(DataError, match="field 'defi'"):
        reader.discover_tasks(bad)

    bad = tmp_path / "d"
    make_task(bad, "EN-X-Extract-t", {"defi": "d"})
    with pytest.raises(DataError, match="'test_prompt.instruction'"):
        reader.discover_tasks(bad)

    bad = tmp_path / "e"
    make_task(bad, "EN-X-Extract-t", {"defi": "d", "test_prompt": {"instruction": "{sentence}"}})
    with pytest.raises(DataError, match=r"unknown placeholder\(s\) \['sentence'\]"):
        reader.discover_tasks(bad)

    bad = tmp_path / "f"
    make_task(bad, "EN-X-Extract-t:2", {"defi": "d", "test_prompt": {"instruction": "{sentences}"}})
    with pytest.raises(DataError, match="reserved for SeqIO"):
        reader.discover_tasks(bad)

    bad = tmp_path / "g"
    make_task(bad, "EN-X-Chat-t", {"defi": "d", "test_prompt": {"instruction": "{sentences}"}})
    with pytest.raises(DataError, match="unknown task type 'Chat'"):
        reader.discover_tasks(bad)

    bad = tmp_path / "h"
    make_task(bad, "EN-X-Extract-t", '{"defi": "d",\n "test_prompt": }')
    with pytest.raises(DataError, match=r"meta-info.json:2: not valid JSON"):
        reader.discover_tasks(bad)

    bad = tmp_path / "j"
    make_task(bad, "EN-X-CLS-t", CLS_META | {"label_set": {CLS_META["label_key"]: []}})
    with pytest.raises(DataError) as e:
        reader.discover_tasks(bad)
    assert e.value.what == f"field 'label_set.{CLS_META['label_key']}' (label_key) is empty (CLS)"

    bad = tmp_path / "i"
    (bad / "X" / "tasks" / "EN-X-Extract-t").mkdir(parents=True)
    with pytest.raises(DataError, match="task folder has no meta-info.json"):
        reader.discover_tasks(bad)


LAYOUT = "expected <root>/<Dataset>/tasks/<LANG>-<Dataset>-<TYPE>-<name>/meta-info.json"


@pytest.mark.parametrize(
    ("given", "hint"),
    [
        ("", ""),  # an empty root: the layout only
        ("up", " (task folders are one level down: point at {root})"),
        ("up/root/ABSA", " (this is a <Dataset> folder: point at {root})"),
        ("up/root/ABSA/tasks", " (this is a <Dataset>/tasks folder: point at {root})"),
        ("up/root/ABSA/tasks/EN-ABSA-CLS-topic", " (this is a task folder: point at {root})"),
    ],
)
def test_discover_without_task_folders_names_the_layout(tmp_path, given, hint):
    """A root one level off is the usual mistake: say what was expected and where to point
    (not "no task has a 'test' split" further on). Registration still accepts an empty root."""
    up = tmp_path / "up"
    root = up / "root"
    make_task(root, "EN-ABSA-CLS-topic", CLS_META)
    given = tmp_path / "empty" if not given else tmp_path / given
    given.mkdir(exist_ok=True)
    assert reader.discover_tasks(given) == {}  # the default: valid, e.g. for registration
    with pytest.raises(DataError) as e:
        reader.discover_tasks(given, allow_empty=False)
    assert str(e.value) == f"{given}: no task folders found; {LAYOUT}{hint.format(root=root)}"


@pytest.mark.parametrize(
    ("template", "what"),
    [
        # Each of these passed validation before and failed (or worse, did not) later.
        ("{sentences}\nReturn JSON like {} ", "has positional placeholder '{}'; use a named one"),
        ("{0}", "has positional placeholder '{0}'; use a named one"),
        ("{sentences:d}", "has placeholder '{sentences:d}': only bare names are allowed"),
        ("{label_set!z} {sentences}", "has placeholder '{label_set!z}': only bare names"),
        ("{sentences.upper}", "has placeholder '{sentences.upper}': only bare names"),
        ("{sentences[0]}", "has placeholder '{sentences[0]}': only bare names"),
        ("{sentences} }", "is not a format template: Single '}' encountered"),
        # Accepted before: every prompt silently lacked the example's text.
        ("Classify: {label_set}", "has no {sentences} placeholder (the example's text)"),
    ],
)
def test_bad_templates_name_meta_file_and_field(tmp_path, template, what):
    folder = make_task(
        tmp_path, "EN-X-Extract-t", {"defi": "d", "test_prompt": {"instruction": template}}
    )
    with pytest.raises(DataError) as info:
        reader.discover_tasks(tmp_path)
    assert info.value.path == str(folder / "meta-info.json")
    assert info.value.what.startswith(f"field 'test_prompt.instruction' {what}")
    assert str(info.value).count("\n") == 0


def test_truncated_crlf_line_reports_the_column_on_its_line(tmp_path):
    folder = make_task(tmp_path, "EN-X-Extract-t", CLS_META)
    (folder / "test.json").write_bytes(b'{"sentences": "ok", "spans": []}\r\n{"sentences": "a"\r\n')
    task = reader.discover_tasks(tmp_path)["EN-X-Extract-t"]
    with pytest.raises(DataError) as info:
        reader.read_examples(task, "test")
    assert str(info.value) == (
        f"{folder / 'test.json'}:2: not a JSON object or Python literal "
        "(Expecting ',' delimiter, column 18)"
    )


def test_read_examples_lines(tmp_path):
    lines = [
        '{"sentences": "The bread.", "labels": {"default": ["Food"]}}',
        "",
        "   ",
        "{'sentences': ['Half ', 'one'], 'labels': {'default': ['Food', 'Price']}}",
        '{"sentences": "x", "labels": {"default": []}, "trace_id": 7}',
    ]
    make_task(tmp_path, "EN-ABSA-CLS-topic", CLS_META, lines)
    task = reader.discover_tasks(tmp_path)["EN-ABSA-CLS-topic"]
    examples = reader.read_examples(task, "test")
    assert [e["sentences"] for e in examples] == ["The bread.", "Half one", "x"]
    assert examples[1]["labels"] == {"default": ["Food", "Price"]}
    with pytest.raises(DataError, match="has no 'train' split"):
        reader.read_examples(task, "train")


@pytest.mark.parametrize(
    ("name", "line", "pattern"),
    [
        (
            "EN-X-CLS-t",
            "__import__('os').system('echo hi')",
            r"test.json:2: not a JSON object or Python literal",
        ),
        (  # truncated: the column is JSON's, on this line (51 = just past its end)
            "EN-X-CLS-t",
            '{"sentences": "a", "labels": {"default": ["Food"]}',
            r"test.json:2: not a JSON object or Python literal "
            r"\(Expecting ',' delimiter, column 51\)$",
        ),
        (
            "EN-X-CLS-t",
            '{"labels": {"default": ["Food"]}}',
            r"test.json:2: missing field 'sentences'",
        ),
        ("EN-X-CLS-t", '{"sentences": 3, "labels": {}}', r"test.json:2: field 'sentences'"),
        (
            "EN-X-CLS-t",
            '{"sentences": "a", "labels": {"other": ["x"]}}',
            r"test.json:2: missing field 'labels.default'",
        ),
        (
            "EN-X-CLS-t",
            '{"sentences": "a", "labels": {"default": "Food"}}',
            r"test.json:2: field 'labels.default' must be a list",
        ),
        (  # json.loads takes NaN and Infinity; strict JSON and Python literals do not
            "EN-X-CLS-t",
            '{"sentences": "a", "labels": {"default": ["Food"]}, "score": NaN}',
            r"test.json:2: not a JSON object or Python literal \(NaN is not JSON\)$",
        ),
        (
            "EN-X-CLS-t",
            '{"sentences": "a", "labels": {"default": ["Food"]}, "score": -Infinity}',
            r"test.json:2: not a JSON object or Python literal \(-Infinity is not JSON\)$",
        ),
        (  # a leading no-break space: neither JSON nor a literal (str.strip would drop it)
            "EN-X-CLS-t",
            '\xa0{"sentences": "a", "labels": {"default": ["Food"]}}',
            r"test.json:2: not a JSON object or Python literal \(Expecting value, column 1\)$",
        ),
        ("EN-X-CLS-t", "[1, 2]", r"test.json:2: expected an object, got list"),
        ("EN-X-NER-t", '{"sentences": "a"}', r"test.json:2: missing field 'spans'"),
        (
            "EN-X-NER-t",
            '{"sentences": "a", "spans": [{"term": "a", "type": 3}]}',
            r"test.json:2: field 'spans\[0\].type' must be a string",
        ),
        (
            "EN-X-Extract-t",
            '{"sentences": "a", "spans": [{"start": 0}]}',
            r"test.json:2: field 'spans\[0\].term'",
        ),
    ],
)
def test_read_examples_errors(tmp_path, name, line, pattern):
    first = (
        '{"sentences": "ok", "labels": {"default": ["Food"]}}'
        if "-CLS-" in name
        else '{"sentences": "ok", "spans": []}'
    )
    make_task(tmp_path, name, CLS_META, [first, line])
    task = reader.discover_tasks(tmp_path)[name]
    with pytest.raises(DataError, match=pattern) as info:
        reader.read_examples(task, "test")
    assert info.value.line == 2 and info.value.path.endswith("test.json")


def test_default_data_dir(monkeypatch):
    monkeypatch.setenv("ECOMGPT_DATA_DIR", "/some/where")
    assert reader.default_data_dir() == pathlib.Path("/some/where")
    monkeypatch.delenv("ECOMGPT_DATA_DIR")
    assert reader.default_data_dir() == pathlib.Path(reader.__file__).resolve().parent / "sample"


@needs_real
def test_real_data():
    tasks = reader.discover_tasks(REAL)
    assert "EN-ABSA-CLS-review_topic_category" in tasks
    # meta's `task` field says "ZH-JAVE-Condition_Extract-..." here: the folder wins.
    ner = tasks["ZH-MEPAVE-NER-attribute_value_extraction"]
    assert ner.type == "NER" and ner.meta["task"].startswith("ZH-JAVE-Condition_Extract")
    assert len(ner.label_set) == 26 and ner.label_set[0] == "下摆类型"
    for task in tasks.values():
        examples = reader.read_examples(task, "test")
        assert len(examples) == 500, task.name
        assert all(isinstance(e["sentences"], str) for e in examples)
    absa = reader.read_examples(tasks["EN-ABSA-CLS-review_topic_category"], "test")
    assert absa[0] == {
        "sentences": "The bread is top notch as well.",
        "labels": {"default": ["Food"]},
    }


def test_no_task_folders_hint_resolves_dots(tmp_path, monkeypatch):
    """`--data_dir ..` from inside a task folder: the hint names the real data root, not
    a path climbing the literal ".." (pathlib's parents do not resolve it)."""
    root = tmp_path / "root"
    make_task(root, "EN-ABSA-CLS-topic", CLS_META)
    monkeypatch.chdir(root / "ABSA" / "tasks" / "EN-ABSA-CLS-topic")
    for given, what in [("..", "<Dataset>/tasks"), ("../..", "<Dataset>")]:
        with pytest.raises(DataError) as e:
            reader.discover_tasks(given, allow_empty=False)
        assert str(e.value).endswith(f" (this is a {what} folder: point at {root})")


def test_lone_surrogates_deep_nesting_and_odd_names_are_one_line(tmp_path):
    """Each would fail later as a trace: a lone surrogate when a prompt or a score is
    written (UnicodeEncodeError), deep nesting in json.loads (RecursionError), an empty
    label_sep when scoring splits on it, a folder name in another encoding anywhere."""
    with pytest.raises(DataError) as info:
        reader.parse_line('{"sentences": "red \\ud800 shoe"}', "t.json", 3)
    assert str(info.value) == "t.json:3: a lone surrogate escape (\\ud800) is not a character"
    with pytest.raises(DataError) as info:  # a Python literal's escape, too
        reader.parse_line("{'sentences': 'bad \\U0000dc00 x'}", "t.json", 4)
    assert str(info.value) == "t.json:4: a lone surrogate escape (\\udc00) is not a character"
    pair = reader.parse_line('{"sentences": "\\ud83d\\ude00"}', "t.json", 1)
    assert pair == {"sentences": "\U0001f600"}  # an escaped pair is one character
    with pytest.raises(DataError) as info:
        reader.parse_line("[" * 100_000 + "]" * 100_000, "t.json", 2)
    assert str(info.value) == "t.json:2: not a JSON object or Python literal (nested too deep)"
    meta = dict(CLS_META, label_sep="")
    with pytest.raises(DataError) as info:
        reader.load_task(make_task(tmp_path, "EN-ABSA-CLS-x", meta, ['{"sentences": "a"}']))
    assert str(info.value).endswith("meta-info.json: field 'label_sep' must be a non-empty string")
    name = b"EN-AB\xffSA-CLS-x".decode("utf-8", "surrogateescape")  # as os.listdir gives it
    with pytest.raises(DataError) as info:
        reader.parse_task_name(name)
    assert str(info.value) == f"{name}: task name {name!r} is not UTF-8"
