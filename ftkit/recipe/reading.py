"""Reading a recipe: YAML with line numbers (duplicate keys refused), `--set` overrides, validation against the
schema with every problem reported at once, and the data files, reward files and models it names checked on disk."""

from __future__ import annotations

import difflib
import os
import re
import time
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from ftkit.core import timing
from ftkit.core.io import write_atomic
from ftkit.core.rundir import RECIPE, has_split, load_split, metrics
from ftkit.core.rundir import path as run_path
from ftkit.recipe.rules import RecipeError
from ftkit.recipe.schema import Recipe
from ftkit.recipe.training import check_trainer_settings

# ---------------------------------------------------------------- YAML with line numbers


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key] + 1}); keep one",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _line_map(node, prefix=()) -> dict[tuple, int]:
    """Dotted key path -> 1-based line, for every key in a composed YAML document."""
    lines = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = prefix + (str(key_node.value),)
            lines[path] = key_node.start_mark.line + 1
            lines.update(_line_map(value_node, path))
    return lines


def _read_yaml(path: Path) -> tuple[dict, dict]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise RecipeError(str(path), [f"cannot read the recipe: {exc.strerror}; check the path"]) from None
    try:
        data = yaml.load(text, Loader=_Loader)
        lines = _line_map(yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(str(path), [f"{where}not valid YAML: {problem}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(str(path), [f"the recipe must be a mapping of sections (model:, data:, ...), "
                                      f"not a {type(data).__name__}"])
    return data, lines


# ---------------------------------------------------------------- overrides and validation


def apply_override(data: dict, assignment: str) -> tuple[str, ...]:
    """Apply one `--set key.path=value` (value parsed as YAML) to `data`; return the key path. A mapping or list
    needs its brackets (`{a: 1}`, `[a, b]`): a sentence with a colon in it stays the text it is.

    >>> d = {}; _ = apply_override(d, "data.system=Answer with one word: yes or no."); d
    {'data': {'system': 'Answer with one word: yes or no.'}}
    >>> d = {}; _ = apply_override(d, "eval.models=[base, sft]"); d
    {'eval': {'models': ['base', 'sft']}}
    """
    key, sep, raw = assignment.partition("=")
    path = tuple(k.strip() for k in key.split("."))
    if not sep or not all(path):
        raise RecipeError("--set", [f"{assignment!r}: expected KEY=VALUE, e.g. sft.learning_rate=1e-4"])
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (dict, list)) and not raw.strip().startswith(("{", "[")):
        value = raw.strip()  # `a: b` or `- a` without brackets: a text, not YAML's block structure
    node = data
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value
    return path


def _fields_at(loc: tuple) -> list[str]:
    """Field names allowed at a location of the recipe (for did-you-mean)."""
    model: type[BaseModel] = Recipe
    for part in loc:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            break
    return list(model.model_fields)


# keys that moved to another section: an older recipe (or a run directory's resolved copy) is read with the key
# where it now lives
MOVED = {("rl", "numeric_tolerance"): ("data", "numeric_tolerance")}


def _migrate(data: dict) -> None:
    """Move the keys of `MOVED` where they now live (a value set in both places: the new place wins); a zero or
    null value, the old default that every resolved recipe carries, is dropped.

    >>> recipe = {"rl": {"numeric_tolerance": 0.5, "max_steps": 3}}
    >>> _migrate(recipe); recipe
    {'rl': {'max_steps': 3}, 'data': {'numeric_tolerance': 0.5}}
    """
    for (old_section, key), (new_section, new_key) in MOVED.items():
        section = data.get(old_section)
        if not isinstance(section, dict) or key not in section:
            continue
        value = section.pop(key)
        if value:
            target = data.setdefault(new_section, {})
            if isinstance(target, dict):
                target.setdefault(new_key, value)


