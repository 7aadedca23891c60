"""Loading a run config: YAML file, then dotted ``key=value`` overrides, then validation.

Every problem a user can cause here becomes one :class:`ConfigError` listing each bad key with
the value seen and what is allowed, so the CLI can print it and exit 2 before any actor starts.
"""

from __future__ import annotations

import difflib
import json
import math
import textwrap
import typing
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from rlhf_dist.config.schema import RunConfig
from rlhf_dist.config.stages import StageConfig, validate_stage_config
from rlhf_dist.config.toy import toy_gold_goes
from rlhf_dist.config.validate import validate_config
from rlhf_dist.errors import UserError

DEFAULT_CONFIG_NAME = "tiny.yaml"


class ConfigError(UserError):
    """A config that cannot run: one line per problem, each naming the key path."""

    def __init__(self, problems: Sequence[str], source: str | None = None):
        self.problems = list(problems)
        head = f"invalid config{f' ({source})' if source else ''}:"
        super().__init__("\n".join([head, *(f"  - {p}" for p in self.problems)]))


def default_config_path() -> Path:
    """The embedded default run: ``rlhf_dist/defaults/tiny.yaml`` (``examples/tiny.yaml`` links to it)."""
    return Path(str(resources.files("rlhf_dist") / "defaults" / DEFAULT_CONFIG_NAME))


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), schema: type[BaseModel] = RunConfig):
    """Read ``path``, apply overrides, validate everything.

    Without a path a `RunConfig` starts from the embedded default run; other schemas (the
    supervised stages) start from their field defaults.
    """
    source = str(path) if path is not None else ("the embedded default" if schema is RunConfig else None)
    if path is not None and str(path).startswith("env:"):
        raw = _yaml_from_env(str(path)[4:])
    elif path is not None:
        raw = read_yaml(Path(path))
    else:
        raw = read_yaml(default_config_path()) if schema is RunConfig else {}
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(raw, key, value)
    if path is None and schema is RunConfig and toy_gold_goes(overrides):
        raw.setdefault("reward", {})["gold"] = None  # the toy's gold scores the toy's task: it goes with its reward
    try:
        config = schema.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_problems(exc.errors(), raw, schema), source) from None
    checks = {RunConfig: validate_config, StageConfig: validate_stage_config}
    problems = checks[schema](config)
    if problems:
        raise ConfigError(problems, source)
    return config


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in a YAML config file; a missing, binary, non-UTF-8, empty or malformed file, or one
    that gives a key twice, is a `ConfigError` naming the file, the line and the fix."""
    if not path.exists():
        raise ConfigError(
            [f"config file {str(path)!r} does not exist; pass an existing YAML file, or none for the default"]
        )
    if path.is_dir():
        raise ConfigError([f"config path {str(path)!r} is a directory; pass a YAML file"])
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"cannot read the config file {str(path)!r}: {exc.strerror}"]) from None
    return parse_yaml_text(_decode(data, str(path)), str(path))


def _decode(data: bytes, source: str) -> str:
    if b"\x00" in data[:8192]:
        raise ConfigError([f"{source} is a binary file, not YAML text; pass a YAML config file"])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            [f"{source} line {line}: not UTF-8 text (byte {data[exc.start]:#04x}); save the file as UTF-8"]
        ) from None


def parse_yaml_text(text: str, source: str) -> dict[str, Any]:
    """A config mapping from YAML text. An empty document is an error, not a silent default: it is
    most often a file saved before it was written (``{}`` asks for the schema defaults)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            _refuse_duplicate_keys(node, [], source, set())
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        if isinstance(exc, yaml.reader.ReaderError):  # a control character: it has a position, no mark
            where = f" at line {text[: exc.position].count(chr(10)) + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{source} is not valid YAML{where}: {problem}"]) from None
    if data is None:
        raise ConfigError([
            f"{source} is empty (no settings); write the settings that differ from the defaults "
            "(`rlhf-dist config show` prints a whole config to start from), or give no config file for "
            "the embedded default run"
        ])
    if not isinstance(data, dict):
        raise ConfigError([f"{source} must hold a mapping of sections (model:, rollout:, ...), got {type(data).__name__}"])
    return data


def _refuse_duplicate_keys(node: yaml.Node, path: list[str], source: str, seen: set[int]) -> None:
    """PyYAML keeps the last of two equal keys without a word; a config that sets ``lr`` twice is
    more likely a mistake than a wish, so name the key and both lines."""
    if id(node) in seen:  # an alias visits its anchor's node again
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = (key_node.tag, str(key_node.value)) if isinstance(key_node, yaml.ScalarNode) else None
            child = [*path, key[1] if key else "?"]
            if key is not None and key in first_line:
                raise ConfigError([
                    f"{source}: key {'.'.join(child)!r} is given twice, at lines {first_line[key]} and "
                    f"{key_node.start_mark.line + 1}; keep one"
                ])
            if key is not None:
                first_line[key] = key_node.start_mark.line + 1
            _refuse_duplicate_keys(value_node, child, source, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, [*path, str(i)], source, seen)


