"""Validates messaging frames against the platform's published JSON schemas, read in place
from ../shared/schemas/messaging (never copied into the project).

Input (stdin): one JSON object per line, {"schema": "ws/consumerRequests.json[#/anyOf/N]",
"instance": {...}, "label": "..."}. Output: one line per frame that fails, naming the label,
the schema and the reasons; exit status 1 if any failed, 0 otherwise.

The schemas are Draft 4 with relative file references. Two references in ws/agentRequests.json
differ in letter case from the file names, so files are found case-insensitively. Two type
names are not Draft 4 ("any" in ms/HostedFile.json, "Long" in
aam/subscribeExConversationsNotification.json): they are read as "no constraint" and
"integer", in memory; the files are not changed.
"""

import json
import os
import sys
from pathlib import Path

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

def schemas_root() -> Path:
    """$BRANDGATE_SCHEMAS, else ../shared beside the checkout, else this machine's /work/shared
    (a clone made elsewhere, as CI does)."""
    if os.environ.get("BRANDGATE_SCHEMAS"):
        return Path(os.environ["BRANDGATE_SCHEMAS"]).resolve()
    beside = Path(__file__).resolve().parents[3] / "shared" / "schemas" / "messaging"
    if beside.is_dir():
        return beside
    return Path("/work/shared/schemas/messaging")


ROOT = schemas_root()


def find(path: Path) -> Path:
    """The file at `path`, letter case ignored where the exact name does not exist."""
    if path.exists():
        return path
    current = Path(path.parts[0])
    for part in path.parts[1:]:
        if (current / part).exists():
            current = current / part
            continue
        matches = [n for n in os.listdir(current) if n.lower() == part.lower()]
        if len(matches) != 1:
            raise FileNotFoundError(path)
        current = current / matches[0]
    return current


def fix_types(node):
    """Replaces the two non-Draft-4 type names, in memory."""
    if isinstance(node, dict):
        if node.get("type") == "any":
            del node["type"]
        elif node.get("type") == "Long":
            node["type"] = "integer"
        for value in node.values():
            fix_types(value)
    elif isinstance(node, list):
        for value in node:
            fix_types(value)
    return node


def retrieve(uri: str) -> Resource:
    if not uri.startswith("file://"):
        raise ValueError(f"not a schema file: {uri}")
    contents = fix_types(json.loads(find(Path(uri[len("file://"):])).read_text()))
    return Resource.from_contents(contents, default_specification=DRAFT4)


REGISTRY = Registry(retrieve=retrieve)


def validator(entry: str) -> jsonschema.Draft4Validator:
    file, _, fragment = entry.partition("#")
    uri = (ROOT / file).as_uri() + (f"#{fragment}" if fragment else "")
    return jsonschema.Draft4Validator(
        {"$ref": uri},
        registry=REGISTRY,
        format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER,
    )


def main() -> int:
    if not ROOT.is_dir():
        print(f"schemas not found at {ROOT}", file=sys.stderr)
        return 2
    failed = 0
    checked = 0
    cache = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        item = json.loads(line)
        entry = item["schema"]
        if entry not in cache:
            cache[entry] = validator(entry)
        errors = sorted(cache[entry].iter_errors(item["instance"]), key=lambda e: list(e.path))
        checked += 1
        if errors:
            failed += 1
            reasons = "; ".join(
                f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:200]}" for e in errors
            )
            print(f"{item.get('label', '?')} against {entry}: {reasons}")
    print(f"checked {checked} frames, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
