"""The ``rsa`` command: a thin layer over the API (DESIGN §1).

Errors of type :class:`rsa.errors.RsaError` become a one-line message and exit code 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import sys

import typer

from rsa import __version__
from rsa.errors import RsaError

app = typer.Typer(
    name="rsa",
    help="Radiostereometric analysis: beads, calibration, triangulation, migration.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rsa {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """Radiostereometric analysis (RSA) toolkit."""
    _state["debug"] = debug


def fail(exc: RsaError) -> None:
    """Report `exc` as one line on stderr and exit 2 (or re-raise with --debug)."""
    if _state["debug"]:
        raise exc
    typer.echo(f"rsa: error: {exc}", err=True)
    raise typer.Exit(code=2)


def run() -> None:  # pragma: no cover - console entry used by `python -m rsa`
    try:
        app()
    except RsaError as exc:
        typer.echo(f"rsa: error: {exc}", err=True)
        sys.exit(2)
