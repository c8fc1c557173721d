"""The documentation in the repository: docs/configuration.md is what the configuration model
generates, every key is described, docs/contract.md and the other pages are where the code and the
tests point, and shell completion works as docs/operations.md says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gc_daemon import config_docs
from gc_daemon.config import Config

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_configuration_reference_is_current():
    generated = config_docs.render()
    current = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert current == generated, (
        "docs/configuration.md is stale: run `python -m gc_daemon.config_docs > docs/configuration.md`"
    )


def test_every_configuration_key_is_documented_with_type_default_and_example():
    sections = config_docs.rows()
    keys = {row[0].strip("`") for table in sections.values() for row in table}
    expected = set()

    def walk(model, prefix=""):
        for name, field in model.model_fields.items():
            key = f"{prefix}.{name}" if prefix else name
            expected.add(key)
            sub, is_list = config_docs._model_of(field.annotation)
            if sub is not None:
                walk(sub, f"{key}[]" if is_list else key)

    walk(Config)
    assert keys == expected
    for table in sections.values():
        for key, type_, default, example, description in table:
            assert type_ and default and example and description, key
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert "| `azure.timeout` | duration | `1m` |" in text
    assert "| `mode` | one of `dry-run`, `delete` | `dry-run` |" in text


def test_a_field_without_a_description_fails_the_generator():
    from pydantic import BaseModel

    class Undocumented(BaseModel):
        documented: int = 1
        """Has one."""
        bare: int = 2

    with pytest.raises(config_docs.DocsError, match="bare: no description"):
        config_docs.rows(Undocumented)


def test_the_generator_checks_a_stale_file(tmp_path):
    stale = tmp_path / "configuration.md"
    stale.write_text("# old\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "gc_daemon.config_docs", "--check", str(stale)],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 1 and "is stale" in run.stderr
    run = subprocess.run([sys.executable, "-m", "gc_daemon.config_docs", "--check", str(DOCS / "configuration.md")],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr


def test_nothing_cites_the_contract_outside_the_repository():
    """The operator contract is docs/contract.md; INTERFACE.md is not in the repository."""
    offenders = []
    for path in [ROOT / "README.md", *DOCS.rglob("*.md"), *(ROOT / "tests").rglob("*.py"),
                 *(ROOT / "gc_daemon").rglob("*.py"), *(ROOT / "deploy").rglob("*.md")]:
        if path == Path(__file__).resolve():
            continue
        if "INTERFACE.md" in path.read_text(encoding="utf-8", errors="replace"):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_contract_names_every_command_and_exit_status():
    from gc_daemon.cli import cli

    text = (DOCS / "contract.md").read_text(encoding="utf-8")
    for name in cli.commands:
        assert f"`vhd-gc" in text and re.search(rf"vhd-gc[^`|]* {re.escape(name)}\b", text), name
    for status in ("`0`", "`1`", "`2`", "`3`", "`130`", "`143`"):
        assert status in text, status
    assert "`stopped`" in text and "vhdgc_build_info" in text


def test_readme_points_at_the_docs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in ("docs/quickstart.md", "docs/configuration.md", "docs/contract.md", "docs/operations.md"):
        assert page in readme, page
        assert (ROOT / page).exists(), page


def _complete(words: str) -> list[str]:
    """What bash completion offers for ``words`` (click's protocol: COMP_WORDS and COMP_CWORD)."""
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "_VHD_GC_COMPLETE": "bash_complete",
           "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    run = subprocess.run([sys.executable, "-c", "from gc_daemon.cli import cli; cli(prog_name='vhd-gc')"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout.split()


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_shell_completion_script_is_produced(shell):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "_VHD_GC_COMPLETE": f"{shell}_source"}
    run = subprocess.run([sys.executable, "-c", "from gc_daemon.cli import cli; cli(prog_name='vhd-gc')"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "_VHD_GC_COMPLETE" in run.stdout
    assert {"bash": "complete -o nosort -F", "zsh": "compdef", "fish": "complete --no-files --command vhd-gc"}[shell] in run.stdout


def test_shell_completion_completes_subcommand_names():
    from gc_daemon.cli import cli

    assert _complete("vhd-gc s") == ["plain,scan"]
    assert {f"plain,{name}" for name in cli.commands} <= set(_complete("vhd-gc "))
    assert _complete("vhd-gc db ") == ["plain,upgrade"]
    assert "plain,--format" in _complete("vhd-gc report --f")
