"""Strict reading of shadowtap's YAML files: one helper for every reader.

Why one helper: a typo'd key that is silently ignored turns a feature off without a word (in a
checks file, ``p95ms:`` instead of ``p95_ms:`` removes the latency gate). Every YAML reader of
the project (appliance config, checks file, image manifest, lab spec, sanitise policy, canary
policy, noise rules) declares the keys it knows as a small *schema* and calls ``check`` (or
``load``, which also reads and parses the file). Every problem is one line:

- an unknown key names the file, the key's dotted path and the closest known key::

      appliance.yaml: pipeline.sinks[0].pth: unknown key; did you mean 'path'?

- a wrong type names the path and the type expected::

      appliance.yaml: extract.port: expected a whole number, got 'http' (a string)

- a YAML syntax error names file:line:column, PyYAML's problem, and what to do::

      appliance.yaml:3:9: not valid YAML (mapping values are not allowed here); ...

A schema is plain data:

- a ``dict`` of key -> schema: a mapping with at most these keys (the reader decides which
  are required and what the values mean);
- a one-element ``list`` ``[item]``: a list of ``item``;
- a type ``str``, ``int`` (not a bool), ``float`` (an int is fine), ``bool``;
- a ``tuple`` of schemas: any one of them (``(str, [str])``: one name or a list of names);
- ``ANY``: anything (checked by the reader itself);
- ``MapOf(value)``: a mapping with free keys (e.g. header name -> mode);
- ``Tagged(tag, variants, common)``: a mapping whose keys depend on the value of ``tag``
  (``type: http`` allows ``path``, ``type: locust`` allows ``p95_ms``).

A value of ``null`` always passes (it means "not given"; the reader applies its default).

This package is a leaf: it imports only the standard library and PyYAML, never ``replay``,
``netconfig`` or ``appliance``, so all three may import it (``tests/test_house.py``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ANY", "ConfigError", "MapOf", "Tagged", "check", "load", "load_yaml",
           "unknown_key_message", "yaml_error_message"]


class ConfigError(ValueError):
    """A problem with a configuration file; the message is one line and says what to fix."""


ErrorType = Callable[[str], Exception]


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY: Any = _Any()
"""Schema: any value (the reader checks it)."""


@dataclass(frozen=True)
class MapOf:
    """Schema: a mapping with free keys whose values all match ``value``."""

    value: Any = ANY


@dataclass(frozen=True)
class Tagged:
    """Schema: a mapping whose allowed keys are ``common`` plus ``variants[mapping[tag]]``.

    An unknown or missing tag checks only ``common`` keys' types and skips the unknown-key
    check (the reader reports the bad tag with its own, better message)."""

    tag: str
    variants: Mapping[str, Mapping[str, Any]]
    common: Mapping[str, Any] = field(default_factory=dict)


# ---- messages -----------------------------------------------------------------------------------

def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def unknown_key_message(path: str, key: Any, known: Any) -> str:
    """``path: unknown key; did you mean 'x'?`` (or the list of known keys when none is close)."""
    known = sorted(str(k) for k in known)
    near = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    if near:
        hint = f"did you mean {near[0]!r}?"
    else:
        hint = f"known keys: {', '.join(known)}" if known else "no keys are allowed here"
    return f"{path}: unknown key; {hint}"


def _type_name(schema: Any) -> str:
    if isinstance(schema, tuple):
        return " or ".join(dict.fromkeys(_type_name(s) for s in schema))
    if isinstance(schema, list):
        inner = _type_name(schema[0]) if schema else "anything"
        return f"a list of {_plural(inner)}"
    if isinstance(schema, (dict, MapOf, Tagged)):
        return "a mapping (key: value)"
    return {str: "a string", int: "a whole number", float: "a number",
            bool: "true or false"}.get(schema, "anything")


def _plural(name: str) -> str:
    for one, many in (("a string", "strings"), ("a whole number", "whole numbers"),
                      ("a number", "numbers"), ("a mapping (key: value)", "mappings"),
                      ("true or false", "true/false values")):
        name = name.replace(one, many)
    return name


def _value_name(v: Any) -> str:
    kind = {bool: "true/false", int: "a whole number", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(v), type(v).__name__)
    text = repr(v)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{text} ({kind})"


def yaml_error_message(exc: Exception, file: str | Path | None) -> str:
    """One line for a PyYAML error: ``file:line:col: not valid YAML (problem); what to do``."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = str(file) if file is not None else "<yaml>"
    if mark is not None:
        where += f":{mark.line + 1}:{mark.column + 1}"
    problem = getattr(exc, "problem", None) or str(exc)
    problem = " ".join(str(problem).split())
    return (f"{where}: not valid YAML ({problem}); check the indentation there, and quote "
            "values that contain ': ', ' #', '[' or '{'")


