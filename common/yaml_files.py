"""Reading a YAML config file strictly: a size cap, UTF-8, no duplicate keys, few aliases.

Separate from the schemas (``common.config``) because it is about bytes and parsing, not meaning: every
problem is a ``ConfigError`` naming the file and, where YAML knows it, the line.
"""

from __future__ import annotations

from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A configuration file that does not match its schema (or is not a readable YAML mapping)."""


MAX_CONFIG_BYTES = 1 << 20
MAX_YAML_ALIASES = 64


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (``epsilon: 1, epsilon: 50`` must not silently mean 50)
    and more than a few aliases (a "billion laughs" document expands exponentially)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases = getattr(self, "_aliases", 0) + 1
            if self._aliases > MAX_YAML_ALIASES:
                raise yaml.composer.ComposerError(None, None, f"more than {MAX_YAML_ALIASES} aliases (*name)",
                                                  self.peek_event().start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first given on line {seen[key]})", key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; missing file, bad YAML, duplicate keys, non-UTF-8 bytes and non-mapping
    documents are ConfigErrors naming the file (and line)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file: {err.strerror or err}") from err
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {len(raw)} bytes; a config file is at most {MAX_CONFIG_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text (byte 0x{raw[err.start]:02x}); expected a "
                          f"YAML text file") from err
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: not valid YAML: {getattr(err, 'problem', err)}") from err
    if data is None:
        raise ConfigError(f"{path}: empty config file")
    return data
