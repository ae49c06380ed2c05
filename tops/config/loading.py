"""YAML + `--set` overrides -> a validated TopsConfig, or one error line (exit code 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tops.config.base import _QUOTE_CHARS, quoted
from tops.config.root import TopsConfig
from tops.errors import UserError

MAX_CONFIG_BYTES = 1 << 20  # a config is a page of YAML, not a data set
_MAX_YAML_DEPTH = 50  # a config nests a few levels; deeper is an attack on the recursive composer


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without aliases, nested at most _MAX_YAML_DEPTH levels: `*name` could expand
    a few hundred bytes into gigabytes (an alias bomb), and nothing in a config needs them."""

    depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise yaml.constructor.ConstructorError(
                None, None, "YAML aliases (*name) are not allowed in a config", event.start_mark)
        if self.depth >= _MAX_YAML_DEPTH:
            raise yaml.constructor.ConstructorError(
                None, None, f"nested deeper than {_MAX_YAML_DEPTH} levels", event.start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def parse_yaml(text: str) -> Any:
    """YAML as configs are read: safe types only, no aliases."""
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    parsed = []
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"--set {quoted(item)}: expected KEY=VALUE, e.g. --set generate.n_samples=4")
        key, raw = item.split("=", 1)
        try:
            value = parse_yaml(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        parsed.append((key.strip(), value))
    return parsed


def format_validation_error(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]
                   if not str(p).startswith(("function-after", "constrained-", "list[", "int")))
    loc = loc if len(loc) <= _QUOTE_CHARS else loc[: _QUOTE_CHARS - 1] + "…"
    msg = err["msg"].removeprefix("Value error, ")
    extra = f" (got {quoted(err['input'])})" if err["type"] not in ("missing", "extra_forbidden",
                                                              "value_error") else ""
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    return f"config error in {source}: {loc}: {msg}{extra}" if loc else f"config error in {source}: {msg}"


def _parse_config_file(path: Path) -> Any:
    """The config file's YAML, or one UserError line: missing, not a file, too big, not UTF-8,
    not YAML (aliases included)."""
    if not path.exists():
        raise UserError(f"{path}: config file not found")
    if not path.is_file():
        raise UserError(f"{path}: not a file (a config is a YAML file)")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(f"{path}: config file over {MAX_CONFIG_BYTES >> 20} MiB")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return parse_yaml(text) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise UserError(f"{path}: not valid YAML ({first[:200]})") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TopsConfig:
    """YAML + dotted overrides -> validated TopsConfig, or one UserError line."""
    data: dict = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        data = _parse_config_file(path)
        if not isinstance(data, dict):
            raise UserError(f"{path}: the top level must be a mapping of sections")
    for key, value in parse_overrides(overrides):
        _set_dotted(data, key, value)
    try:
        return TopsConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, source)) from None


# How a stage is watched, not what it makes (tops/tracking.py): out of cache keys and records, so
# turning a tracker on reruns nothing.
_WATCH_ONLY = {"train": ("report_to", "logging_dir")}


def config_section(cfg: TopsConfig, *names: str) -> dict:
    """JSON-able slice of the config, used in manifests and cache keys."""
    dumped = cfg.model_dump(mode="json")
    for section, fields in _WATCH_ONLY.items():
        for name in fields:
            dumped[section].pop(name, None)
    return {name: dumped[name] for name in names}
