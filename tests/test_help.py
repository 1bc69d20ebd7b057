"""Every command's ``--help`` builds its parser without importing torch (``modules/config.py`` holds
the flags, free of heavy imports), so it answers at once. Each runs in a fresh interpreter."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = [
    ["main.py", "--help"],
    ["main.py", "--module-name", "smhm", "--help"],
    ["main.py", "--module-name", "source_only", "--help"],
    ["generate_pseudo_labels.py", "--help"],
    ["construct_hard_patch.py", "--help"],
    ["extract_model_state_dict.py", "--help"],
    ["-m", "tools.export_provider", "--help"],
    ["utils/transfer_trainid.py", "--help"],
    ["adapt.py", "--help"],
    ["demo.py", "--help"],
    ["-m", "tools.selection_study", "--help"],
    ["-m", "tools.gpu_check", "--help"],
]
PROBE = """
import runpy, sys
sys.path.insert(0, {root!r})
argv = {argv!r}
module = argv[1] if argv[0] == "-m" else None
sys.argv = [module or argv[0], *argv[2 if module else 1:]]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True) if module else runpy.run_path(argv[0], run_name="__main__")
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
print("torch imported:", "torch" in sys.modules, file=sys.stderr)
"""


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_help_imports_no_torch(argv):
    result = subprocess.run([sys.executable, "-c", PROBE.format(root=ROOT, argv=argv)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:"), result.stdout[:200]
    assert result.stderr.strip().endswith("torch imported: False"), f"{' '.join(argv)} imported torch: {result.stderr[-300:]}"