def _yaml_from_env(name: str) -> dict[str, Any]:
    """``env:NAME``: the config is the YAML text of environment variable NAME (how submitted jobs get it)."""
    import os

    if name not in os.environ:
        raise ConfigError([f"config env:{name}: environment variable {name} is not set"])
    return parse_yaml_text(os.environ[name], f"env:{name}")


def dump_config(config: RunConfig) -> str:
    """YAML that :func:`load_config` accepts back unchanged."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, default_flow_style=False)


DEFAULTS_HEADER = """\
# Every field of `{command}` at its schema default, each under its description.
# (The embedded default run differs: `rlhf-dist config show` prints that one.)
# load_config reads this file back to exactly these defaults.

"""


def dump_defaults(schema: type[BaseModel] = RunConfig, command: str = "rlhf-dist train") -> str:
    """``schema()``'s fields as YAML, each under a comment holding its description (and its choices).

    `rlhf-dist config show --defaults` prints it; :func:`load_config` reads it back to ``schema()``.
    """
    lines: list[str] = []
    _commented_fields(schema(), 0, lines)
    header = DEFAULTS_HEADER.format(command=command)
    if schema is not RunConfig:  # the stages have no embedded default run
        header = "".join(line for line in header.splitlines(keepends=True) if "embedded default" not in line)
    return header + "\n".join(lines) + "\n"


def _commented_fields(model: BaseModel, depth: int, lines: list[str]) -> None:
    indent = "  " * depth
    plain = model.model_dump(mode="json")
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if depth == 0 and isinstance(value, BaseModel):
            lines.append("")  # a blank line before each top-level section
        comment = textwrap.wrap(_field_comment(info), width=max(40, 98 - len(indent)), break_on_hyphens=False)
        lines.extend(f"{indent}# {line}" for line in comment)
        if isinstance(value, BaseModel):
            lines.append(f"{indent}{name}:")
            _commented_fields(value, depth + 1, lines)
        else:
            lines.append(f"{indent}{name}: {_flow_yaml(plain[name])}")
            off = _section_when_set(info.annotation) if value is None else None
            if off is not None:  # a null section (rollout.multi_turn): its fields, commented out
                block: list[str] = []
                _commented_fields(off, depth + 1, block)
                lines.append(f"{indent}# {name}, when set (these are its defaults):")
                lines.extend(f"{indent}# {line[len(indent):]}" for line in block)


def _section_when_set(annotation: Any) -> BaseModel | None:
    """The defaults of the one section a ``Section | None`` field may hold, where every field of it
    has a default; None for any other annotation."""
    members = [a for a in typing.get_args(annotation) if a is not type(None)]
    if len(members) != 1 or not (isinstance(members[0], type) and issubclass(members[0], BaseModel)):
        return None
    try:
        return members[0]()
    except ValueError:  # pydantic's ValidationError: a field without a default
        return None


def _field_comment(info: Any) -> str:
    text = info.description or ""
    choices = _choices(info.annotation)
    return f"{text} ({'|'.join(str(c) for c in choices)})" if choices else text


def _choices(annotation: Any) -> list[Any]:
    """The values a ``Literal[...]`` (or ``Literal[...] | None``) field takes; [] for other types."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    members = [a for a in typing.get_args(annotation) if a is not type(None)]
    if len(members) == 1 and typing.get_origin(members[0]) is typing.Literal:
        return list(typing.get_args(members[0]))
    return []


