"""Model-written code runs in ftkit.scoring.sandbox: known completions score what they pass, and code that loops, allocates
without bound, opens a socket, reads outside its folder, spawns a process or looks for a secret is stopped or finds
nothing — the reward still returns a score for every completion, so the RL run goes on."""

import time

import pytest

from ftkit import recipe
from ftkit.scoring import rewards, sandbox
from ftkit.scoring.tasks import Code
from tests.conftest import recipe_file

TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0"
SECRET = "hf_SANDBOXcanary987654321"


def test_the_code_reward_scores_known_completions():
    completions = ["def add(a, b):\n    return a + b",                          # both tests
                   "```python\ndef add(a, b):\n    return a + b + (a < 0)\n```",  # one of two, in a fence
                   "def add(a, b):\n    return a - b",                            # none
                   "I cannot write code.",                                       # a syntax error
                   [{"role": "assistant", "content": "def add(a, b): return b + a"}]]  # a chat completion
    assert rewards.code_tests(completions, [TESTS] * 5) == [1.0, 0.5, 0.0, 0.0, 1.0]
    assert Code().score(completions[1], TESTS) == 0.0 and Code().lenient(completions[1], TESTS) == 0.5


def test_every_reference_solution_passes_its_tests():
    task = Code()
    examples = [*task.splits(40, 20, 0).values()]
    for example in [e for split in examples for e in split] + task.shifted(20, 0):
        assert task.score(example["answer"], "\n".join(example["tests"])) == 1.0, example["prompt"]


@pytest.mark.parametrize("name, program, error", [
    ("loops forever", "while True:\n    pass", "stopped after 2 s"),
    ("sleeps", "import time\ntime.sleep(60)", "stopped after 2 s"),
    ("allocates without bound", "x = []\nwhile True:\n    x.append(bytearray(10**7))", "MemoryError"),
    ("opens a socket", "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)", "socket"),
    ("reads a file outside its folder", "open('/etc/hostname').read()", "opening '/etc/hostname' is not allowed"),
    ("lists the home folder", "import os\nos.listdir(os.path.expanduser('~'))", "os.listdir"),
    ("starts a process", "import subprocess\nsubprocess.run(['cat', '/etc/hostname'])", "subprocess.Popen"),
    ("calls C directly", "import ctypes\nctypes.CDLL(None).system(b'true')", "ctypes"),
    ("lifts its own limits", "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))", "resource.setrlimit"),
])
def test_harmful_code_is_stopped(name, program, error):
    start = time.perf_counter()
    result = sandbox.run(program + "\ndef add(a, b):\n    return a + b", TESTS.splitlines(), timeout=2)
    assert time.perf_counter() - start < 10, f"{name}: the sandbox did not return in time"
    assert result["passed"] == 0 and error in result["error"], f"{name}: {result}"


def test_cpu_time_is_limited_below_the_wall_clock():
    result = sandbox.run("while True:\n    pass", ["assert True"], timeout=20, cpu_seconds=1)
    assert not result["timed_out"] and result["error"] == "stopped at the CPU limit (1 s)", result


def test_secrets_are_not_in_the_sandbox(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    leak = ("import os\nfound = [v for v in os.environ.values() if 'CANARY' in v.upper()]\nprint(os.environ)\n"
            "def add(a, b):\n    return a + b")
    result = sandbox.run(leak, ["assert found == []", "assert 'HF_TOKEN' not in os.environ"])
    assert result["passed"] == 2, result
    assert SECRET not in repr(result)


def test_a_batch_with_every_harm_still_gets_one_score_each():
    harms = ["while True:\n    pass", "import socket\nsocket.socket()", "open('/etc/passwd').read()",
             "def add(a, b):\n    return a + b"]
    start = time.perf_counter()
    scores = rewards.code_tests(harms, [TESTS] * 4)
    assert scores == [0.0, 0.0, 0.0, 1.0]
    assert time.perf_counter() - start < 15


def test_the_files_it_writes_stay_in_its_own_folder_and_go():
    result = sandbox.run("import os\nopen('x.txt', 'w').write('hi')\nwhere = os.getcwd()\n", [
        "assert open('x.txt').read() == 'hi'", "assert where.startswith('/') and 'ftkit-sandbox-' in where"])
    assert result["passed"] == 2, result


def test_validation_refuses_the_code_reward_where_there_is_no_sandbox(monkeypatch, tmp_path):
    path = recipe_file(tmp_path, data={"task": "code"}, rl={"rewards": {"code_tests": 1.0}}, file="c.yaml")
    monkeypatch.setattr(sandbox, "problem", lambda: "the sandbox needs POSIX resource limits")
    with pytest.raises(recipe.RecipeError, match="model-written code cannot be run safely here.*POSIX resource"):
        recipe.load(path)
    monkeypatch.setattr(sandbox, "problem", lambda: None)
    assert recipe.load(path).data.task == "code"
