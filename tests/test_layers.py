"""The package's structure: imports run one way (below -> stages -> above, function-local imports included), the
report layer reads the run directory without torch or a stage module, every artifact file name is spelled in one
place, and the committed notebooks are thin (one parameters cell, no outputs, no helper code)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ftkit
from ftkit.core import rundir

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ftkit"


def layers() -> list[tuple[str, ...]]:
    """The layers, bottom to top, as the package's docstring draws them: each indented line that begins with
    folders (`run/`) or top-level modules (`cli.py`) is one layer. It is the one place they are written down."""
    found = []
    for line in ftkit.__doc__.splitlines():
        rooms = re.match(r"    ((?:\w+(?:/|\.py)  +)+)", line + "  ")
        if rooms:
            found.append(tuple(r.rstrip("/").removesuffix(".py") for r in rooms.group(1).split()))
    return found[::-1]


LAYERS = layers()
LAYER = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}
READERS = "report"  # the report layer: the run directory's files only
HEAVY = {"torch", "transformers", "trl", "peft", "accelerate"}


def unit_of(parts) -> str:
    """A module as the layers see it: its folder and name ("core.rundir"; a subpackage inside a folder counts as one:
    "scoring.tasks"), a folder's own __init__ as the folder ("recipe"), or a top-level module ("cli")."""
    parts = [p for p in parts if p != "__init__"]
    return ".".join(parts[:2])


def modules() -> dict[str, list[Path]]:
    """Unit -> its files."""
    found: dict[str, list[Path]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts != ("__init__",):
            found.setdefault(unit_of(parts), []).append(path)
    return found


UNITS = set(modules())


def imports(paths: list[Path]) -> tuple[set[str], set[str]]:
    """(ftkit units, other top-level packages) that these files import anywhere, in functions too."""
    own, other = set(), set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] != "ftkit":
                    other.add(parts[0])
                elif len(parts) > 1:
                    unit = unit_of(parts[1:])
                    own.add(unit if unit in UNITS else parts[1])  # `from ftkit.recipe import load` is recipe.load
    return own, other


GRAPH = {name: imports(paths) for name, paths in modules().items()}
STAGES = {name for name in GRAPH if name.startswith("stages.")}


def test_every_folder_is_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    tops = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert len(LAYERS) >= 5 and folders | tops == set(LAYER), \
        f"draw each folder on a line of ftkit/__init__.py's layers: {sorted((folders | tops) ^ set(LAYER))}"


def test_imports_run_one_way_and_close_no_circle():
    wrong = []
    for name, (own, _) in GRAPH.items():
        for target in own - {name}:
            if target.split(".")[0] not in LAYER:
                continue
            mine, theirs = LAYER[name.split(".")[0]], LAYER[target.split(".")[0]]
            if theirs > mine:
                wrong.append(f"{name} (layer {mine}) imports {target} (layer {theirs})")
            elif name in STAGES and target in STAGES:
                wrong.append(f"stage {name} imports stage {target}: share the code through a lower layer")
    assert not wrong, "\n".join(wrong)
    rooms = {}
    for name, (own, _) in GRAPH.items():
        rooms.setdefault(name.split(".")[0], set()).update(t.split(".")[0] for t in own)

    def visit(graph, name, path):
        if name in path:
            return path[path.index(name):] + [name]
        for target in sorted(graph.get(name, set()) - {name}):
            circle = visit(graph, target, path + [name])
            if circle:
                return circle
        return None

    for graph in ({n: own for n, (own, _) in GRAPH.items()}, rooms):  # between modules, and between folders
        for name in graph:
            circle = visit(graph, name, [])
            assert circle is None, f"import circle: {' -> '.join(circle)}"


def test_the_report_layer_reads_files_only():
    reached, todo = set(), {n for n in GRAPH if n.split(".")[0] == READERS}
    while todo:
        name = todo.pop()
        reached.add(name)
        todo |= {t for t in GRAPH.get(name, (set(),))[0] if t in GRAPH} - reached
    above_core = {n for n in GRAPH if LAYER[n.split(".")[0]] >= LAYER["models"] and n.split(".")[0] != READERS}
    assert not reached & above_core, sorted(reached & above_core)
    heavy = {name: GRAPH[name][1] & HEAVY for name in reached if GRAPH[name][1] & HEAVY}
    assert not heavy, f"the report layer reaches {heavy}"


def test_report_and_compare_run_without_torch(tiny_run, tmp_path):
    code, run_dir = tiny_run
    assert code == 0
    script = (f"import sys\nfrom ftkit import cli\n"
              f"assert cli.main(['report', {str(run_dir)!r}]) == 0\n"
              f"assert cli.main(['compare', {str(run_dir)!r}, {str(run_dir)!r}, '-o', {str(tmp_path / 'c.html')!r}]) == 0\n"
              f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(HEAVY)!r} "
              f"or m.startswith('ftkit.stages.'))\n"
              "print('LOADED', loaded)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "LOADED []" in done.stdout, done.stdout[-2000:]
    assert (run_dir / "report.html").stat().st_size > 10_000 and (tmp_path / "c.html").is_file()


def _string_constants(path: Path) -> list[str]:
    """Every string literal of a module (f-string pieces too) but its docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_every_artifact_file_name_is_spelled_once():
    names = [rundir.RECIPE, rundir.STATUS, rundir.ENV, rundir.METRICS, rundir.REPORT, rundir.PROGRESS, rundir.STATS,
             rundir.LOG_HISTORY, rundir.TRAIN_RESULT, rundir.LAUNCH_LOG, rundir.SAMPLES, rundir.CHECKPOINT_MARKER,
             *rundir.NOTEBOOKS.values(), "checkpoints"]
    spelled = {name: [] for name in names}
    built = []  # eval/<kind>_<model>.jsonl put together anywhere but rundir
    for path in PACKAGE.rglob("*.py"):
        for text in _string_constants(path):
            for name in names:
                if name in text:
                    spelled[name].append(path.name)
        if path.name != "rundir.py":
            built += [f"{path.name}: {kind}_" for kind in rundir.EVAL_FILES if f"{kind}_{{" in path.read_text()]
    again = {name: places for name, places in spelled.items() if places != ["rundir.py"]}
    assert not again and not built, f"spell these through ftkit.core.rundir: {again} {built}"


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebooks_are_thin(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    tagged = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged parameters"
    for line in "".join(tagged[0]["source"]).splitlines():
        assign = ast.parse(line.split("#")[0]).body[0]
        assert isinstance(assign, ast.AnnAssign) and isinstance(assign.value, ast.Constant), \
            f"parameters are annotated literals: {line!r}"
        assert "  # " in line, f"each parameter has a # help comment: {line!r}"
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        assert cell["outputs"] == [] and cell["execution_count"] is None, f"cell {i} was committed with outputs"
        tree = ast.parse("".join(cell["source"]))
        helpers = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))]
        assert not helpers, f"cell {i} defines {[h.name for h in helpers]}: move it into ftkit, with a test"
        assert i > 0 and cells[i - 1]["cell_type"] == "markdown", f"cell {i}: a sentence before each code cell"


def test_modules_and_functions_stay_small():
    """A module over 450 lines holds several concerns, a function over 50 several steps: split them (a long
    docstring counts too: it says the function does much)."""
    big = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        name = path.relative_to(ROOT)
        if len(text.splitlines()) > 450:
            big.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 50:
                big.append(f"{name}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not big, "\n".join(big)
