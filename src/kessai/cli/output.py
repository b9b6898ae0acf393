"""What the CLI prints: answers on stdout, errors on stderr, each text exactly as written.

The texts carry values people chose: a merchant's name, an e-mail address, a URL, a message that
quotes an input. Read as rich markup, ``Shop [Shibuya]`` lost its bracketed part and ``[/x]``
ended the command with a traceback after its change had been committed, so nothing here is read
as markup or as emoji codes. Nothing is wrapped either: scripts and logs read each line whole.
"""

from __future__ import annotations

import json
from typing import Any, Final

import typer
from rich.console import Console
from rich.text import Text

from kessai.domain.errors import KessaiError

# Exit status of a command refused for a domain error (a bad value, an unknown merchant).
REFUSED_EXIT: Final = 2

_out: Final = Console(soft_wrap=True, markup=False, emoji=False, highlight=False)
_err: Final = Console(stderr=True, soft_wrap=True, markup=False, emoji=False, highlight=False)


def show(text: str) -> None:
    """Print ``text`` for people on stdout, as written."""
    _out.print(text)


def emit(data: Any, as_json: bool, text: str) -> None:
    """Print ``data`` as JSON (``--json``), or ``text`` for people."""
    if as_json:
        print(json.dumps(data, ensure_ascii=False))
    else:
        show(text)


def error(text: str) -> None:
    """Print ``error <text>`` on stderr, the first word in red where the terminal shows colour."""
    _err.print(Text.assemble(("error", "red"), " ", text))


def refused(exc: KessaiError, as_json: bool) -> typer.Exit:
    """Report a refusal (JSON on stdout with ``--json``, else a line on stderr); raise the result.

    Answers the ``typer.Exit`` (status 2) for the caller to raise, so that its traceback chain
    keeps the error that caused it.
    """
    if as_json:
        print(json.dumps({"error": {"code": exc.code, "message": exc.message, "field": exc.field}}))
    else:
        error(f"{exc.code}: {exc.message}")
    return typer.Exit(REFUSED_EXIT)