def _describe(error: dict, source: str, lines: dict, overridden: set) -> str:
    loc = tuple(str(p) for p in error["loc"])
    is_key = loc[-1:] == ("[key]",)  # a mapping key that is not allowed, e.g. data.columns
    loc = loc[:-1] if is_key else loc
    dotted = ".".join(loc) or "(top level)"
    where = "--set" if loc in overridden else (f"{source}:{lines[loc]}" if loc in lines else source)
    value = error.get("input")
    if is_key:
        allowed = re.findall(r"'([^']+)'", error["msg"])
        close = difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else f"allowed keys here: {', '.join(allowed)}"
        return f"{where}: {dotted}: unknown key {value!r}; {hint}"
    if error["type"] == "extra_forbidden":
        allowed = _fields_at(loc[:-1])
        close = difflib.get_close_matches(loc[-1], allowed, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else f"allowed keys here: {', '.join(allowed)}"
        return f"{where}: {dotted} = {value!r}: unknown key; {hint}"
    if error["type"] == "missing":
        return f"{where}: {dotted}: required key is missing; add it"
    msg = error["msg"].removeprefix("Value error, ")
    named = re.match(r"[a-z_]+(\.[a-z_]+)+", msg) if not loc else None
    if named and tuple(named.group().split(".")) in lines:  # a check across sections, led by the key to change
        where = "--set" if tuple(named.group().split(".")) in overridden else \
            f"{source}:{lines[tuple(named.group().split('.'))]}"
        return f"{where}: {msg}"
    if isinstance(value, (dict, BaseModel)):  # a check across keys of a section: the message quotes the values
        return f"{where}: {dotted}: {msg}"
    return f"{where}: {dotted} = {value!r}: {msg}"


def build(data: dict, source: str = "<recipe>", overrides: list[str] | None = None,
          lines: dict | None = None) -> Recipe:
    """Validate a recipe mapping plus overrides; raise RecipeError listing every problem."""
    overridden = set()
    for assignment in overrides or []:
        overridden.add(apply_override(data, assignment))
    _migrate(data)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(e, source, lines or {}, overridden) for e in exc.errors()]
        raise RecipeError(source, problems) from None


def _check_files(cfg: Recipe, source: str, lines: dict) -> None:
    """Data files are known from the recipe alone: make them absolute and make sure they exist."""
    import glob

    problems = []

    def resolve(pattern: str, key: str, place: tuple) -> str:
        where = f"{source}:{lines[place]}" if place in lines else source
        absolute = str(Path(source).parent / os.path.expanduser(pattern))
        if not any(Path(p).is_file() for p in glob.glob(absolute, recursive=True)):
            problems.append(f"{where}: {key} = {pattern!r}: no file matches {absolute!r}; "
                            "fix the path (relative paths start at the recipe's folder)")
        return absolute if glob.has_magic(absolute) else str(Path(absolute).resolve())

    for key in ("path", "test_path", "generalization_path"):
        if getattr(cfg.data, key) is not None:
            setattr(cfg.data, key, resolve(getattr(cfg.data, key), f"data.{key}", ("data", key)))
    problems += _reward_files(cfg, source, lines) + _model_path(cfg, source, lines)
    if cfg.data.task == "code" or ("rl" in cfg.stages and "code_tests" in cfg.rl.rewards):
        from ftkit.scoring import sandbox

        refused = sandbox.problem()
        if refused:
            problems.append(f"{source}: model-written code cannot be run safely here, so neither the code task nor "
                            f"the code_tests reward can score it: {refused}")
    for label, directory in cfg.eval.extra.items():
        where = f"{source}:{lines[('eval', 'extra', label)]}" if ("eval", "extra", label) in lines else source
        path = (Path(source).parent / os.path.expanduser(directory)).resolve()
        if not ((path / "adapter_config.json").is_file() or (path / "config.json").is_file()):
            problems.append(f"{where}: eval.extra.{label} = {directory!r}: {path} holds no adapter_config.json or "
                            "config.json; point it at an adapter or model directory (e.g. <run>/sft/adapter)")
        cfg.eval.extra[label] = str(path)
    if cfg.launch.config_file:
        cfg.launch.config_file = resolve(cfg.launch.config_file, "launch.config_file", ("launch", "config_file"))
    problems += check_trainer_settings(cfg, lambda place: f"{source}:{lines[place]}" if place in lines else source)
    if cfg.data.mix:
        cfg.data.mix = {name if name.startswith("hub:") else resolve(name, f"data.mix.{name}", ("data", "mix", name)):
                        weight for name, weight in cfg.data.mix.items()}
    if problems:
        raise RecipeError(source, problems)