# ---- checking -----------------------------------------------------------------------------------

def _matches_scalar(v: Any, schema: Any) -> bool:
    if schema is ANY:
        return True
    if schema is bool:
        return isinstance(v, bool)
    if schema is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if schema is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if schema is str:
        return isinstance(v, str)
    raise TypeError(f"bad schema {schema!r}")


def _shape_ok(v: Any, schema: Any) -> bool:
    """Whether ``v`` has the outer shape of ``schema`` (to pick an alternative of a tuple)."""
    if isinstance(schema, list):
        return isinstance(v, list)
    if isinstance(schema, (dict, MapOf, Tagged)):
        return isinstance(v, dict)
    if isinstance(schema, tuple):
        return any(_shape_ok(v, s) for s in schema)
    return _matches_scalar(v, schema)


def _check(v: Any, schema: Any, path: str, err: ErrorType) -> None:
    if v is None or schema is ANY:
        return
    if isinstance(schema, tuple):
        for alt in schema:
            if _shape_ok(v, alt):
                _check(v, alt, path, err)
                return
        raise err(f"{path or 'the document'}: expected {_type_name(schema)}, got {_value_name(v)}")
    if not _shape_ok(v, schema):
        raise err(f"{path or 'the document'}: expected {_type_name(schema)}, got {_value_name(v)}")
    if not isinstance(schema, (list, dict, MapOf, Tagged)):
        return  # a scalar of the right type
    if isinstance(schema, list):
        if schema:
            for i, item in enumerate(v):
                if item is None:
                    raise err(f"{path}[{i}]: empty entry; expected {_type_name(schema[0])}")
                _check(item, schema[0], f"{path}[{i}]", err)
        return
    if isinstance(schema, MapOf):
        for k, item in v.items():
            _check(item, schema.value, _join(path, k), err)
        return
    if isinstance(schema, Tagged):
        variant = schema.variants.get(v.get(schema.tag)) if isinstance(
            v.get(schema.tag), str) else None
        if variant is None:
            for k, s in schema.common.items():
                if k in v:
                    _check(v[k], s, _join(path, k), err)
            return
        schema = {**schema.common, **variant}
    for k, item in v.items():
        if k not in schema:
            raise err(unknown_key_message(_join(path, k), k, schema))
        _check(item, schema[k], _join(path, k), err)


def check(data: Any, schema: Any, *, file: str | Path | None = None, where: str = "",
          error: ErrorType = ConfigError) -> None:
    """Raise ``error(message)`` for the first unknown key or wrong type in ``data``.

    ``file`` starts the message (``appliance.yaml: pipeline.sinks[0].pth: ...``); ``where`` is
    the dotted path of ``data`` itself inside its document (``""`` for the whole document)."""
    def err(msg: str) -> Exception:
        return error(f"{file}: {msg}" if file is not None else msg)

    if data is None and isinstance(schema, (dict, MapOf, Tagged)):
        return
    _check(data, schema, where, err)


# ---- reading ------------------------------------------------------------------------------------

def _loader() -> Any:
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(loader: Any, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: PyYAML reports it itself
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (first on line {first.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    StrictLoader.add_constructor("tag:yaml.org,2002:map", construct_mapping)
    return StrictLoader


_LOADER: Any = None


def parse_yaml(text: str | bytes, *, file: str | Path | None = None,
               error: ErrorType = ConfigError) -> Any:
    """Parse YAML text; a syntax error (or a key given twice) is one line naming the spot."""
    import yaml

    global _LOADER
    if _LOADER is None:
        _LOADER = _loader()
    try:
        return yaml.load(text, Loader=_LOADER)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as e:
        raise error(yaml_error_message(e, file)) from None


def load_yaml(path: str | Path, *, what: str = "file", error: ErrorType = ConfigError) -> Any:
    """Read and parse a YAML file; every failure is one ``error`` line naming the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{p}: no such {what}") from None
    except IsADirectoryError:
        raise error(f"{p}: is a directory, not a {what}") from None
    except UnicodeDecodeError:
        raise error(f"{p}: not a text file (a {what} is UTF-8 YAML)") from None
    except OSError as e:
        raise error(f"{p}: cannot read the {what} ({e.strerror or e})") from None
    return parse_yaml(text, file=p, error=error)


def load(path: str | Path, schema: Any, *, what: str = "file",
         error: ErrorType = ConfigError) -> Any:
    """``load_yaml`` then ``check``: the parsed document, with every key known."""
    data = load_yaml(path, what=what, error=error)
    check(data, schema, file=path, error=error)
    return data
