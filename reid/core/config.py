"""Typed job configs: one frozen dataclass per job; every field is a CLI flag and a YAML key of the same name.

Precedence: dataclass defaults < ``--config file.yaml`` < explicit CLI flags. Unknown YAML keys and bad
values raise :class:`reid.core.errors.ConfigError` before any work starts. A field's help text comes from
``field(metadata={"help": ...})``; ``metadata={"aliases": ("--from",)}`` adds other flags for the same field
(for names that are Python keywords).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import types
import typing
from typing import Any, TypeVar

import yaml

from reid.core import console, io
from reid.core.errors import ConfigError

log = logging.getLogger(__name__)

C = TypeVar("C")


def _base_type(tp: Any) -> tuple[type, bool]:
    """(underlying scalar type, optional?) of a field annotation such as ``int | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
        raise TypeError(f"unsupported union {tp}")
    return tp, False


def _convert(name: str, value: Any, tp: Any) -> Any:
    base, optional = _base_type(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise ConfigError(f"{name}: a value is required (got none)")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if typing.get_origin(base) is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            (item_type, *_rest) = typing.get_args(base)
            return tuple(_convert(name, v, item_type) for v in items)
        if base is str:
            if isinstance(value, dict | list):
                raise ValueError(value)
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {value!r} is not a valid {getattr(base, '__name__', base)}") from None
    raise TypeError(f"unsupported config field type {tp} for {name}")


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        f.type = hints[f.name]
        out[f.name] = f
    return out


# Settings that no longer exist, per config class name: a file written with them (a sweep's best.yaml, a
# saved job config) still loads; the key is dropped with a warning instead of refusing the whole file.
RETIRED_KEYS: dict[str, frozenset[str]] = {"FinetuneConfig": frozenset({"bf16"}),
                                           "FinetuneSweepConfig": frozenset({"bf16"})}


def from_dict(cls: type[C], values: dict[str, Any], source: str = "config") -> C:
    """Build ``cls`` from a mapping, converting types; unknown keys raise ConfigError (a retired one,
    :data:`RETIRED_KEYS`, is dropped with a warning)."""
    fields = _fields(cls)
    retired = sorted(set(values) & RETIRED_KEYS.get(cls.__name__, frozenset()) - set(fields))
    if retired:
        log.warning("%s: ignoring %s: no longer a setting of %s", source, retired, cls.__name__)
        values = {k: v for k, v in values.items() if k not in retired}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    kwargs = {k: _convert(f"{source}: {k}", v, fields[k].type) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON/YAML-safe dict of a config (tuples become lists)."""
    out = {}
    for k, v in dataclasses.asdict(cfg).items():
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def load_yaml(path: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(io.read_text(path))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping of field: value")
    return data


def save_yaml(cfg: Any, path: str) -> None:
    io.write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _with_default(help_text: str, default: Any) -> str:
    """A flag's help with its default said once: a help that already says it in words ("(default: RAY_ADDRESS or
    local)", where the field's value is None) keeps its own; argparse's % escapes are doubled."""
    help_text = help_text.replace("%", "%%")
    if "(default" in help_text:
        return help_text
    return f"{help_text} (default: {str(default).replace('%', '%%')})".strip()


def build_parser(cls: type, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with ``--config`` plus one ``--field-name`` flag per dataclass field."""
    parser = argparse.ArgumentParser(description=description or (cls.__doc__ or "").strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None,
                        help="YAML file of field: value (same names as these flags, with _); flags override it")
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's, MLflow's and the workers' logs live (default: our lines and progress "
                             "bars only; the rest goes to the job's log file, named at the end)")
    for name, f in _fields(cls).items():
        base, _ = _base_type(f.type)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        flags = ["--" + name.replace("_", "-"), *f.metadata.get("aliases", ())]  # e.g. --from for a keyword
        help_text = _with_default(f.metadata.get("help", ""), default)
        if base is bool:
            parser.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            parser.add_argument(*flags, dest=name, default=None, metavar=name.upper(), help=help_text)
    return parser


def parse_config(cls: type[C], argv: list[str] | None = None, description: str | None = None) -> C:
    """Parse ``argv`` into ``cls``: defaults < ``--config`` YAML < explicit flags."""
    parser = build_parser(cls, description)
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    if args.config:
        values.update(load_yaml(args.config))
    for name in _fields(cls):
        value = getattr(args, name)
        if value is not None:
            values[name] = value
    cfg = absolute_paths(from_dict(cls, values, source=args.config or "command line"))
    console.log_for(cfg, cls.__name__.removesuffix("Config").lower())  # the job's log file (reid.core.console)
    return cfg


MLFLOW_URI_PREFIXES = ("models:/", "runs:/")  # a model in MLflow (reid.runtime.registry), not a path

PATH_FIELDS = ("comics_root", "instances", "crops", "sequences", "ssl_checkpoint", "storage", "model", "out",
               "ground_truth", "backbone_weights", "source", "labels", "db", "corrections")
"""Config fields that name files or folders: made absolute on the driver (:func:`absolute_paths`)."""


def absolute_paths(cfg: C) -> C:
    """``cfg`` with every local path field (:data:`PATH_FIELDS`) made absolute against this process's working
    directory; URIs (``s3://...``) and empty values are kept. Jobs call it on the driver, because Ray workers run
    in other working directories: a relative path would name another file there."""
    names = {f.name for f in dataclasses.fields(cfg)}  # type: ignore[arg-type]
    changes = {name: io.absolute(getattr(cfg, name)) for name in PATH_FIELDS
               if name in names and isinstance(getattr(cfg, name), str) and getattr(cfg, name)
               and not io.is_uri(getattr(cfg, name))
               and not getattr(cfg, name).startswith(MLFLOW_URI_PREFIXES)}
    changes = {k: v for k, v in changes.items() if v != getattr(cfg, k)}
    return dataclasses.replace(cfg, **changes) if changes else cfg  # type: ignore[type-var]


def replace(cfg: C, **changes: Any) -> C:
    """``dataclasses.replace`` with the same type conversion and validation as parsing."""
    values = to_dict(cfg)
    values.update(changes)
    return from_dict(type(cfg), values)


def strict_field(what: str):
    """The ``--strict`` flag of a job that reads row-level input: stop at the first bad row instead of
    recording it in the job's ``errors/`` table and going on."""
    return dataclasses.field(default=False, metadata={"help": f"stop at {what} (default: record it in errors/ "
                                                              "and go on)"})


def max_bad_fraction_field(what: str):
    """The ``--max-bad-row-fraction`` of a job: above it, the input is the wrong file and is refused."""
    return dataclasses.field(default=0.01, metadata={"help": f"refuse {what} when more than this fraction of "
                                                             "its rows are bad (0.01 = 1%%)"})


def check_bad_fraction(value: float) -> None:
    """The check of a :func:`max_bad_fraction_field` value, the same in every job."""
    check(0 <= value <= 1, f"max_bad_row_fraction must be in [0, 1], got {value}")


def check(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless ``condition``; for use in ``__post_init__``."""
    if not condition:
        raise ConfigError(message)
