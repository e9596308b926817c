"""Every record a test sees is checked against the JSON Schema that ships in the package."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import jsonschema


@functools.cache
def validator(package: str = "scanner",
              name: str = "record.schema.json") -> jsonschema.protocols.Validator:
    """The checked validator of a JSON Schema that ships in a package."""
    text = resources.files(package).joinpath(name).read_text("utf-8")
    schema = json.loads(text)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)  # type: ignore[no-any-return]


def checked(record: dict[str, Any]) -> dict[str, Any]:
    """The record, after validating it (and its JSON round trip) against the schema."""
    validator().validate(record)
    line = json.dumps(record, ensure_ascii=True)
    assert json.loads(line) == record
    return record
