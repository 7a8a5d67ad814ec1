"""Kernels started ahead of their stage (ftkit.run.kernels): the warm-up leaves no trace in the notebook's namespace
or its execution counts, and a kernel that did not warm up gives way to one papermill starts."""

from __future__ import annotations

import json

import nbformat
import papermill
import pytest

from ftkit.run import kernels, runner

pytestmark = pytest.mark.pipeline


def _notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nbformat.write(nb, str(path))
    return path


def test_a_warmed_kernel_runs_the_notebook_as_a_fresh_one_would(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: warm\n")
    notebook = _notebook(tmp_path / "n.ipynb",
                         "leaked = sorted(set(globals()) & {'json', 'statistics', 'ftkit', 'reading', '_ftkit_warm'})\n"
                         "import sys\nwarm = {'statistics' in sys.modules, 'ftkit.recipe.reading' in sys.modules}",
                         "import json\nimport statistics\nimport ftkit\nprint(json.dumps([leaked, sorted(warm), "
                         "ftkit.IMPORTED_AT == float('inf')]))")
    ahead = kernels.Ahead(runner.ensure_kernel(), notebook, tmp_path, recipe)
    km = ahead.take()
    assert km is not None, ahead.error
    try:
        papermill.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"), kernel_name=runner.ensure_kernel(),
                                   progress_bar=False, km=km)
    finally:
        kernels.shut_down(km)
    cells = nbformat.read(str(tmp_path / "out.ipynb"), as_version=4).cells
    assert [c.execution_count for c in cells] == [1, 2], "the warm-up counts no execution"
    leaked, warm, imports_done = json.loads(cells[1].outputs[0]["text"])
    assert leaked == [], "the warm-up binds no name in the notebook's namespace"
    assert warm == [True], "the notebook's imports and the recipe reader were loaded ahead"
    assert imports_done, "the stage's phases do not count the imports done ahead"


def test_a_kernel_that_did_not_warm_up_is_shut_down_and_not_used(tmp_path):
    notebook = _notebook(tmp_path / "n.ipynb", "import no_such_module_anywhere")
    ahead = kernels.Ahead(runner.ensure_kernel(), notebook, tmp_path, tmp_path / "missing.yaml")
    assert ahead.take() is None
    assert "ModuleNotFoundError" in ahead.error
    assert not ahead.km.has_kernel
