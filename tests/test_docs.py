"""The documentation: the site builds with --strict (no broken link or anchor), the generated
references match the code, the README stays a front door whose examples work, and the project's
prose carries no tracker numbers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.reference import PAGES

ROOT = Path(__file__).resolve().parent.parent
PROSE = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]


@pytest.mark.parametrize("name", sorted(PAGES))
def test_the_generated_references_match_the_code(name):
    committed = (ROOT / "docs" / "reference" / name).read_text(encoding="utf-8")
    assert committed == PAGES[name](), "regenerate: make docs (python -m gateway.reference docs/reference)"


def test_the_documentation_site_builds_strict(tmp_path):
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300,
                           env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert built.returncode == 0, built.stderr
    assert "WARNING" not in built.stderr, built.stderr
    assert (tmp_path / "getting-started" / "index.html").is_file()


def test_every_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {str(path.relative_to(ROOT / "docs")) for path in (ROOT / "docs").rglob("*.md")}
    assert {page for page in pages if page not in nav} == set()


def test_the_readme_is_a_front_door_with_the_two_commands_first():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    first_block = readme.split("```")[1]
    assert [line.split()[:2] for line in first_block.splitlines()[1:]] == [["make", "run"], ["make", "test"]]


def test_the_readmes_policy_example_is_valid_and_its_golden_tests_pass(tmp_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    policy = tmp_path / "policy.yaml"
    policy.write_text(re.search(r"```yaml\n(version:.*?)```", readme, re.S).group(1), encoding="utf-8")
    wardgate = Path(sys.executable).parent / "wardgate"
    for command in ("validate", "test"):
        result = subprocess.run([str(wardgate), "policy", command, str(policy)], capture_output=True, text=True,
                                timeout=300, env={"WARDGATE_STATE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"})
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", PROSE, ids=lambda path: str(path.relative_to(ROOT)))
def test_the_prose_carries_no_tracker_numbers(path):
    text = path.read_text(encoding="utf-8")
    assert re.findall(r"\b(?:issues?|tickets?) ?#?\d+", text, re.I) == []
