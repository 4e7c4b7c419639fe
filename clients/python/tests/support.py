"""Small helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import json
from typing import Any


def rsp(command: str, **body: Any) -> str:
    """A reply frame ``{command_RSP: body}`` as a fake server sends it."""
    return json.dumps({command + "_RSP": body})


def command_of(frame: str) -> str:
    """The command name of a request frame."""
    return next(iter(json.loads(frame)))


def params_of(frame: str) -> Any:
    """The parameter object of a request frame."""
    return next(iter(json.loads(frame).values()))