def _flow_yaml(value: Any) -> str:
    """One value as single-line YAML (flow style for lists and mappings)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, sort_keys=False)
    text = text.removesuffix("\n...\n").rstrip("\n")  # a bare scalar ends its document with "..."
    return text if "\n" not in text else json.dumps(value)  # JSON is YAML too, and stays on one line


# -- overrides -------------------------------------------------------------------------------------


def parse_override(item: str) -> tuple[str, Any]:
    """``"learner.optimizer.lr=1e-6"`` -> ``("learner.optimizer.lr", "1e-6")``; values are read as YAML."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError([f"override {item!r} is not of the form key=value (e.g. learner.num_workers=2)"])
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text  # let the schema decide what the string may be
    return key, value


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``tree[a][b][c] = value`` for ``key = "a.b.c"``; numeric parts index lists."""
    parts = key.split(".")
    node: Any = tree
    for depth, part in enumerate(parts[:-1]):
        node = _child(node, part, ".".join(parts[: depth + 1]))
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, key)] = value
    else:
        node[last] = value


def _child(node: Any, part: str, path: str) -> Any:
    if isinstance(node, list):
        return node[_list_index(node, part, path)]
    if not isinstance(node, dict):
        raise ConfigError([f"{path}: cannot set a key inside a {type(node).__name__} value"])
    if node.get(part) is None:
        node[part] = {}
    return node[part]


def _list_index(node: list[Any], part: str, path: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError([f"{path}: the list has {len(node)} items; use an index 0..{len(node) - 1}"])
    return int(part)


# -- error messages --------------------------------------------------------------------------------


def _problems(errors: list[dict[str, Any]], raw: dict[str, Any], root: type[BaseModel]) -> list[str]:
    """One line per bad key. A NaN in a union field (a rule arg: str | int | float | bool) fails every
    member; the "finite number" error says what is wrong, so the others are dropped."""
    finite = {err["loc"][:-1] for err in errors if err["type"] == "finite_number"}
    kept = [err for err in errors if err["type"] == "finite_number" or err["loc"][:-1] not in finite]
    return list(dict.fromkeys(_describe(err, raw, root) for err in kept))


def _describe(err: dict[str, Any], raw: dict[str, Any], root: type[BaseModel] = RunConfig) -> str:
    """One line for one pydantic error: the dotted key path, the value seen, what is allowed."""
    path, parent = _field_path(err["loc"], root, unknown_key=err["type"] == "extra_forbidden")
    dotted = ".".join(path) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{dotted}: unknown key{_did_you_mean(path[-1], parent, path[:-1], root)}"
    if err["type"] == "missing":
        return f"{dotted}: required key is missing"
    shown = _lookup(raw, path)
    if err["type"] == "finite_number":
        return f"{dotted}: got {shown!r}; NaN and inf are not allowed in a config, give a finite number"
    if isinstance(shown, bool) and err["type"] == "string_type":
        return (f"{dotted}: got the boolean {str(shown).lower()}: YAML reads yes/no/on/off/true/false unquoted as "
                f"booleans; quote the value to keep it a string, e.g. {path[-1]}: 'yes'")
    if dotted == "reward.components" and isinstance(shown, str):
        return (f"reward.components: got {shown!r}; it is a list of components, e.g. "
                f"reward.components=[{{type: python, path: '{shown}'}}]" if ":" in shown else
                f"reward.components: got {shown!r}; it is a list of components, e.g. "
                f"reward.components=[{{type: rule, name: {shown}}}]")
    return f"{dotted}: got {shown!r}; {_lowercase_first(err['msg'])}"


def _field_path(
    loc: tuple[Any, ...], root: type[BaseModel], unknown_key: bool
) -> tuple[list[str], type[BaseModel] | None]:
    """Turn pydantic's ``loc`` into a dotted key path, dropping its union-member labels.

    Also returns the model class that holds the last key (for did-you-mean suggestions).
    """
    model: type[BaseModel] | None = root
    path: list[str] = []
    for position, item in enumerate(loc):
        if isinstance(item, int):
            path.append(str(item))
        elif model is not None and item in model.model_fields:
            path.append(item)
            if position < len(loc) - 1:
                model = _find_model(model.model_fields[item].annotation)
        elif unknown_key and position == len(loc) - 1:
            path.append(str(item))
    return path, model


def _find_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _find_model(arg)
        if found is not None:
            return found
    return None


def _did_you_mean(key: str, parent: type[BaseModel] | None, prefix: list[str], root: type[BaseModel]) -> str:
    if parent is None:
        return ""
    siblings = list(parent.model_fields)
    everywhere = _all_paths(root)
    exact = [p for p in everywhere if p.rsplit(".", 1)[-1] == key]
    if exact:
        return f"; did you mean {' or '.join(repr(p) for p in exact)}?"
    close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {'.'.join([*prefix, close[0]])!r}?"
    leaves = sorted({p.rsplit(".", 1)[-1] for p in everywhere})
    for name in difflib.get_close_matches(key, leaves, n=1, cutoff=0.75):
        found = [p for p in everywhere if p.rsplit(".", 1)[-1] == name]
        return f"; did you mean {' or '.join(repr(p) for p in found)}?"
    return f"; allowed keys here: {', '.join(siblings)}"


def _all_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    paths = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        paths.append(path)
        sub = _find_model(info.annotation)
        if sub is not None:
            paths.extend(_all_paths(sub, f"{path}."))
    return paths


def _lookup(raw: Any, path: list[str]) -> Any:
    node = raw
    for part in path:
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _lowercase_first(msg: str) -> str:
    return msg[:1].lower() + msg[1:]
