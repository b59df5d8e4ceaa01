from __future__ import annotations

from pathlib import Path

import pytest

from llmops.errors import PromptError, RenderError
from llmops.prompts import PromptLibrary
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def lib() -> PromptLibrary:
    return PromptLibrary(ROOT / "prompts")


def test_shipped_prompts_and_golden_sets(lib: PromptLibrary):
    assert {"contract_review", "email_generation", "support_ticket_classify", "meeting_notes_summary_ja"} <= set(
        lib.names()
    )
    assert [str(v.version) for v in lib.versions("contract_review")] == ["1.0.0", "2.0.0", "3.0.0"]
    for name in lib.names():
        lines = (ROOT / "prompts" / name / "eval" / "golden.jsonl").read_text().splitlines()
        assert len([line for line in lines if line.strip()]) >= 20


def test_refs(lib: PromptLibrary):
    assert lib.resolve("contract_review@latest").ref == "contract_review@3.0.0"
    assert lib.resolve("contract_review@production").ref == "contract_review@2.0.0"
    assert lib.resolve("contract_review").ref == "contract_review@2.0.0"  # bare name = production
    assert lib.resolve("contract_review@1.0.0").ref == "contract_review@1.0.0"
    with pytest.raises(PromptError, match=r"no version 9\.9\.9"):
        lib.resolve("contract_review@9.9.9")
    with pytest.raises(PromptError, match="unknown alias 'canary'"):
        lib.resolve("contract_review@canary")
    with pytest.raises(PromptError, match="unknown prompt 'nope'"):
        lib.resolve("nope")


def _mini(tmp_path: Path, versions: list[str], body: str = "Hello {{ who }}") -> PromptLibrary:
    d = tmp_path / "greet"
    d.mkdir(parents=True)
    (d / "prompt.yaml").write_text(
        "name: greet\ndescription: d\nowner: o\ntask_type: generation\n"
        "variables:\n  who: {type: string, max_length: 50}\n"
    )
    for v in versions:
        (d / f"{v}.j2").write_text(body)
    return PromptLibrary(tmp_path, max_rendered_chars=1000)


def test_latest_is_semantic(tmp_path: Path):
    lib = _mini(tmp_path, ["9.0.0", "10.0.0", "2.1.0"])
    assert lib.resolve("greet@latest").ref == "greet@10.0.0"


def test_render_is_strict(lib: PromptLibrary):
    with pytest.raises(RenderError, match="missing variable 'subject'"):
        lib.render("support_ticket_classify", {"body": "x"})
    with pytest.raises(RenderError, match="undeclared variable"):
        lib.render("support_ticket_classify", {"subject": "a", "body": "b", "evil": "c"})
    with pytest.raises(RenderError, match="should be string"):
        lib.render("support_ticket_classify", {"subject": 3, "body": "b"})
    r = lib.render("support_ticket_classify@1.1.0", {"subject": "Hi", "body": "{{ 7*7 }} and {% raw %}"})
    assert "{{ 7*7 }}" in r.messages[-1]["content"]  # record text is data, never template source
    assert [m["role"] for m in r.messages] == ["system", "user"]


def test_sandbox_blocks_ssti_and_huge_output(tmp_path: Path):
    lib = _mini(tmp_path, ["1.0.0"], body="{{ who.__class__.__mro__ }}")
    with pytest.raises(RenderError, match=r"sandbox|unsafe|attribute"):
        lib.render("greet", {"who": "x"})
    lib2 = _mini(tmp_path / "b", ["1.0.0"], body="{{ 'a' * 50000000 }}")
    with pytest.raises(RenderError, match="sandbox"):
        lib2.render("greet", {"who": "x"})


def test_rendered_size_cap(tmp_path: Path):
    lib = _mini(tmp_path, ["1.0.0"], body="{% for i in range(100) %}{{ who }}{% endfor %}")
    with pytest.raises(RenderError, match="over the cap"):
        lib.render("greet", {"who": "x" * 40})


def test_template_with_undeclared_variable_is_rejected(tmp_path: Path):
    with pytest.raises(PromptError, match="undeclared variable"):
        _mini(tmp_path, ["1.0.0"], body="{{ who }} {{ secret }}")
