"""A clone stands on its own: no tracked file reads or points at anything beside the repository.

The samples and the design notes once lived in a folder next to this repository
(`../shared/...`); a user's clone has no such folder, so `make run` and `make test` broke there.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests import procs

ROOT = procs.ROOT
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()

# Ways a file has pointed outside the repository: the sibling folder by name, as a relative
# path, as a pathlib join, or by the absolute path of the machine it was written on.
OUTSIDE = re.compile(
    rb"shared/reference|\.\./shared\b|[\"']shared[\"']\s*/|/work/(?:shared|main)\b"
)
# `Path(__file__).resolve().parents[N]` climbs N + 1 folders from the file.
PARENTS = re.compile(rb"Path\(__file__\)\.resolve\(\)\.parents\[(\d+)\]")


def tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout
    return [name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]


def test_no_file_refers_to_a_path_outside_the_repository():
    found = []
    for name in tracked_files():
        if name == THIS:
            continue
        text = (ROOT / name).read_bytes()
        for match in OUTSIDE.finditer(text):
            line = text.count(b"\n", 0, match.start()) + 1
            found.append(f"{name}:{line}: {match.group().decode(errors='replace')}")
    assert not found, "paths outside the repository:\n" + "\n".join(found)


def test_no_python_file_climbs_out_of_the_repository():
    found = []
    for name in tracked_files():
        if not name.endswith(".py"):
            continue
        path = ROOT / name
        for match in PARENTS.finditer(path.read_bytes()):
            target = path.parents[int(match.group(1))]
            if not target.is_relative_to(ROOT):
                found.append(f"{name}: {match.group().decode()} is {target}")
    assert not found, "Python files reaching outside the repository:\n" + "\n".join(found)


def test_the_samples_are_in_the_repository():
    # The readers use tests/samples; the README there gives the usage each sample must yield.
    names = {p.name for p in (ROOT / "tests" / "samples").iterdir()}
    assert {"README.md", "chat.json", "chat_stream_privatemode.sse"} <= names
