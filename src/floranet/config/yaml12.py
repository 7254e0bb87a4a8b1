"""YAML as floranet's settings files read it: YAML 1.2's plain values, no key twice, no aliases."""

from __future__ import annotations

import re
from collections.abc import Hashable
from typing import Any

import yaml


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last silently), a key
    that is not a plain value, and aliases (``*name``: a few hundred bytes of them expand to gigabytes)."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not accepted here", mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)  # "<<" merge keys, as the parent class reads them
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be a name, not a list or a mapping", key_node.start_mark
                )
            name = str(key).replace("-", "_") if isinstance(key, str) else key
            line = key_node.start_mark.line + 1
            if name in seen:  # both lines, in order: a "<<" merge key's values come first in node.value
                first, second = sorted((seen[name], line))
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is set twice (lines {first} and {second})", key_node.start_mark
                )
            seen[name] = line
        return super().construct_mapping(node, deep=deep)


# Plain values resolve as in YAML 1.2's core schema, not PyYAML's YAML 1.1: there `augment: off` was False
# ("Received: augment=False"), `seed: 0123` the octal 83 and `epochs: 1:30` the base-60 90. Bools are only
# true/false, ints decimal (or 0o/0x), floats need a dot or an exponent (1e-4 too), and there are no dates.
_BOOL, _INT, _FLOAT = (f"tag:yaml.org,2002:{t}" for t in ("bool", "int", "float"))
_YAML12 = (
    (_BOOL, r"true|True|TRUE|false|False|FALSE", "tTfF"),
    (_INT, r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", "-+0123456789"),
    (
        _FLOAT,
        r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)",
        "-+.0123456789",
    ),
)
UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _INT, _FLOAT, "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _yaml12_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    try:
        return int(text, 0) if text[:2] in ("0o", "0x") else int(text, 10)  # 0123 is 123
    except ValueError:  # over 4,300 digits: Python's own limit, said with where the value is
        mark = node.start_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        raise ValueError(f"an integer of {len(text)} characters is too long to be a setting ({where})") from None


UniqueKeyLoader.add_constructor(_INT, _yaml12_int)


class Dumper(yaml.SafeDumper):
    """YAML's safe dumper, also quoting a text that YAML 1.2 would read as a number (``1.0e5``, ``0o17``): config.yaml
    reads back the same under either rule."""


for _tag, _rule, _first in _YAML12:
    for _cls in (UniqueKeyLoader, Dumper):
        _cls.add_implicit_resolver(_tag, re.compile(rf"^(?:{_rule})$"), list(_first))


def yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (PyYAML's own text spans several lines)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(e).split())
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
