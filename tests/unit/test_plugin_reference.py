"""docs/plugins.md's plugin reference is generated from the schemas and does not drift."""
from gwserver.plugins import load_registry, reference


def test_the_plugin_reference_in_the_docs_is_what_the_schemas_say():
    text = reference.DOC.read_text()
    assert reference.render() in text, \
        "docs/plugins.md is stale: run `python -m gwserver.plugins.reference --write`"


def test_every_builtin_plugin_and_setting_has_an_entry():
    section = reference.render()
    for name, plugin in load_registry().items():
        assert f"### {name}\n" in section
        for field in plugin.SCHEMA.fields:
            assert f"`{field}`" in section, (name, field)


def test_rewriting_is_idempotent_and_keeps_what_surrounds_the_section():
    text = "# Title\n\nprose\n"
    once = reference.replaced(text, reference.render())
    assert once.startswith(text) and reference.replaced(once, reference.render()) == once
    assert reference.replaced(once + "\nafter\n", reference.render()).endswith("after\n")
