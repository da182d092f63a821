"""The kill hook of the kill tests: it must kill at exactly the moment it names, or those tests
would prove nothing (a kill one write early or late leaves another folder).

Here the SIGKILL is replaced by a snapshot of the folder at the moment it would arrive (what a
killed process leaves), then an exception that ends the writes; tests/cli/test_cli_resume.py kills
real processes with it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from overparam_lit.testing import install_kill_hook
from overparam_lit.utils import ConfigError, atomic_write_text


class Killed(BaseException):
    """Raised where the hook sends SIGKILL."""


@pytest.fixture
def killed_at(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The folder's files (name -> text) when the hook fires; the hook is removed afterwards."""
    monkeypatch.setattr(os, "replace", os.replace)
    seen: dict[str, str] = {}

    def kill(pid: int, signum: int) -> None:
        assert (pid, signum) == (os.getpid(), signal.SIGKILL)
        seen.update({p.name: p.read_text() for p in tmp_path.iterdir()})
        raise Killed

    monkeypatch.setattr(os, "kill", kill)
    return seen


def write_three(folder: Path) -> None:
    for n in (1, 2, 3):
        atomic_write_text(f"other {n}", folder / "other.txt")
        atomic_write_text(f"write {n}", folder / "a.txt")


@pytest.mark.parametrize(("spec", "content", "temporary"), [
    ("mid:a.txt#2", "write 1", "write 2"),  # the second write is half done: its temporary file is there
    ("after:a.txt#2", "write 2", None),  # the second write landed
    ("mid:a.txt", None, "write 1"),  # the first write by default
    ("after:a.txt#3", "write 3", None),
])
def test_the_hook_kills_at_the_named_write(tmp_path: Path, killed_at: dict[str, str], spec: str,
                                           content: str | None, temporary: str | None) -> None:
    install_kill_hook(spec)
    with pytest.raises(Killed):
        write_three(tmp_path)
    assert killed_at.get("a.txt") == content
    assert [text for name, text in killed_at.items() if name.startswith(".a.txt.")] == (
        [temporary] if temporary else [])
    n = int(spec.partition("#")[2] or 1)
    assert killed_at["other.txt"] == f"other {n}"  # other files' writes do not count


def test_a_write_beyond_the_named_one_never_comes(tmp_path: Path, killed_at: dict[str, str]) -> None:
    install_kill_hook("after:a.txt#4")
    write_three(tmp_path)
    assert not killed_at and (tmp_path / "a.txt").read_text() == "write 3"
    os.replace(tmp_path / "a.txt", tmp_path / "b.txt")  # renames that end no atomic write pass
    assert not killed_at and (tmp_path / "b.txt").read_text() == "write 3"


@pytest.mark.parametrize("spec", ["a.txt", "during:a.txt", "mid:", "mid:a.txt#0", "after:a.txt#x"])
def test_a_malformed_spec_is_refused(spec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "replace", os.replace)  # put back even if a hook were installed
    with pytest.raises(ConfigError, match="kill spec"):
        install_kill_hook(spec)
