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


@app.command()
def phantom(
    out_dir: str = typer.Argument(..., help="Directory to write the study into."),
    setup: str = typer.Option("uniplanar", "--setup", help="Cage set-up: uniplanar or biplanar."),
    variant: str = typer.Option(
        "implant", "--variant",
        help="implant (knee: tibial component vs tibia), spine (L4 vs L5), or a .toml definition."),
    seed: int = typer.Option(0, "--seed", help="Seed of everything; same seed, same files."),
    side_by_side: bool = typer.Option(
        False, "--side-by-side", help="One DICOM per exam holding both views (left A, right B)."),
    monochrome1: bool = typer.Option(False, "--monochrome1", help="Write MONOCHROME1 images."),
) -> None:
    """Simulate a phantom RSA study: DICOM radiographs, study.toml manifest and truth.json."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from rsa.synthetic.study import write_study

    bar = Progress(TextColumn("{task.description:<32}"), BarColumn(),
                   TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
    task = bar.add_task("phantom", total=None)

    def report(done: int, total: int, message: str) -> None:
        if done == 1:  # start on the first report: input errors print no empty bar
            bar.start()
        bar.update(task, completed=done, total=total, description=message)

    try:
        path = write_study(out_dir, setup=setup, seed=seed, variant=variant,
                           side_by_side=side_by_side,
                           photometric="MONOCHROME1" if monochrome1 else "MONOCHROME2",
                           progress=report)
    except RsaError as exc:
        if bar.live.is_started:
            bar.stop()
        fail(exc)
    bar.stop()
    typer.echo(f"Wrote phantom study to {path} (manifest study.toml, ground truth truth.json).")
