"""Stage kernels started ahead of their stage.

While one stage's notebook runs, the next stage's kernel starts, runs its notebook's import statements and reads the
run's recipe (which imports what checking it needs), so that the next stage begins with torch, transformers and TRL
loaded: about 5 s a stage on a CPU, spent while the stage before it works. Each stage still runs in a fresh kernel of its own, executed into its own notebook: the warm-up
runs the notebook's own import lines inside a function, silently, so it binds no name and adds nothing to the
notebook or its execution counts. A kernel that did not warm up (it died, an import failed) is shut down and the
stage starts its own, as without this; so does a stage run alone.

A stage's kernel is shut down at once when its notebook ends (papermill waits for a graceful exit: ≈ 2 s a stage);
every cell has finished by then and its files are written.
"""

from __future__ import annotations

import ast
import json
import logging
import textwrap
import threading
from pathlib import Path

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 120
WARM_TIMEOUT_S = 600


def import_lines(notebook: Path) -> list[str]:
    """The top-level import statements of a notebook's code cells, in order.

    >>> import json, tempfile
    >>> cells = [{"cell_type": "code", "source": "import os\\nx = 1\\nfrom pathlib import Path"},
    ...          {"cell_type": "markdown", "source": "import nothing"}, {"cell_type": "code", "source": "%time 1"}]
    >>> path = Path(tempfile.mkdtemp()) / "n.ipynb"
    >>> _ = path.write_text(json.dumps({"cells": cells}))
    >>> import_lines(path)
    ['import os', 'from pathlib import Path']
    """
    lines = []
    for cell in json.loads(notebook.read_text()).get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        source = "".join(cell.get("source", ""))
        try:
            tree = ast.parse(source)
        except SyntaxError:  # IPython magics: nothing to import there
            continue
        lines += [ast.get_source_segment(source, node) for node in tree.body
                  if isinstance(node, ast.Import) or isinstance(node, ast.ImportFrom) and node.module != "__future__"]
    return lines


def warm_code(notebook: Path, recipe: Path) -> str:
    """What a kernel runs ahead of its stage, inside a function (no names bound): the notebook's imports, then the
    recipe read (not written), then ftkit told that its imports are done (`ftkit.IMPORTED_AT`), so that the stage's
    phases do not count the wait."""
    body = "\n".join([*import_lines(notebook), "from ftkit.recipe import reading",
                      f"reading.load({str(recipe)!r})", "__import__('ftkit').IMPORTED_AT = float('inf')"])
    return f"def _ftkit_warm():\n{textwrap.indent(body, '    ')}\n_ftkit_warm()\ndel _ftkit_warm\n"


class Ahead:
    """A kernel for `notebook` started now in `cwd` (with the current environment), warming up in a thread."""

    def __init__(self, kernel_name: str, notebook: Path, cwd: Path, recipe: Path):
        from jupyter_client.manager import AsyncKernelManager
        from jupyter_core.utils import run_sync

        self.notebook, self.recipe, self.error = notebook, recipe, None
        self.km = AsyncKernelManager(kernel_name=kernel_name)
        run_sync(self.km.start_kernel)(cwd=str(cwd))
        self.thread = threading.Thread(target=self._warm, name=f"ftkit-warm-{notebook.stem}", daemon=True)
        self.thread.start()

    def _warm(self) -> None:
        client = self.km.blocking_client()
        try:
            client.start_channels()
            client.wait_for_ready(timeout=READY_TIMEOUT_S)
            msg_id = client.execute(warm_code(self.notebook, self.recipe), silent=True, store_history=False)
            while True:
                reply = client.get_shell_msg(timeout=WARM_TIMEOUT_S)
                if reply["parent_header"].get("msg_id") == msg_id:
                    break
            if reply["content"].get("status") != "ok":
                self.error = f"{reply['content'].get('ename')}: {reply['content'].get('evalue')}"
        except Exception as exc:  # a dead kernel, a timeout: the stage starts its own kernel instead
            self.error = repr(exc)
        finally:
            client.stop_channels()

    def take(self):
        """The warmed kernel's manager for papermill (the caller shuts it down), or None where it did not warm up
        (it is shut down then)."""
        self.thread.join()
        if self.error is None and self._alive():
            return self.km
        log.info("the kernel started ahead for %s did not warm up (%s); the stage starts its own", self.notebook.name,
                 self.error or "it is no longer running")
        self.discard()
        return None

    def _alive(self) -> bool:
        from jupyter_core.utils import run_sync

        return bool(run_sync(self.km.is_alive)())

    def discard(self) -> None:
        shut_down(self.km)


def shut_down(km) -> None:
    """Stop a kernel at once and free its ports and files; one already gone is fine."""
    from jupyter_core.utils import run_sync

    try:
        if run_sync(km.is_alive)():
            run_sync(km.shutdown_kernel)(now=True)  # its resources too
            return
    except RuntimeError as exc:
        if "No kernel is running" not in str(exc):
            raise
    run_sync(km.cleanup_resources)()