def _reward_files(cfg: Recipe, source: str, lines: dict) -> list[str]:
    """Reward functions named `file.py:function` are found from the recipe's folder; resolve and check them."""
    if "rl" not in cfg.stages or cfg.rl.method not in ("grpo", "rloo"):
        return []
    from ftkit.scoring import rewards

    renamed = {}
    for name, weight in cfg.rl.rewards.items():
        if ":" in name:
            path, _, function = name.rpartition(":")
            name = f"{Path(source).parent.resolve() / os.path.expanduser(path)}:{function}"
        renamed[name] = weight
    cfg.rl.rewards = renamed
    where = f"{source}:{lines[('rl', 'rewards')]}" if ("rl", "rewards") in lines else source
    return [f"{where}: {p}" for p in rewards.check_names(renamed, Path(source).parent)]


def _model_path(cfg: Recipe, source: str, lines: dict) -> list[str]:
    """A model id that reads as a local path (./, ../, /, ~, or under a folder that exists) must name a folder, found
    from the recipe's folder: otherwise it would pass as a hub id here and fail only once the run has started."""
    value = cfg.model.id
    folder = Path(source).parent / os.path.expanduser(value)
    local = value.startswith(("./", "../", "/", "~")) or value in (".", "..") or \
        ("/" in value and (Path(source).parent / value.split("/")[0]).is_dir())  # runs/x where runs/ exists
    if folder.is_dir():  # a folder by that name beside the recipe is what it names, as transformers reads a local one
        cfg.model.id = str(folder.resolve())
        return []
    if not local:
        return []
    where = f"{source}:{lines[('model', 'id')]}" if ("model", "id") in lines else source
    return [f"{where}: model.id = {value!r}: no such folder ({folder.resolve()}); fix the path (relative paths start "
            "at the recipe's folder), or name a hub model such as HuggingFaceTB/SmolLM2-135M-Instruct"]

def load(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file."""
    path = Path(path)
    data, lines = _read_yaml(path)
    cfg = build(data, str(path), overrides, lines)
    _check_files(cfg, str(path), lines)
    return cfg


def open_run(recipe_path: str | Path, run_dir: str | Path) -> Recipe:
    """Load a recipe for a notebook and make sure the run directory holds its resolved copy. Starts timing the
    stage's phases (`ftkit.core.timing`), the first time in a process with the imports since ftkit's."""
    import ftkit

    timing.reset()
    if ftkit.IMPORTED_AT < time.perf_counter():
        timing.add("imports", time.perf_counter() - ftkit.IMPORTED_AT)
        ftkit.IMPORTED_AT = float("inf")  # counted once: a notebook run again by hand imports nothing anew
    cfg = load(recipe_path)
    target = run_path(run_dir, RECIPE)
    target.parent.mkdir(parents=True, exist_ok=True)
    if Path(recipe_path).resolve() != target.resolve():
        write_atomic(target, cfg.dump())
    return cfg


def fitted(cfg: Recipe, run_dir: str | Path) -> Recipe:
    """The recipe with what the data stage fitted to the data in place of `auto`: sft.max_length (the data
    figures' max_length). The stages after data call it first. A run directory whose data stage chose nothing (made
    by hand, or by an older ftkit) gets the longest example its splits record, else SFTConfig.ASSUMED_LENGTH."""
    if cfg.sft.max_length == "auto":
        chosen = (metrics(run_dir).get("data", {}).get("max_length") or {}).get("chosen")
        if not chosen:
            recorded = [r["tokens"] for name in ("train", "test") if has_split(run_dir, name)
                        for r in load_split(run_dir, name) if isinstance(r.get("tokens"), int)]
            chosen = -(-max(recorded) // 8) * 8 if recorded else cfg.sft.ASSUMED_LENGTH
        cfg.sft.max_length = chosen
    return cfg
