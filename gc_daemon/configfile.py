"""Reading the configuration file: UTF-8 text, YAML without duplicate keys, bounded in size,
nesting and alias expansion. Anything else is refused with a message that names the file (and the
key and lines where there are some), never a traceback; the caller maps it to exit status 2.

- Encoding: UTF-8 (a UTF-8 byte-order mark is allowed). UTF-16/UTF-32 (with or without a BOM),
  Latin-1 and binary files are refused.
- Duplicate keys: a key written twice in one mapping is refused with its dotted path and both
  lines (YAML forbids it; PyYAML would silently keep the last one: a second ``mode: delete``).
  Keys a merge (``<<: *defaults``) brings in may be overridden, as YAML merges mean.
- Size: at most :data:`MAX_BYTES` bytes, nesting at most :data:`MAX_DEPTH` levels, and aliases may
  add at most :data:`MAX_ALIAS_EXPANSION` values and characters to the document (counted as if
  every alias were written out): anchors and merges for reuse are fine, a "billion laughs" is not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 32
MAX_ALIAS_EXPANSION = 1_000_000
_MERGE = "tag:yaml.org,2002:merge"


class _MergeKey:
    """The ``<<`` of a merge, as a key: distinct from a quoted ``"<<"`` string."""

    def __repr__(self) -> str:
        return "<<"


_MERGE_KEY = _MergeKey()


class ConfigFileError(Exception):
    """The file cannot be read as a configuration; the message names the file."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader; the checks run on the composed node graph, before construction."""


def read_config_file(path: Path) -> Any:
    """The data of the YAML file at ``path`` (``None`` when it is empty)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_BYTES:
        raise ConfigFileError(f"{path} is larger than {MAX_BYTES // (1024 * 1024)} MiB: not a configuration file")
    text = _decode(path, raw)
    loader = _Loader(text)
    loader.name = str(path)  # in the marks of YAML errors
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check(path, loader, node)
        return loader.construct_document(node)
    except ConfigFileError:
        raise
    except yaml.MarkedYAMLError as exc:
        raise ConfigFileError(f"{path} is not valid YAML: {_describe(exc)}") from None
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ConfigFileError(f"{path} is nested too deeply to be a configuration (more than {MAX_DEPTH} levels)") from None
    except (ValueError, TypeError, OverflowError) as exc:  # a scalar PyYAML cannot build: 2024-13-01
        raise ConfigFileError(f"{path} is not valid YAML: {type(exc).__name__}: {' '.join(str(exc).split())}") from None
    finally:
        loader.dispose()


def _decode(path: Path, raw: bytes) -> str:
    for bom, name in ((b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe\x00\x00", "UTF-32"),
                      (b"\xfe\xff", "UTF-16"), (b"\xff\xfe", "UTF-16")):
        if raw.startswith(bom):
            raise ConfigFileError(f"{path} is {name} text, not UTF-8: save it as UTF-8")
    if b"\x00" in raw:
        line = raw.count(b"\n", 0, raw.index(b"\x00")) + 1
        raise ConfigFileError(
            f"{path} is not UTF-8 text: a NUL byte at line {line} "
            "(UTF-16 or UTF-32 without a byte-order mark, or a binary file): save it as UTF-8"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigFileError(
            f"{path} is not UTF-8 text: byte 0x{raw[exc.start]:02x} at line {line} is not UTF-8 "
            "(Latin-1 or another encoding, or a binary file): save it as UTF-8"
        ) from None


def _describe(exc: yaml.MarkedYAMLError) -> str:
    """A YAML error on one line, without the snippet of the file PyYAML adds (it may hold a secret)."""
    parts = []
    if exc.context:
        where = f" (line {exc.context_mark.line + 1})" if exc.context_mark else ""
        parts.append(f"{exc.context}{where}")
    if exc.problem:
        where = f"line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1}: " if exc.problem_mark else ""
        parts.append(f"{where}{exc.problem}")
    return " ".join(" ".join(parts).split()) or type(exc).__name__


def _key_text(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def _child_path(path: str, key: Any) -> str:
    text = _key_text(key)
    return f"{path}.{text}" if path else text


def _check(path: Path, loader: _Loader, root: Node) -> None:
    """Duplicate keys, nesting depth and alias expansion, on the node graph (iteratively: a deep
    document must not exhaust the stack here)."""
    # Depth-first in document order: every distinct node once, where it first appears (an
    # anchor comes before its aliases), then its expanded size and height from its children's.
    size: dict[int, int] = {}  # expanded: values and characters, as if every alias were written out
    height: dict[int, int] = {}
    own_total = 0  # the same, counting each distinct node once
    on_path: set[int] = set()
    stack: list[tuple[Node, str, int, bool]] = [(root, "", 1, False)]
    while stack:
        node, where, depth, done = stack.pop()
        nid = id(node)
        if done:
            on_path.discard(nid)
            children = _children(node)
            size[nid] = _own(node) + sum(size[id(c)] for c in children)
            height[nid] = 1 + max((height[id(c)] for c in children), default=0)
            if depth + height[nid] - 1 > MAX_DEPTH:  # an alias can nest what it names deeper
                raise ConfigFileError(
                    f"{path}: nested deeper than {MAX_DEPTH} levels at line {node.start_mark.line + 1}{_at(where)}"
                )
            if size[nid] - own_total > MAX_ALIAS_EXPANSION:
                raise ConfigFileError(
                    f"{path}: aliases near line {node.start_mark.line + 1} expand the document by more than "
                    f"{MAX_ALIAS_EXPANSION:,} values and characters: refused (an alias bomb?)"
                )
            continue
        if nid in on_path:
            raise ConfigFileError(f"{path}: a recursive alias at line {node.start_mark.line + 1}{_at(where)}: refused")
        if nid in size:
            continue  # an alias of a node already measured
        if depth > MAX_DEPTH:
            raise ConfigFileError(
                f"{path}: nested deeper than {MAX_DEPTH} levels at line {node.start_mark.line + 1}{_at(where)}"
            )
        on_path.add(nid)
        own_total += _own(node)
        stack.append((node, where, depth, True))
        pending: list[tuple[Node, str, int, bool]] = []
        if isinstance(node, SequenceNode):
            pending = [(child, f"{where}[{i}]", depth + 1, False) for i, child in enumerate(node.value)]
        elif isinstance(node, MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key: Any = _MERGE_KEY if key_node.tag == _MERGE else None
                if key is None and isinstance(key_node, ScalarNode):
                    key = loader.construct_object(key_node, deep=True)
                if key is not None:
                    line = key_node.start_mark.line + 1
                    if key in seen:
                        raise ConfigFileError(
                            f"{path}: duplicate key {_child_path(where, key)} at line {line} "
                            f"(first at line {seen[key]}): a key may appear only once"
                        )
                    seen[key] = line
                child = _child_path(where, key if key is not None else "?")
                pending.append((key_node, child, depth + 1, False))
                pending.append((value_node, child, depth + 1, False))
        stack.extend(reversed(pending))


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _own(node: Node) -> int:
    return 1 + (len(node.value) if isinstance(node, ScalarNode) else 0)


def _at(where: str) -> str:
    return f" ({where})" if where else ""
