"""One way to fill a config dataclass: its defaults, then `--config FILE.yaml`, then command-line flags.

`add_config_arguments` gives a parser one flag per field (`--section.field`, underscores written as
dashes, plus the spellings a command passes as aliases). A flag's help is the `#` comment on its
field's line (or `field(metadata={"help": ...})`), followed by the default taken from the dataclass.
`config_from_args` builds the dataclass from the command's defaults, the YAML file and the flags that
were given, coercing every value by the field's type hint. `save_config` writes a resolved config as
YAML; `load_config` reads it back. Stdlib and yaml only: the data pipeline, which never imports
torch, uses it too.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import functools
import inspect
import io
import os
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from falconlm.errors import FalconError

T = TypeVar("T")
SPECS = "_config_specs"  # parser default: section -> how its flags were made (read back by config_from_args)
TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclasses.dataclass(frozen=True)
class Derived:
    """A default the command computes after parsing: the help shows `text`, the field holds None until then."""

    text: str


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One settable field: dotted path, type hint, default, help text, declared choices."""

    path: str
    hint: Any
    default: Any
    help: str
    choices: tuple | None = None


@functools.cache
def field_help(cls: type) -> dict[str, str]:
    """Field name -> help text: `metadata["help"]`, else the `#` comment on the field's line(s)."""
    notes: dict[str, str] = {}
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source file (a REPL, generated code): no comments to read
        source = ""
    if source:
        comments = {t.start[0]: t.string.lstrip("#").strip() for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT}
        for node in ast.parse(source).body[0].body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                notes[node.target.id] = " ".join(comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments)
    notes.update({f.name: f.metadata["help"] for f in dataclasses.fields(cls) if "help" in f.metadata})
    return notes


def _optional(hint: Any) -> tuple[Any, bool]:
    """(X, True) for `X | None`, else (hint, False)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (Union, types.UnionType) and type(None) in args:
        rest = tuple(a for a in args if a is not type(None))
        return (rest[0] if len(rest) == 1 else Union[rest]), True
    return hint, False


def _default(f: dataclasses.Field, base: Any = None) -> Any:
    if base is not None:  # inside a nested dataclass whose default instance may differ from its class defaults
        return getattr(base, f.name)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def leaves(cls: type, prefix: str = "", base: Any = None) -> list[Leaf]:
    """Every settable field of `cls`, nested dataclasses flattened to dotted paths.

    An optional nested dataclass (`lora: LoRAConfig | None`) is also a bool leaf of its own: on (its defaults) or off (None).
    """
    hints, notes, out = typing.get_type_hints(cls), field_help(cls), []
    for f in (f for f in dataclasses.fields(cls) if f.init):
        inner, optional = _optional(hints[f.name])
        default = _default(f, base)
        if dataclasses.is_dataclass(inner):
            if optional:
                out.append(Leaf(prefix + f.name, bool, default is not None, notes.get(f.name, "")))
            out += leaves(inner, f"{prefix}{f.name}.", default if dataclasses.is_dataclass(default) else None)
        else:
            out.append(Leaf(prefix + f.name, hints[f.name], default, notes.get(f.name, ""), f.metadata.get("choices")))
    return out


def coerce(value: Any, hint: Any, choices: tuple | None = None) -> Any:
    """`value` (a YAML value or command-line text) as the type `hint` names; ValueError says why it cannot be."""
    inner, optional = _optional(hint)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional or inner is Any:
            return None
        raise ValueError("expected a value, got nothing")
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if origin in (Union, types.UnionType):  # `int | list[int]`: the first member the value fits
        for member in args:
            try:
                return coerce(value, member)
            except ValueError:
                pass
        raise ValueError(f"expected {' or '.join(getattr(a, '__name__', str(a)) for a in args)}, got {value!r}")
    if origin is Literal or choices:
        options = args if origin is Literal else choices
        match = [c for c in options if value == c or str(c) == str(value)]
        if not match:
            raise ValueError(f"expected one of {', '.join(map(str, options))}, got {value!r}")
        return match[0]
    if inner is bool:
        if isinstance(value, bool) or value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in TRUE + FALSE:
            return value.lower() in TRUE
        raise ValueError(f"expected true or false, got {value!r}")
    if inner in (int, float):
        number = value
        if isinstance(value, str):  # "4", "1e8", "1.0e11": YAML reads exponents without a dot as text
            try:
                number = int(value) if inner is int and value.strip().lstrip("+-").isdigit() else float(value)
            except ValueError:
                pass
        if isinstance(number, bool) or not isinstance(number, (int, float)) or (inner is int and not float(number).is_integer()):
            raise ValueError(f"expected {'an integer' if inner is int else 'a number'}, got {value!r}")
        return inner(number)
    if origin is list:
        return [coerce(v, args[0] if args else Any) for v in (value if isinstance(value, (list, tuple)) else [value])]
    if origin is tuple:
        return _tuple(value, args)
    if origin is dict or inner is dict:
        return _mapping(value)
    if inner is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"expected text, got {value!r}")
        return str(value)
    return value if inner is Any else inner(value)


def _tuple(value: Any, args: tuple) -> tuple:
    """A tuple from a YAML list, `a,b` text or YAML list text (`[[2, 0.2], [3, 0.18]]`), its items coerced by the hint's."""
    import yaml

    if isinstance(value, str):
        text = value.strip()
        if text.startswith(("[", "(")):
            try:
                value = yaml.safe_load(text.replace("(", "[").replace(")", "]"))
            except yaml.YAMLError as exc:
                raise ValueError(f"expected a list, got {text!r} ({getattr(exc, 'problem', None) or exc})") from None
        else:
            value = [x.strip() for x in text.split(",") if x.strip()]
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]
        return tuple(coerce(v, args[0]) for v in items)
    if args and len(args) != len(items):
        raise ValueError(f"expected {len(args)} items, got {value!r}")
    return tuple(coerce(v, a) for v, a in zip(items, args)) if args else tuple(items)


