"""The heap policy is applied on request, reported, and keys the device fingerprint."""

import subprocess
import sys

import pytest

from profiler import allocator_policy

SCRIPT = """
from profiler import allocator_policy, device_info, retain_freed_memory
before = (allocator_policy(), device_info("cpu").fingerprint)
ok = retain_freed_memory()
after = (allocator_policy(), device_info("cpu").fingerprint, device_info("cpu").details["allocator"])
print(ok, *before, *after)
"""


@pytest.mark.skipif(allocator_policy() != "glibc", reason="needs glibc's malloc, not preloaded")
def test_retain_changes_policy_and_fingerprint() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True
    ).stdout.split()
    ok, policy0, fp0, policy1, fp1, detail = out
    assert ok == "True"
    assert (policy0, policy1, detail) == ("glibc", "glibc-retain", "glibc-retain")
    assert fp0 != fp1


@pytest.mark.skipif(allocator_policy() != "glibc", reason="needs glibc's malloc, not preloaded")
@pytest.mark.parametrize(
    ("argv", "policy"),
    [
        (["profile", "no-such-model"], "glibc-retain"),
        (["--system-malloc", "profile", "no-such-model"], "glibc"),
    ],
)
def test_cli_timing_commands_retain_unless_opted_out(argv: list[str], policy: str) -> None:
    code = (
        "import sys; from service.cli import main; from profiler import allocator_policy; "
        "rc = main(sys.argv[1:]); print(rc, allocator_policy())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[-2:] == ["2", policy]  # the bad model name is a user error, after the policy
