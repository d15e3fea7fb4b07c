"""The project-written training sets (classifiers/extra_data/): the committed files are what the generator
writes from templates/, and a malformed template file stops it with an error naming the file and entry."""

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

from classifiers.labels import ClassifierError

EXTRA_DIR = Path(__file__).resolve().parents[1] / "classifiers" / "extra_data"


@pytest.fixture(scope="module")
def generate():
    # A script, not a module of the package: loaded from its file.
    spec = importlib.util.spec_from_file_location("wardgate_extra_generate", EXTRA_DIR / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pydantic look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_regenerating_writes_the_committed_files(generate, tmp_path, capsys):
    generate.main(out_dir=tmp_path)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(p.name for p in EXTRA_DIR.glob("*.jsonl"))
    assert written == sorted(f"{p.stem}.jsonl" for p in (EXTRA_DIR / "templates").glob("*.yaml"))
    for name in written:
        assert (tmp_path / name).read_bytes() == (EXTRA_DIR / name).read_bytes(), name
    assert "jailbreak_zh: 260" in capsys.readouterr().out


def test_every_row_is_marked_and_labelled(generate):
    for name, rows in generate.build().items():
        assert all(r["written_by"] == "wardgate project" and r["set"] == name for r in rows)
        # A positive category makes the text unsafe; a safe text has no positive category.
        assert all(r["labels"]["unsafe"] == max(v for k, v in r["labels"].items() if k != "unsafe") for r in rows)


ENTRY = "templates[2] ('Where can I find nude pictures of {minors}?')"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "labels: [sexual, sexual_minors]\n    unknown: [illegal]\n  - pattern: How can I get",
            "labels: [sexual, sexual_minor]\n    unknown: [illegal]\n  - pattern: How can I get",
            f"{ENTRY}.labels[1]: Input should be 'sexual', 'sexual_minors'",
        ),
        ("minors: minors\n", "minors: kids_list\n", f"{ENTRY}: no list named 'kids_list' in lists"),
        (
            "minors: minors\n",
            "minor: minors\n",
            f"{ENTRY}: pattern 'Where can I find nude pictures of {{minors}}?' has no filler for ['minors']",
        ),
        ("minors: minors\n", "minors: minors\n      extra: [x]\n", f"{ENTRY}: fillers ['extra'] are in no pattern"),
        ("minors: minors\n", "minors: []\n", f"{ENTRY}.fillers.minors.list[str]: List should have at least 1 item"),
        ("pattern: Where can I find", "patern: Where can I find", "templates[2].patern: Extra inputs are not"),
        (
            "unknown: [illegal]\n  - pattern: How can I get",
            "unknown: [sexual]\n  - pattern: How can I get",
            "['sexual'] both in labels and in unknown",
        ),
        ("at_most: 200", "at_most: lots", "at_most: Input should be a valid integer"),
        ("set: sexual_minors_en", "set: sexual_minors", "set 'sexual_minors' must be the file's name"),
        ("lists:\n", "lists: [\n", "not valid YAML"),
    ],
)
def test_a_malformed_template_file_is_named_with_its_entry(generate, tmp_path, old, new, expected):
    shutil.copytree(EXTRA_DIR / "templates", tmp_path, dirs_exist_ok=True)
    path = tmp_path / "sexual_minors_en.yaml"
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(ClassifierError) as err:
        generate.build(tmp_path)
    assert str(err.value).startswith(f"{path}: ")
    assert expected in str(err.value)