def _mapping(value: Any) -> dict:
    """A dict from a YAML mapping, `key=value` text, or YAML/JSON mapping text."""
    import yaml

    if isinstance(value, str):
        key, eq, text = value.partition("=")
        value = {key.strip(): yaml.safe_load(text)} if eq and not value.lstrip().startswith("{") else yaml.safe_load(value)
    if not isinstance(value, dict):
        raise ValueError(f"expected key=value or a mapping, got {value!r}")
    return value


def show(value: Any) -> str:
    """A default as the help prints it."""
    if isinstance(value, Derived):
        return value.text
    if isinstance(value, float) and len(repr(value)) > 8 and value == float(f"{value:g}"):
        return f"{value:g}"  # 3e+10, not 30000000000.0
    return value if isinstance(value, str) and value else repr(value)


def _flag(path: str, section: str | None = None, negative: bool = False) -> str:
    """`--section.path` with dashes for underscores; `--section.no-field` for the negative."""
    *parents, last = ((f"{section}." if section else "") + path).replace("_", "-").split(".")
    return "--" + ".".join([*parents, ("no-" if negative else "") + last])


class _Switch(argparse.Action):
    """`--x` sets True; `--no-x` and the other negative spellings set False."""

    def __init__(self, option_strings: list[str], dest: str, negatives: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)
        self.negatives = negatives

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, option_string not in self.negatives)


