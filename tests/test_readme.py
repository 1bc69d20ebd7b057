"""The README and the docs/ pages stay true: every command in their bash blocks parses with the
script's own parser, and the README stays a short map that starts with the two set-up commands."""
import glob
import os
import re
import shlex

import pytest

import adapt
import construct_hard_patch
import demo
import extract_model_state_dict
import generate_pseudo_labels
import main
from tools import export_provider, selection_study
from utils import transfer_trainid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
PAGES = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
PARSERS = {
    "main.py": main.parse_args,
    "adapt.py": lambda argv: adapt.build_parser().parse_args(argv),
    "generate_pseudo_labels.py": lambda argv: generate_pseudo_labels.build_parser().parse_args(argv),
    "construct_hard_patch.py": lambda argv: construct_hard_patch.build_parser().parse_args(argv),
    "extract_model_state_dict.py": extract_model_state_dict.parse_args,
    "utils/transfer_trainid.py": transfer_trainid.parse_args,
    "demo.py": lambda argv: demo.build_parser().parse_args(argv),
    "-m tools.export_provider": lambda argv: export_provider.build_parser().parse_args(argv),
    "-m tools.selection_study": lambda argv: selection_study.build_parser().parse_args(argv),
}
# Placeholders the pages write in checkpoint names: step, val mIoU, label-free score.
PLACEHOLDERS = {"<S>": "100", "<M>": "50.00", "<V>": "0.9000"}


def page_commands(path):
    """The ``python ...`` lines of the page's bash blocks, comments cut off."""
    text = open(path, encoding="utf-8").read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("python "):
                commands.append(line)
    return commands


def all_commands():
    return [(os.path.relpath(path, ROOT), command) for path in PAGES for command in page_commands(path)]


def test_readme_is_a_short_map_that_starts_with_the_set_up_commands():
    lines = open(README, encoding="utf-8").read().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; the manual belongs in docs/"
    head = "\n".join(lines[:10])
    assert "make demo" in head and "make test" in head


def test_the_pages_have_the_published_and_the_recommended_blocks():
    commands = [command for _, command in all_commands()]
    assert len(commands) >= 12
    published = [c for c in commands if "--confidence-source logits" in c]
    assert published and all("--module-name smhm" in c for c in published)
    assert any("--restore-from ./pretrained/gta5_only.pth --rare-classes synthia" in c for c in commands)
    assert any("DeepLab_resnet_pretrained_init" in c and "--module-name baseline" in c for c in commands)
    assert any(c.startswith("python adapt.py ") for c in page_commands(README))


def test_every_docs_page_starts_with_a_title():
    for path in PAGES[1:]:
        assert open(path, encoding="utf-8").readline().startswith("# "), path


@pytest.mark.parametrize("page, command", all_commands())
def test_page_command_parses(page, command):
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    argv = shlex.split(command)
    script, args = (f"-m {argv[2]}", argv[3:]) if argv[1] == "-m" else (argv[1], argv[2:])
    assert script in PARSERS, f"{page} runs {script}, which this test does not know"
    PARSERS[script](args)
