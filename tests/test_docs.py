"""The docs' generated reference pages (docs/generate.py) match the code, and every recipe key is described."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def generate():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_pages_are_current(generate):
    stale = generate.stale()
    assert not stale, f"stale generated docs: {stale}; run `make docs` (python docs/generate.py) and commit them"


def test_every_recipe_key_has_a_description(generate):
    missing = generate.undescribed()
    assert not missing, f"recipe keys without a description (Field(description=...) in ftkit/recipe/): {missing}"


def test_a_stale_page_and_an_undescribed_key_are_caught(generate, tmp_path, monkeypatch):
    """The check itself: a page that differs from the code, a page missing, and a key that loses its description."""
    from ftkit.recipe.schema import DataConfig

    for name, page in generate.PAGES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(page())
    monkeypatch.setattr(generate, "DOCS", tmp_path)
    assert generate.stale() == []
    recipe_page = tmp_path / "reference" / "recipe.md"
    recipe_page.write_text(recipe_page.read_text().replace("`data.path`", "`data.file`"))
    (tmp_path / "reference" / "cli.md").unlink()
    assert generate.stale() == ["reference/recipe.md", "reference/cli.md"]
    assert generate.main(["--check"]) == 1

    monkeypatch.setattr(DataConfig.model_fields["dedupe"], "description", None)
    assert generate.undescribed() == ["data.dedupe"]


def test_every_key_of_a_grouped_section_is_in_one_group(generate):
    from ftkit.recipe.schema import Recipe

    for section, groups in generate.GROUPS.items():
        model = Recipe.model_fields[section].annotation
        plain = [n for n, f in model.model_fields.items() if generate._section_model(f.annotation) is None]
        grouped = [n for names in groups.values() for n in names]
        assert sorted(grouped) == sorted(plain), f"{section}: grouped {sorted(grouped)} vs keys {sorted(plain)}"


def test_the_recipe_page_shows_types_defaults_and_nested_sections(generate):
    page = generate.recipe_page()
    assert '| <a id="sft.max_length"></a>`sft.max_length` | int or "auto" | `auto` |' in page
    assert '`model.adapter` | "lora", "qlora" or "none" | `lora` |' in page
    assert "### `eval.judge:`" in page and "`eval.judge.rubric`" in page
    assert "&lt;stage&gt;" in page and "<stage>" not in page.replace("<!--", "")  # no raw tags from descriptions


def test_every_recipe_says_what_to_expect(generate):
    """Each shipped recipe's header has an `# Expect:` line (what it shows, and on 2 CPU cores how long), which the
    generated recipes page reads to say where it runs."""
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        expect = generate._expect(generate._header(path.read_text()))
        assert expect.startswith("Expect:") and len(expect) > 40, f"{path.name}: no '# Expect:' line in its header"
        assert "CPU cores" in expect or "GPU" in expect, f"{path.name}: its Expect line says neither CPU cores nor GPU"