class _Merge(argparse.Action):
    """Each `key=value` (or mapping text) adds to the dict given so far."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, {k: v for d in [getattr(namespace, self.dest, None) or {}, *values] for k, v in d.items()})


def _type(hint: Any, choices: tuple | None = None) -> Any:
    def parse(text: str) -> Any:
        if text is argparse.SUPPRESS:  # an absent optional positional: argparse passes its default through `type`
            return text
        try:
            return coerce(text, hint, choices)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, section: str | None = None, aliases: dict[str, str | tuple[str, ...]] | None = None,
                         defaults: dict[str, Any] | None = None, skip: tuple[str, ...] = (), positional: tuple[str, ...] = ()) -> None:
    """Give `parser` `--config FILE.yaml` and one flag per field of `cls` (`--section.field`), plus `aliases` (path -> flags).

    `defaults` (path -> value or Derived) replace the dataclass's defaults for this command; `skip` paths get
    no flag; `positional` paths are positional arguments. A flag is absent from the namespace unless given,
    so the YAML file wins over defaults and flags win over both.
    """
    aliases, defaults = aliases or {}, defaults or {}
    if "--config" not in parser._option_string_actions:
        parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of field: value (a nested section as a mapping); flags given here override it")
    options: dict[str, tuple[str, ...]] = {}
    for leaf in (leaf for leaf in leaves(cls) if leaf.path not in skip):
        dest = f"{section}.{leaf.path}" if section else leaf.path
        default = defaults.get(leaf.path, leaf.default)
        text = f"{leaf.help} " * bool(leaf.help) + ("(required)" if default is dataclasses.MISSING else f"(default: {show(default)})")
        kwargs: dict[str, Any] = dict(default=argparse.SUPPRESS, help=text.replace("%", "%%"))
        inner, _ = _optional(leaf.hint)
        origin, args = typing.get_origin(inner), typing.get_args(inner)
        name = leaf.path.rsplit(".", 1)[-1].upper()
        if leaf.path in positional:
            parser.add_argument(dest, nargs="*" if origin is list else "?", metavar=name, type=_type(args[0] if origin is list else leaf.hint), **kwargs)
            options[leaf.path] = (name,)
            continue
        extra = aliases.get(leaf.path, ())
        extra = (extra,) if isinstance(extra, str) else tuple(extra)
        flags = tuple(dict.fromkeys([_flag(leaf.path, section), *(a for a in extra if not a.startswith("--no-"))]))
        if leaf.hint is bool:
            negatives = tuple(dict.fromkeys([_flag(leaf.path, section, True), *("--no-" + a[2:] for a in flags[1:]), *(a for a in extra if a.startswith("--no-"))]))
            parser.add_argument(*flags, *negatives, dest=dest, action=_Switch, negatives=negatives, **kwargs)
            flags += negatives
        elif origin is list:
            parser.add_argument(*flags, dest=dest, nargs="+", action="extend", type=_type(args[0] if args else str), metavar=name, **kwargs)
        elif origin is dict or inner is dict:
            parser.add_argument(*flags, dest=dest, nargs="+", action=_Merge, type=_type(dict), metavar="KEY=VALUE", **kwargs)
        else:
            choices = args if origin is Literal else leaf.choices
            metavar = None if choices else {int: "INT", float: "FLOAT"}.get(inner, name)
            parser.add_argument(*flags, dest=dest, type=_type(leaf.hint, leaf.choices), choices=choices, metavar=metavar, **kwargs)
        options[leaf.path] = flags
    spec = dict(cls=cls, section=section, defaults=defaults, skip=skip, options=options)
    parser.set_defaults(**{SPECS: {**(parser.get_default(SPECS) or {}), section or cls.__qualname__: spec}})


def config_from_args(cls: type[T], args: argparse.Namespace, section: str | None = None, yaml_section: str | None = None) -> T:
    """Build `cls` from the command's defaults, then the `--config` file, then the flags given on the command line.

    The YAML file's `yaml_section` key (default: the section) fills `cls`; without either, the whole file
    does, except the keys of the command's other configs (their sections, or their fields when they have none).
    """
    specs = (getattr(args, SPECS, None) or {}).values()
    spec = next((s for s in specs if s["cls"] is cls and s["section"] == section), {})
    data: dict = {}
    if getattr(args, "config", None):
        data = load_yaml(args.config)
        key = yaml_section or section
        others = {s["section"] or f.name for s in specs if s is not spec for f in dataclasses.fields(s["cls"])}
        data = (data.get(key) or {}) if key else {k: v for k, v in data.items() if k not in others}
    dests = {leaf.path: f"{section}.{leaf.path}" if section else leaf.path for leaf in leaves(cls)}
    given = {path: getattr(args, dest) for path, dest in dests.items() if hasattr(args, dest)}
    flags = {path: opts[1] if len(opts) > 1 and not opts[1].startswith("--no-") else opts[0] for path, opts in spec.get("options", {}).items()}
    return build(cls, data, given, spec.get("defaults"), source=str(getattr(args, "config", None) or "the config"), flags=flags)


def _put(tree: dict, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for p in parents:
        if not isinstance(tree.get(p), dict):  # a section named by a sub-field is on, whatever was there
            tree[p] = {}
        tree = tree[p]
    tree[last] = value


def _merge(base: dict, over: dict) -> dict:
    for k, v in over.items():
        base[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base


def _check(cls: type, data: Any, source: str, prefix: str = "") -> dict:
    """`data` with its keys checked and its values coerced by `cls`'s type hints; FalconError names the first bad one."""
    if not isinstance(data, dict):
        raise FalconError(f"{source}: {prefix.rstrip('.') or 'the file'} must be a mapping of field: value, got {data!r}")
    hints, fields = typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls) if f.init}
    out: dict = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            close = difflib.get_close_matches(name, list(fields), n=3)
            hint = f"did you mean {' or '.join(prefix + c for c in close)}?" if close else f"known keys: {', '.join(fields)}"
            raise FalconError(f"{source}: unknown key {prefix}{key} for {cls.__name__} ({hint})")
        inner, optional = _optional(hints[name])
        if dataclasses.is_dataclass(inner):  # a section; for an optional one, true = on with its defaults, false/null = off
            out[name] = None if optional and value in (None, False) else _check(inner, {} if value is True else value, source, f"{prefix}{name}.")
            continue
        try:
            out[name] = coerce(value, hints[name], fields[name].metadata.get("choices"))
        except ValueError as exc:
            raise FalconError(f"{source}: {prefix}{name}: {exc}") from None
    return out


