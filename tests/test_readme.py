"""The README stays true: every command in its bash blocks parses with the script's own parser."""
import os
import re
import shlex

import pytest

import construct_hard_patch
import demo
import extract_model_state_dict
import generate_pseudo_labels
import main
from tools import export_provider
from utils import transfer_trainid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARSERS = {
    "main.py": main.parse_args,
    "generate_pseudo_labels.py": lambda argv: generate_pseudo_labels.build_parser().parse_args(argv),
    "construct_hard_patch.py": lambda argv: construct_hard_patch.build_parser().parse_args(argv),
    "extract_model_state_dict.py": extract_model_state_dict.parse_args,
    "utils/transfer_trainid.py": transfer_trainid.parse_args,
    "demo.py": lambda argv: demo.build_parser().parse_args(argv),
    "-m tools.export_provider": lambda argv: export_provider.build_parser().parse_args(argv),
}


def readme_commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("python "):
                commands.append(line)
    return commands


def test_readme_has_the_published_and_the_recommended_blocks():
    commands = readme_commands()
    assert len(commands) >= 12
    published = [c for c in commands if "--confidence-source logits" in c]
    assert published and all("--module-name smhm" in c for c in published)
    assert any("--restore-from ./pretrained/gta5_only.pth --rare-classes synthia" in c for c in commands)
    assert any("DeepLab_resnet_pretrained_init" in c and "--module-name baseline" in c for c in commands)


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command):
    argv = shlex.split(command.replace("<S>", "100").replace("<M>", "50.00"))
    script, args = (f"-m {argv[2]}", argv[3:]) if argv[1] == "-m" else (argv[1], argv[2:])
    assert script in PARSERS, f"README runs {script}, which this test does not know"
    PARSERS[script](args)
