"""YAML to plain values, remembering the line of every path (for error messages)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

try:  # libyaml is an order of magnitude faster on 10,000-entry policies
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader


@dataclass
class Located:
    """Plain data plus a map from dotted path ("allow[2].ports") to 1-based line."""

    data: Any
    lines: dict[str, int] = field(default_factory=dict)

    def line(self, path: str) -> int:
        # Walk up the path until some prefix has a known line.
        while path:
            if path in self.lines:
                return self.lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return self.lines.get("", 1)


class YamlSyntaxError(ValueError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def load_located(text: str) -> Located:
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise YamlSyntaxError(line, f"invalid YAML: {exc.problem or exc}") from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        raise YamlSyntaxError(
            line, f"invalid YAML: unacceptable character {exc.character!r}"
        ) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(1, "invalid YAML: " + " ".join(str(exc).split())) from None
    out = Located(None)
    out.data = _convert(node, "", out.lines) if node is not None else None
    return out


def _convert(node: yaml.Node, path: str, lines: dict[str, int]) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            child = f"{path}.{key}" if path else str(key)
            if key in result:
                lines[child] = key_node.start_mark.line + 1
                raise YamlSyntaxError(lines[child], f"{child}: duplicate key")
            result[key] = _convert(value_node, child, lines)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, f"{path}[{i}]", lines) for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise YamlSyntaxError(node.start_mark.line + 1, "keys must be plain scalars")
    # PyYAML's safe constructor turns the resolved tag into int, bool, None, float, str.
    try:
        return _CONSTRUCTOR.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as exc:
        raise YamlSyntaxError(
            node.start_mark.line + 1, f"invalid YAML value: {exc.problem}"
        ) from None


_CONSTRUCTOR = yaml.constructor.SafeConstructor()
