"""Regenerate the vendored Kubernetes schemas (run by hand, never at test time).

Source: the `kubernetes-validate` wheel from PyPI (Apache-2.0), which ships the published
Kubernetes OpenAPI definitions as JSON Schema. This keeps only the kinds the deploy files use,
with every reachable definition inlined under `$defs` (descriptions dropped to keep it small):

    pip download --no-deps kubernetes-validate -d /tmp/kv && unzip -q /tmp/kv/*.whl -d /tmp/kv/w
    python tests/schemas/bundle_k8s.py /tmp/kv/w/kubernetes_validate/kubernetes-json-schema/v1.33.0-local-strict
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

KINDS = {"networkpolicy-networking-v1": "NetworkPolicy", "pod-v1": "Pod"}
PREFIX = "/api/_definitions.json#/$defs/"


def strip(node, refs: set[str]):
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                continue
            if key == "$ref" and isinstance(value, str):
                name = value.removeprefix(PREFIX).removeprefix("#/$defs/")
                refs.add(name)
                value = f"#/$defs/{name}"
            out[key] = strip(value, refs)
        return out
    if isinstance(node, list):
        return [strip(v, refs) for v in node]
    return node


def bundle(src: Path, kind: str) -> dict:
    defs_all = json.loads((src / "_definitions.json").read_text())["$defs"]
    refs: set[str] = set()
    top = strip(json.loads((src / f"{kind}.json").read_text()), refs)
    defs: dict = {}
    while refs - defs.keys():
        name = sorted(refs - defs.keys())[0]
        defs[name] = strip(defs_all[name], refs)
    top["$defs"] = dict(sorted(defs.items()))
    top["$comment"] = f"bundled from kubernetes-validate {src.name}/{kind}.json"
    return top


def main() -> None:
    src = Path(sys.argv[1])
    here = Path(__file__).parent
    for kind in KINDS:
        out = here / f"k8s-{src.name.split('-')[0]}-{kind}.json"
        out.write_text(json.dumps(bundle(src, kind), indent=1, sort_keys=True) + "\n")
        print(out, out.stat().st_size)


if __name__ == "__main__":
    main()
