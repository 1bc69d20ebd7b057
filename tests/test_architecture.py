"""The layers of docs/architecture.md: imports only go down (entry scripts and tools, then modules/,
then datasets/ and models/, then utils/), and the stage registry is the one list of stages."""
import ast
import glob
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_SCRIPTS = {os.path.basename(f)[:-3] for f in glob.glob(os.path.join(ROOT, "*.py"))}
# What each floor may import of the project (besides itself).
ALLOWED = {
    "utils": set(),
    "datasets": {"utils"},
    "models": {"utils"},
    "modules": {"datasets", "models", "utils"},
    "tools": {"modules", "datasets", "models", "utils"},
}


def project_imports(path):
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module.split(".")[0]


@pytest.mark.parametrize("floor", sorted(ALLOWED))
def test_imports_only_go_down(floor):
    project = set(ALLOWED) | ENTRY_SCRIPTS
    wrong = []
    for path in glob.glob(os.path.join(ROOT, floor, "**", "*.py"), recursive=True):
        for top in project_imports(path):
            if top in project and top != floor and top not in ALLOWED[floor]:
                wrong.append(f"{os.path.relpath(path, ROOT)} imports {top}")
    assert not wrong, "; ".join(wrong)


def test_the_stage_list_exists_once():
    from modules import MODULES

    for path in glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "modules", "*.py")):
        text = open(path, encoding="utf-8").read()
        if path.endswith(os.path.join("modules", "__init__.py")):
            continue
        assert '("basic", "source_only"' not in text, f"{path} lists the stages again; use modules.MODULES"
    assert set(MODULES) == {"basic", "source_only", "baseline", "spatial_mix", "smhm"}


def test_the_networks_import_each_other_without_a_circle():
    """models/networks.py is the registry that imports the networks; no network imports it back."""
    graph = {}
    for path in glob.glob(os.path.join(ROOT, "models", "*.py")):
        tree = ast.parse(open(path, encoding="utf-8").read())
        graph[os.path.basename(path)[:-3]] = {node.module.split(".")[1] for node in ast.walk(tree)
                                              if isinstance(node, ast.ImportFrom) and node.module
                                              and node.module.startswith("models.")}

    def reachable(start):
        seen, todo = set(), list(graph[start])
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo += graph.get(name, ())
        return seen

    assert {"deeplabv2", "students"} <= graph["networks"]
    assert not [name for name in graph if name in reachable(name)]
