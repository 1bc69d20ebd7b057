"""The project speaks only of itself: no file names a particular remote machine, its paths, or the
program and options once used to reach it (a user has none of them)."""
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Words of the files that once described one remote machine and the way it was reached.
WORDS = ["/work/", ".library", "give_back", "files_at", "files_fetch", "can_start_another", "budget_left",
         "device machine", "device tool", "device run", "prepared device", "gpu_wheels", "gpu_check.sh", "KINDS.md",
         "carried wheels", "carry:", "/tmp/site", "timeout_s", "not_drawn"]


PATTERN = re.compile("|".join(r"(?<![\w-])" + re.escape(w.lower()) for w in WORDS))


def mentions(text):
    """The words of :data:`WORDS` in ``text`` (whole words: "multi-device run" is not "device run")."""
    return sorted({m.group(0) for m in PATTERN.finditer(text.lower())})


def tracked_files():
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [n for n in names.decode().split("\0") if n and n != "tests/test_speaks_of_itself.py"]


def test_no_file_names_a_machine_a_path_or_a_tool_outside_the_project():
    found = []
    for name in tracked_files():
        path = os.path.join(ROOT, name)
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            found += [f"{name}: {word}" for word in mentions(f.read().decode("utf-8", "replace"))]
    assert not found, "the project names things outside itself:\n" + "\n".join(found)


def test_the_check_finds_what_it_looks_for():
    assert mentions("Run it on the Device machine, then give_back; see /work/x") == ["/work/", "device machine",
                                                                                       "give_back"]
    assert mentions("a secondary process of a multi-device run reports nothing") == []
