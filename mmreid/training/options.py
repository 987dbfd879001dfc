"""Command-line options generated from the classes that define them.

Why: an option is defined once, where it is used: a model option in its config class (``__init__`` signature and
docstring), a loss option in :class:`~mmreid.training.losses.ReIDLoss`, an augmentation option in
:class:`~mmreid.data.augment.ReIDAugment`. :func:`options_dataclass` turns such a signature into a dataclass that
``HfArgumentParser`` reads, with the docstring entry as help and the signature's default, so ``train.py`` offers
each option without writing its default or its help a second time.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing

__all__ = ["docstring_args", "option_parameters", "options_dataclass", "parse_overrides"]

_ENTRY = re.compile(r"^(\s*)(\w+)(?: \(.*\))?:\s*(.*)$")


def docstring_args(cls: type) -> dict[str, str]:
    """The ``Args:`` entries of ``cls``'s docstring (HF ``name (`type`, ...):`` or Google ``name:`` style), by name,
    each description folded onto one line."""
    lines = (cls.__doc__ or "").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Args:") + 1
    except StopIteration:
        return {}
    entries: dict[str, list[str]] = {}
    indent = None
    current = None
    for line in lines[start:]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if indent is None:
            indent = depth
        if depth < indent:
            break  # the section ended
        match = _ENTRY.match(line)
        if depth == indent and match:
            current = match.group(2)
            entries[current] = [match.group(3)] if match.group(3) else []
        elif current is not None:
            entries[current].append(line.strip())
    return {name: " ".join(text).strip() for name, text in entries.items()}


def option_parameters(cls: type, exclude: typing.Iterable[str] = ()) -> list[inspect.Parameter]:
    """The keyword parameters ``cls.__init__`` itself declares (not its bases'), minus ``exclude``."""
    skipped = set(exclude) | {"self"}
    return [
        parameter
        for parameter in inspect.signature(cls.__init__).parameters.values()
        if parameter.name not in skipped and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    ]


def options_dataclass(cls: type, group: str, exclude: typing.Iterable[str] = (), optional: bool = False) -> type:
    """A dataclass with one field per option of ``cls`` (see :func:`option_parameters`), for ``HfArgumentParser``.

    ``optional=False``: each field has the signature's default. ``optional=True``: each field defaults to None,
    meaning "the class's own default" (quoted in the help), so only the options a run sets reach the class.
    """
    hints = typing.get_type_hints(cls.__init__)
    docs = docstring_args(cls)
    specs = []
    for parameter in option_parameters(cls, exclude):
        if parameter.name not in hints or parameter.name not in docs:
            raise TypeError(f"{cls.__name__}.{parameter.name} needs a type annotation and an Args: docstring entry "
                            "to become a command-line option")
        kind = hints[parameter.name]
        help_text = docs[parameter.name]
        if optional:
            kind = kind | None if type(None) not in typing.get_args(kind) else kind
            default = None
            help_text += f" ({cls.__name__} default: {parameter.default!r})"
        else:
            default = parameter.default
        specs.append((parameter.name, kind, dataclasses.field(default=default, metadata={"help": help_text})))
    option_class = dataclasses.make_dataclass(f"{cls.__name__}Options", specs)
    option_class._argument_group_name = group
    option_class.source = cls
    return option_class


def parse_overrides(text: str | dict | None, name: str = "--config-overrides") -> dict:
    """``"a=1,b.c=x"`` (or a mapping, from a YAML file) -> ``{"a": 1, "b": {"c": "x"}}``; a dotted key reaches into a
    sub-config. Values are read as int, float, true/false, none, or else kept as text."""
    if not text:
        return {}
    if isinstance(text, dict):
        pairs = list(text.items())
    else:
        pairs = []
        for item in filter(None, (part.strip() for part in str(text).split(","))):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"{name}: expected key=value pairs separated by commas, got {item!r}")
            pairs.append((key.strip(), _read_value(value.strip())))
    nested: dict = {}
    for key, value in pairs:
        *parents, leaf = str(key).split(".")
        target = nested
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ValueError(f"{name}: {key} sets a field inside {parent}, which is also given a value")
        if isinstance(value, dict):
            value = parse_overrides(value, name)
        target[leaf] = value
    return nested


def _read_value(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
