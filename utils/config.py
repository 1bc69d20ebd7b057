"""Typed configuration: dataclass sections built once from parsed flags, written beside a run as
readable JSON, and read back as flags (``--config FILE``).

Each part of the project declares its flags and, next to them, the frozen dataclass that holds
their values (``models.deeplabv2.NetworkConfig``, ``utils.lightning.HardwareConfig``, ...); a field
takes the flag of its name. A saved file goes back through the command line's own parser, so every
value in it is checked as if typed, and flags typed after it override it. Nothing in the file runs.
"""
import argparse
import dataclasses
import json
import os

from utils.cli import UserError
from utils.io import atomic_write_text


def build(cls, values):
    """An instance of the dataclass ``cls`` from ``values`` (a dict or an argparse ``Namespace``):
    each field takes the value of its name; a field whose type is a dataclass is built the same way
    from the same values."""
    values = vars(values) if isinstance(values, argparse.Namespace) else values
    kwargs = {}
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(field.type):
            kwargs[field.name] = build(field.type, values)
        elif field.name in values:
            kwargs[field.name] = values[field.name]
    return cls(**kwargs)


def flat(config):
    """``{field: value}`` of a configuration and its sections, one level (field names are unique)."""
    out = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        out.update(flat(value) if dataclasses.is_dataclass(value) else {field.name: value})
    return out


def _jsonable(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_config(path, config):
    """The configuration as readable JSON, one section per object, replaced in one step."""
    atomic_write_text(path, json.dumps(_jsonable(config), indent=2) + "\n")


MAX_CONFIG_BYTES = 1 << 20  # a run's config.json is a few KiB


def read_config_values(path):
    """``{flag dest: value}`` of a file :func:`write_config` wrote; a broken file is a user error."""
    if not os.path.isfile(path):
        raise UserError(f"--config: file not found: {path}")
    if os.path.getsize(path) > MAX_CONFIG_BYTES:
        raise UserError(f"--config: {os.path.getsize(path)} bytes is no configuration a run wrote (at most "
                        f"{MAX_CONFIG_BYTES}): {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise UserError(f"--config: not a JSON configuration ({type(err).__name__}): {path}") from None
    if not isinstance(data, dict):
        raise UserError(f"--config: not a configuration written by a run (no JSON object): {path}")
    values = {}

    def collect(section):
        for key, value in section.items():
            if isinstance(value, dict):
                collect(value)
            elif value is not None:  # unset (a default of None, or a section the stage lacks)
                values[key] = value

    collect(data)
    return values


def config_argv(parser, values, path, ignore=()):
    """The flags that say ``values`` to ``parser``: each value rendered as it would be typed, so that
    the parser checks it; a key the parser has no flag for is a user error naming it."""
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    unknown = sorted(k for k in values if k not in actions and k not in ignore)
    if unknown:
        raise UserError(f"--config {path}: settings this command has no flag for: {', '.join(unknown)}")
    argv = []
    for dest, value in values.items():
        if dest in ignore:
            continue
        action = actions[dest]
        flag = next(o for o in action.option_strings if o.startswith("--"))
        if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                raise UserError(f"--config {path}: {dest} must be true or false, got {value!r}")
            if isinstance(action, argparse.BooleanOptionalAction):
                argv.append(flag if value else "--no-" + flag[2:])
            elif value:  # store_true
                argv.append(flag)
        elif isinstance(value, (list, tuple)):
            separator = "x" if action.metavar and "x" in action.metavar else ","
            argv.append(f"{flag}={separator.join(str(v) for v in value)}")
        else:  # flag=value: a value that starts with "-" is not taken for a flag
            argv.append(f"{flag}={value}")
    return argv
