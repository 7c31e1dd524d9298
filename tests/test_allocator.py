"""The workbench keeps freed memory for reuse (glibc's mallopt), and the command applies it."""

import platform
import sys

import pytest

from flowforge.workbench import allocator, cli


def test_reuse_freed_memory_applies_on_glibc_and_can_be_switched_off(monkeypatch):
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert allocator.reuse_freed_memory() is glibc
    monkeypatch.setenv(allocator.ENV, "0")
    assert allocator.reuse_freed_memory() is False
    for off in ("false", " OFF", "no"):  # (a reference audit: only "0" switched it off)
        monkeypatch.setenv(allocator.ENV, off)
        assert allocator.reuse_freed_memory() is False
    monkeypatch.setenv(allocator.ENV, "maybe")
    with pytest.raises(ValueError, match="FLOWFORGE_KEEP_FREED_MEMORY='maybe': expected 0"):
        allocator.reuse_freed_memory()
    monkeypatch.setattr(cli, "_OWNS_PROCESS", [True])  # (the command, as command() runs it)
    assert cli._main(["list"]) == 2  # (one line)


@pytest.mark.parametrize("limit", [0, -1, 1 << 31, 1.5, "1G"])
def test_a_bad_limit_is_refused(limit):
    with pytest.raises(ValueError, match="limit in bytes"):
        allocator.reuse_freed_memory(limit)


def test_the_command_applies_it_and_main_from_python_does_not(monkeypatch, capsys):
    # (main() is the command inside someone else's process: the allocator is theirs)
    calls = []
    monkeypatch.setattr(allocator, "reuse_freed_memory", lambda: calls.append(1) or True)
    assert cli.main(["list"]) == 0 and calls == []
    monkeypatch.setattr(cli, "_OWNS_PROCESS", [True])  # (as command() runs it)
    assert cli._main(["list"]) == 0 and calls == [1]
