"""Built-in plugin: OpenOOD v1.5's benchmark protocols, read from the packaged YAML file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..hookspecs import hookimpl

PROTOCOL_FILE = Path(__file__).resolve().parents[1] / "protocols" / "openood_v1_5.yaml"


@hookimpl
def register_protocols(register: Callable[..., Any]) -> None:
    import yaml

    for name, protocol in yaml.safe_load(PROTOCOL_FILE.read_text()).items():
        description = f"OpenOOD v1.5 {protocol.get('description', name)}"
        register(name, {**protocol, "description": description})