def _construct(cls: type[T], values: dict, flags: dict[str, str], prefix: str = "", base: Any = None) -> T:
    hints, kwargs = typing.get_type_hints(cls), {}
    for f in (f for f in dataclasses.fields(cls) if f.init):
        inner, _ = _optional(hints[f.name])
        value = values.get(f.name, _default(f, base))
        if value is dataclasses.MISSING:
            path = prefix + f.name
            raise FalconError(f"missing {flags.get(path, path)}: give it on the command line or as {path} in the --config file")
        if isinstance(value, dict) and dataclasses.is_dataclass(inner):
            nested = _default(f, base)
            value = _construct(inner, value, flags, f"{prefix}{f.name}.", nested if dataclasses.is_dataclass(nested) else None)
        kwargs[f.name] = value
    return cls(**kwargs)


def build(cls: type[T], data: dict | None = None, overrides: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None,
          source: str = "the config", flags: dict[str, str] | None = None) -> T:
    """`cls` from `defaults` (dotted path -> value; a Derived one -> None), then `data` (as read from YAML), then `overrides` (dotted paths)."""
    tree: dict = {}
    for path, value in (defaults or {}).items():
        _put(tree, path, None if isinstance(value, Derived) else value)
    _merge(tree, _check(cls, data or {}, source))
    given: dict = {}
    for path, value in (overrides or {}).items():
        _put(given, path, value)
    _merge(tree, _check(cls, given, "the command line"))
    return _construct(cls, tree, flags or {})


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML file's mapping; FalconError for a missing file, bad syntax (with its line) or a file that is no mapping."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FalconError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise FalconError(f"{p}{f' line {mark.line + 1}' if mark else ''}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(data, (dict, type(None))):
        raise FalconError(f"{p} must hold a mapping of field: value, got {type(data).__name__}")
    return data or {}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def dump_config(obj: Any) -> str:
    """A config dataclass as YAML text, fields in declaration order."""
    import yaml

    return yaml.safe_dump(_plain(dataclasses.asdict(obj)), sort_keys=False)


def save_config(obj: Any, path: str | os.PathLike) -> Path:
    """Write a resolved config as YAML, atomically; returns the path."""
    from falconlm.atomic import atomic_write_text

    return atomic_write_text(Path(path), dump_config(obj))


def load_config(cls: type[T], path: str | os.PathLike) -> T:
    """Read a config written by save_config (or any YAML file of its fields) back into `cls`."""
    return build(cls, load_yaml(path), source=str(path))
