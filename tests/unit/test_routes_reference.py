"""docs/routes.md's route and upstream tables are generated from core/routes.py's schemas."""
from gwserver import routes_reference as reference
from gwserver.core import routes


def test_the_tables_in_the_docs_are_what_the_schemas_say():
    text = reference.DOC.read_text()
    for section in reference.SECTIONS:
        assert reference.render(section) in text, \
            f"docs/routes.md's {section} table is stale: run `{reference.COMMAND}`"


def test_every_field_of_every_schema_has_a_row_with_a_meaning():
    schemas = [routes.ROUTE, routes.UPSTREAM, routes.TARGET, routes.TIMEOUTS, routes.RETRY,
               routes.HEALTH_CHECK, routes.PASSIVE, routes.UPSTREAM_TLS]
    tables = {id(schema) for rows in reference.SECTIONS.values() for _, schema, _ in rows}
    assert tables == {id(schema) for schema in schemas}
    text = "".join(reference.render(section) for section in reference.SECTIONS)
    for schema in schemas:
        for field in schema.fields.values():
            assert field.doc, field.name
            assert f"| `{field.name}` |" in text, field.name


def test_rewriting_keeps_the_explanations_around_the_tables():
    text = reference.DOC.read_text()
    assert reference.write(text) == text
    stale = text.replace("| `balance` |", "| `balancer` |")
    assert reference.write(stale) == text
    assert "### Path patterns" in text and "### Matching order" in text
