"""``dfa config``: the resolved parameters, each with its source (method.md §13, ``dfa.config.profiles``).

``--format tree`` (default) prints a rich tree, one branch per params section as
lightning-hydra's ``print_config_tree`` does, each value followed by where it came from:
``default`` (params.yaml), ``study:<name>``, ``profile:<name>``, ``smoke`` or ``override``.
``--format yaml`` prints plain YAML, the sources as comments, that ``--params FILE`` reads
back to the same config (it carries no ``profile`` key: the profile's values are already in it).
"""
from __future__ import annotations

from typing import Any

import yaml
from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from dfa.config import Config
from dfa.config.profiles import provenance_of

STYLE = {"default": "dim", "override": "bold red", "smoke": "yellow"}  # profile:* cyan, study:* magenta


def _style(source: str) -> str:
    return STYLE.get(source, "cyan" if source.startswith("profile:") else "magenta")


def _scalar(value: Any) -> str:
    """A value as one line of flow-style YAML (``[1.0, 1.2]``, ``'a {}.'``, ``null``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, allow_unicode=True)
    return text.removesuffix("\n...\n").strip()


def _walk(d: dict, prefix: str = ""):
    """(depth, name, dotted key or None for a section, value) in the params file's order."""
    for k, v in d.items():
        if isinstance(v, dict):
            yield prefix.count("."), k, None, None
            yield from _walk(v, f"{prefix}{k}.")
        else:
            yield prefix.count("."), k, prefix + k, v


def as_yaml(cfg: Config) -> str:
    prov = provenance_of(cfg)
    lines = [f"# dfa config: profile {prov.profile or 'none'}; after each value, its source (dfa.config.profiles)"]
    for depth, name, key, value in _walk(cfg.to_dict()):
        pad = "  " * depth
        if key is None:
            lines.append(f"{pad}{name}:")
        else:
            lines.append(f"{pad}{name}: {_scalar(value)}  # {prov.sources.get(key, 'default')}")
    return "\n".join(lines) + "\n"


def as_tree(cfg: Config) -> Tree:
    prov = provenance_of(cfg)
    root = Tree(Text(f"CONFIG (profile: {prov.profile or 'none'})", style="bold"))
    branches = {0: root}
    top = None
    for depth, name, key, value in _walk(cfg.to_dict()):
        if key is None:
            branches[depth + 1] = branches[depth].add(Text(name, style="bold"))
            continue
        if depth == 0:  # top-level scalars (device, seed, ...) share one branch
            top = top or root.add(Text("(top level)", style="bold"))
            parent = top
        else:
            parent = branches[depth]
        source = prov.sources.get(key, "default")
        line = Text(f"{name}: {_scalar(value)}  ")
        line.append(source, style=_style(source))
        parent.add(line)
    return root


def config(cfg: Config, args) -> int:
    if args.format == "yaml":
        print(as_yaml(cfg), end="")
    else:
        Console(soft_wrap=True).print(as_tree(cfg))
    return 0
