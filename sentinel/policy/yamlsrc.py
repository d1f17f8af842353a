"""YAML to plain values, remembering the line of every path (for error messages).

Fast on 10,000-entry policies: libyaml composes the node graph (its nodes carry their marks) and
PyYAML's safe constructor builds the values in one pass, exactly as `yaml.load` would. The map
from dotted path to line is built from the same nodes only when somebody asks for a line (a
validation error, or a policy test that reports its line).

Anchors and aliases are refused: a 415-byte alias bomb expands to gigabytes, and a policy has no
need for them. The refusal names the line of the first anchor or alias.
"""

from __future__ import annotations

import functools
from typing import Any

import yaml

from sentinel.policy import yamlfast

try:  # libyaml is an order of magnitude faster on 10,000-entry policies
    _Base: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Base = yaml.SafeLoader


class Located:
    """Plain data plus the line (1-based) of any dotted path ("allow[2].ports")."""

    def __init__(
        self,
        data: Any,
        node: yaml.Node | None = None,
        runs: dict[str, yamlfast.Run] | None = None,
    ) -> None:
        self.data = data
        self._node = node
        self._runs = runs or {}
        self._lines: dict[str, int] | None = None

    @property
    def lines(self) -> dict[str, int]:
        if self._lines is None:
            self._lines = {}
            if self._node is not None:
                _index(self._node, "", self._lines, self._runs)
        return self._lines

    def line(self, path: str) -> int:
        lines = self.lines
        # Walk up the path until some prefix has a known line.
        while path:
            if path in lines:
                return lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return lines.get("", 1)


