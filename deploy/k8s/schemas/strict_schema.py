"""What the generate*.py scripts beside this file share: a CRD's JSON Schema
made as strict as the API server's strict field validation, and written
the way check-deploy.sh reads it.

- `anyOf`/`oneOf [X, null]` becomes `X`, and `nullable` goes (the API
  server rejects null for these fields),
- every object with declared properties gets `additionalProperties: false`
  (a misspelt key is an error, not silently pruned), maps
  (`additionalProperties: {...}`) stay maps,
- `apiVersion`, `kind` and `metadata` are required, as for any stored object,
- generated titles and defaults are dropped (they are not rules).
"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def strict(node):
    """Returns `node` with nullable branches removed and objects closed."""
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {
        key: strict(value)
        for key, value in node.items()
        if key not in ("title", "default", "nullable")
    }
    for union in ("anyOf", "oneOf"):
        branches = node.get(union)
        if isinstance(branches, list):
            kept = [branch for branch in branches if branch != {"type": "null"}]
            if len(kept) == 1:
                node.pop(union)
                node.update(kept[0])
            else:
                node[union] = kept
    if "properties" in node and "additionalProperties" not in node:
        node["additionalProperties"] = False
    return node


def write(schema, file_name, description):
    """Writes a strict `schema` for a stored object beside this file."""
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["description"] = description
    (HERE / file_name).write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")


def export_model(model, file_name, description):
    """Writes the strict schema of a pydantic (cloudcoil) model."""
    write(strict(model.model_json_schema(by_alias=True, mode="validation")), file_name, description)