class YamlSyntaxError(ValueError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class _Loader(_Base):  # type: ignore[misc, valid-type]
    """libyaml's composer with a C-level memo in front of PyYAML's pure-Python tag resolver."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.resolve = _resolve  # keys, ports and protocols repeat; names do not


_RESOLVER = yaml.resolver.Resolver()
_MEMO_MAX = 4096
_resolve = functools.lru_cache(maxsize=_MEMO_MAX)(_RESOLVER.resolve)
_STR = "tag:yaml.org,2002:str"
# The live registry Resolver.resolve reads: first character -> [(tag, regex)] of the implicit
# resolvers (bool, int, float, null, timestamp, ...); None would be a wildcard (none is).
_IMPLICIT = _RESOLVER.yaml_implicit_resolvers


class _Duplicate(Exception):
    def __init__(self, key_node: yaml.Node) -> None:
        self.key_node = key_node


def load_located(text: str) -> Located:
    if "&" in text or "*" in text:  # only then can there be an anchor or an alias
        _refuse_aliases(text)
    try:
        folded = yamlfast.fold(text, _fold_scalar)
        if folded is not None:
            return _load(folded.text, folded.runs)
    except (yamlfast.Fallback, YamlSyntaxError):
        pass  # the full parse of the original text decides (and words any error)
    return _load(text, {})


def _load(text: str, runs: dict[str, yamlfast.Run]) -> Located:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise YamlSyntaxError(line, f"invalid YAML: {exc.problem or exc}") from None
    except yaml.reader.ReaderError as exc:
        raise _reader_error(text, exc) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(1, "invalid YAML: " + " ".join(str(exc).split())) from None
    finally:
        loader.dispose()
    if node is None:
        if runs:
            raise yamlfast.Fallback("placeholders vanished")
        return Located(None)
    used: set[str] = set()
    try:
        data = _value(node, runs, used)
    except _Duplicate as dup:
        if runs:
            raise yamlfast.Fallback("duplicate key") from None
        raise _duplicate_error(node, dup.key_node) from None
    except RecursionError:
        raise YamlSyntaxError(1, "invalid YAML: nested too deeply") from None
    if len(used) != len(runs):  # a placeholder landed inside a string: the lines were not items
        raise yamlfast.Fallback("placeholder outside a sequence")
    return Located(data, node, runs)


def _value(node: yaml.Node, runs: dict[str, yamlfast.Run], used: set[str]) -> Any:
    """Node -> plain value (what yaml.safe_load gives; collection tags are not special)."""
    cls = node.__class__
    if cls is yaml.ScalarNode:
        return node.value if node.tag == _STR else _scalar(node)
    if cls is yaml.MappingNode:
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.__class__ is not yaml.ScalarNode:
                raise YamlSyntaxError(key_node.start_mark.line + 1, "keys must be plain scalars")
            key = key_node.value if key_node.tag == _STR else _scalar(key_node)
            result[key] = _value(value_node, runs, used)
        if len(result) != len(node.value):
            raise _Duplicate(_duplicate_key(node))
        return result
    out: list[Any] = []
    for item in node.value:
        run = runs.get(item.value) if runs and _is_plain(item) else None
        if run is not None and item.value not in used:
            used.add(item.value)
            out.extend(run.entries)
        else:
            out.append(_value(item, runs, used))
    return out


def _is_plain(node: yaml.Node) -> bool:
    return node.__class__ is yaml.ScalarNode and not node.style and node.tag == _STR


def _fold_scalar(token: str) -> Any:
    """A scalar of a folded line, resolved and built exactly as libyaml's would be."""
    value = _HOT.get(token, _MISS)
    if value is _MISS:
        value = _fold_resolved(token)
        if len(_HOT) < _MEMO_MAX:
            _HOT[token] = value
    return value


_MISS = object()
_HOT: dict[str, Any] = {}  # the first tokens seen: keys, ports and protocols repeat, one hit


def _fold_resolved(token: str) -> Any:
    first = token[0]
    if first in "\"'" or None in _IMPLICIT or _RESOLVER.yaml_path_resolvers:
        return _fold_memo(token)
    # Resolver.resolve's own walk: no candidate regex matches -> str. Names and networks are
    # unique, so they skip the memo (it would only churn); anything else resolves as before.
    for _tag, regexp in _IMPLICIT.get(first, ()):
        if regexp.match(token):
            return _fold_memo(token)
    return token


@functools.lru_cache(maxsize=_MEMO_MAX)
def _fold_memo(token: str) -> Any:
    if token[0] in "\"'":
        return token[1:-1]  # quoted without escapes: the text itself, always a string
    tag = _resolve(yaml.ScalarNode, token, (True, False))
    if tag == _STR:
        return token
    try:
        return _scalar(yaml.ScalarNode(tag, token, _NO_MARK, _NO_MARK))
    except YamlSyntaxError:
        raise yamlfast.Fallback(token) from None


_NO_MARK = yaml.Mark("", 0, 0, 0, None, None)


def _scalar(node: yaml.Node) -> Any:
    """A non-string scalar through PyYAML's safe constructor (int, bool, None, float, date)."""
    key = (node.tag, node.value)
    if key in _SCALARS:
        return _SCALARS[key]
    build = _CONSTRUCTOR.yaml_constructors.get(node.tag)
    if build is None:
        raise YamlSyntaxError(
            node.start_mark.line + 1,
            f"invalid YAML value: could not determine a constructor for the tag {node.tag!r}",
        )
    try:
        value = build(_CONSTRUCTOR, node)
    except (yaml.constructor.ConstructorError, ValueError) as exc:
        problem = getattr(exc, "problem", None) or exc
        raise YamlSyntaxError(node.start_mark.line + 1, f"invalid YAML value: {problem}") from None
    if len(_SCALARS) < _MEMO_MAX and isinstance(value, int | float | bool | None):
        _SCALARS[key] = value
    return value


_SCALARS: dict[tuple[str, str], Any] = {}


def _refuse_aliases(text: str) -> None:
    """Anchors (&a) and aliases (*a) -> YamlSyntaxError at the first one; events only, no nodes."""
    try:
        for event in yaml.parse(text, Loader=_Base):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                kind = "alias *" if isinstance(event, yaml.AliasEvent) else "anchor &"
                raise YamlSyntaxError(
                    event.start_mark.line + 1,
                    f"YAML anchors and aliases are not allowed ({kind}{event.anchor}); "
                    "write the values out",
                )
    except yaml.YAMLError:
        return  # a syntax error: the real load reports it with its line


def _reader_error(text: str, exc: yaml.reader.ReaderError) -> YamlSyntaxError:
    line = text[: exc.position].count("\n") + 1
    return YamlSyntaxError(line, f"invalid YAML: unacceptable character {exc.character!r}")


def _duplicate_key(node: yaml.MappingNode) -> yaml.Node:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = _scalar(key_node) if key_node.tag != _STR else key_node.value
        if key in seen:
            return key_node
        seen.add(key)
    return node  # pragma: no cover - a shorter mapping always has a repeated key


def _duplicate_error(root: yaml.Node, key_node: yaml.Node) -> YamlSyntaxError:
    """The error names the dotted path of the repeated key (its second occurrence)."""
    line = key_node.start_mark.line + 1
    path = _path_of(root, key_node, "") or str(_scalar(key_node))
    return YamlSyntaxError(line, f"{path}: duplicate key")


def _path_of(node: yaml.Node, target: yaml.Node, path: str) -> str | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if key_node.tag == _STR else _scalar(key_node)
            child = f"{path}.{key}" if path else str(key)
            if key_node is target:
                return child
            found = _path_of(value_node, target, child)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found = _path_of(item, target, f"{path}[{i}]")
            if found:
                return found
    return None


def _index(node: yaml.Node, path: str, lines: dict[str, int], runs: dict[str, Any]) -> None:
    """Dotted path -> line for every node (only walked when a line is asked for)."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if key_node.tag == _STR else _scalar(key_node)
            child = f"{path}.{key}" if path else str(key)
            _index(value_node, child, lines, runs)
    elif isinstance(node, yaml.SequenceNode):
        i = 0
        for item in node.value:
            run = runs.get(item.value) if runs and _is_plain(item) else None
            if run is not None:  # every path inside a folded item is on the item's line
                for number in run.lines:
                    lines[f"{path}[{i}]"] = number
                    i += 1
                continue
            _index(item, f"{path}[{i}]", lines, runs)
            i += 1


_CONSTRUCTOR = yaml.constructor.SafeConstructor()
