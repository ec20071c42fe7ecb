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
    noise_draw: int = typer.Option(
        0, "--noise-draw",
        help="Image-noise realisation: the same study with independent noise (0: the seed's own)."),
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
                           noise_draw=noise_draw, progress=report)
    except RsaError as exc:
        if bar.live.is_started:
            bar.stop()
        fail(exc)
    bar.stop()
    typer.echo(f"Wrote phantom study to {path} (manifest study.toml, ground truth truth.json).")


def _progress_bar():
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description:<24}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                    transient=True)


def _analyse(manifest, out, *, workers: int, serial: bool, scheduler: str | None,
             resume: bool, quiet: bool):
    """Run rsa.pipeline.analyse_study with a progress bar; RsaError → exit 2."""
    import warnings

    from rsa.errors import RsaWarning
    from rsa.pipeline import analyse_study

    executor = "serial" if serial else "process"
    if scheduler:
        try:
            from distributed import Client
        except ImportError:
            fail(RsaError("--scheduler needs dask.distributed (pip install distributed)."))
        executor = Client(scheduler).get_executor()
    bar = _progress_bar()
    task = bar.add_task("measuring exams", total=None)

    def report(stage: str, done: int, total: int) -> None:
        if not quiet and not bar.live.is_started:
            bar.start()
        bar.update(task, completed=done, total=total)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RsaWarning)  # flags are reported in the tables
            result = analyse_study(manifest, out, executor=executor, max_workers=workers,
                                   resume=resume, progress=report)
    except RsaError as exc:
        bar.stop()
        fail(exc)
    bar.stop()
    return result


def _fmt(x, nd: int = 3) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def _print_motions(result) -> None:
    from rich.console import Console
    from rich.table import Table

    from rsa.summary import motion_rows, precision_rows

    con = Console()
    table = Table(title=f"Study {result.study.id}: motion relative to reference segment "
                        "(mm, degrees; * beyond the double-exam precision limit)")
    for col in ("subject", "exam", "motion", "tx", "ty", "tz", "rx", "ry", "rz", "MTPM",
                "flags"):
        table.add_column(col, justify="right" if col not in ("subject", "exam", "motion")
                         else "left")
    for r in motion_rows(result):
        sig = set(r["significant"] or [])
        cells = [f"{_fmt(r[k])}{'*' if k in sig else ''}"
                 for k in ("tx", "ty", "tz", "rx", "ry", "rz", "mtpm")]
        table.add_row(r["subject"], r["exam"], r["motion"], *cells, str(r["flags"]))
    con.print(table)
    prec = precision_rows(result)
    if prec and prec[0]["component"] is None:
        con.print(f"Precision: {prec[0]['note']} (n = {prec[0]['n']}).")
    elif prec:
        ptab = Table(title="Precision from double exams (95 %: mean ± t·SD; lengths one-sided)")
        for col in ("motion", "n", "component", "bias", "SD", "limit"):
            ptab.add_column(col)
        for r in prec:
            ptab.add_row(r["motion"], str(r["n"]), r["component"], _fmt(r["bias"], 4),
                         _fmt(r["sd"], 4), _fmt(r["limit"], 4))
        con.print(ptab)
    for key, flags in result.flags.items():
        for f in flags:
            con.print(f"[yellow]flag[/yellow] {key}: {f}")


@app.command()
def analyze(
    manifest: str = typer.Argument(..., help="Study manifest (TOML)."),
    out: str = typer.Option(..., "--out", help="Output folder (results.sqlite, CSV, JSON)."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
    workers: int = typer.Option(2, "--workers", help="Worker processes for exams."),
    serial: bool = typer.Option(False, "--serial", help="Measure exams in this process."),
    scheduler: str = typer.Option(None, "--scheduler", help="dask.distributed scheduler."),
    resume: bool = typer.Option(True, "--resume/--no-resume",
                                help="Reuse stored exams whose inputs are unchanged."),
) -> None:
    """Analyse a study: beads, calibration, segment motion and precision.

    Exit code 0: analysis ran; 1: analysis ran and quality flags were raised; 2: bad input.
    """
    import json

    from rsa.summary import motion_rows, precision_rows

    result = _analyse(manifest, out, workers=workers, serial=serial, scheduler=scheduler,
                      resume=resume, quiet=json_out)
    if json_out:
        typer.echo(json.dumps({"motions": motion_rows(result),
                               "precision": precision_rows(result),
                               "flags": result.flags, "out": str(result.out_dir)}, indent=1))
    else:
        _print_motions(result)
        typer.echo(f"Results in {result.out_dir} ({result.seconds:.1f} s).")
    if any(result.flags.values()):
        raise typer.Exit(code=1)


@app.command()
def beads(
    manifest: str = typer.Argument(..., help="Study manifest (TOML); segments not needed yet."),
    out: str = typer.Option(..., "--out", help="Bead file to write (CSV: bead_id,x,y,z,...)."),
    subject: str = typer.Option(None, "--subject", help="Subject id (default: the first)."),
    exam: str = typer.Option(None, "--exam", help="Exam id (default: the reference exam)."),
    figure: str = typer.Option(None, "--figure", help="Also write an overlay PNG with ids."),
    group: bool = typer.Option(False, "--group", help="Also group the beads by rigid motion "
                               "across the subject's other exams (column `group`: G1, G2, ...)."),
    tol: float = typer.Option(None, "--tol", help="Rigidity tolerance of --group, mm "
                              "(default 0.15).", min=1e-6),
) -> None:
    """List the 3D beads of a reference exam with ids, to define segments by bead id.

    In the manifest, a segment then reads ``definition = "beads"``, ``bead_file = "<out>"``,
    ``beads = ["P03", "P07", ...]``, or with ``--group`` ``group = "G1"`` (examples/README.md).
    """
    import warnings

    from rich.console import Console
    from rich.table import Table

    from rsa.beads import group_listing, list_beads, write_listing
    from rsa.errors import RsaWarning
    from rsa.io.manifest import load_manifest

    if tol is not None and not group:
        raise typer.BadParameter("--tol applies to --group only.", param_hint="--tol")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RsaWarning)
            study = load_manifest(manifest, segments_required=False)
            listing = list_beads(study, subject, exam)
            if group:
                listing, _ = group_listing(study, listing, tol_mm=tol)
            paths = write_listing(listing, out, figure)
    except RsaError as exc:
        fail(exc)
    table = Table(title=f"{listing.subject} {listing.exam.id}: 3D beads (cage frame, mm)")
    names = listing.group_names or ("",) * len(listing.ids)
    for col in ("id", "x", "y", "z", "CLE", "quality", *(("group",) if group else ())):
        table.add_column(col)
    m, o = listing.measurement, listing.order
    for i, p, c, q, g in zip(listing.ids, listing.xyz_mm, m.cle_mm[o], listing.candidate,
                             names, strict=True):
        table.add_row(i, *(f"{v:.2f}" for v in p), f"{c:.3f}", "candidate" if q else "bead",
                      *((g,) if group else ()))
    Console().print(table)
    typer.echo(f"Wrote {', '.join(str(x) for x in paths)}.")


@app.command()
def demo(
    out: str = typer.Option("rsa-demo", "--out", help="Folder for the study and results."),
    setup: str = typer.Option("uniplanar", "--setup", help="uniplanar or biplanar cage."),
    variant: str = typer.Option("implant", "--variant", help="implant or spine phantom."),
    seed: int = typer.Option(0, "--seed", help="Phantom seed."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Generate the bundled phantom study and analyse it; prints measured vs true motion."""
    import json
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from rsa.summary import truth_rows
    from rsa.synthetic import write_study

    study_dir = Path(out) / "study"
    if not json_out:
        typer.echo(f"Simulating the {setup} {variant} phantom study in {study_dir} ...")
    try:
        write_study(study_dir, setup=setup, seed=seed, variant=variant)
    except RsaError as exc:
        fail(exc)
    result = _analyse(study_dir / "study.toml", Path(out) / "results", workers=2, serial=False,
                      scheduler=None, resume=False, quiet=json_out)
    rows = truth_rows(result, study_dir / "truth.json")
    from rsa.report import build_report

    try:
        reports = build_report(result.out_dir, Path(out) / "report")
    except RsaError as exc:
        fail(exc)
    if json_out:
        typer.echo(json.dumps({"comparison": rows, "flags": result.flags,
                               "reports": [str(p) for p in reports]}, indent=1))
        return
    _print_motions(result)
    table = Table(title="Measured vs true motion (phantom ground truth)")
    for col in ("exam", "motion", "quantity", "measured", "true", "error"):
        table.add_column(col)
    for r in rows:
        for k, unit in (("tx", "mm"), ("ty", "mm"), ("tz", "mm"), ("rx", "°"), ("ry", "°"),
                        ("rz", "°"), ("mtpm", "mm")):
            table.add_row(r["exam"], r["motion"], f"{k} ({unit})", _fmt(r[k], 4),
                          _fmt(r[f"{k}_true"], 4), _fmt(r[f"{k}_error"], 4))
    Console().print(table)
    typer.echo(f"Study in {study_dir}, results in {result.out_dir} "
               f"({result.seconds:.1f} s analysis), reports: "
               f"{', '.join(str(p) for p in reports)}")


@app.command()
def report(
    results: str = typer.Argument(..., help="Results folder of `rsa analyze` (results.sqlite)."),
    out: str = typer.Option(..., "--out", help="Folder for the reports."),
    fmt: str = typer.Option("html,pdf", "--format", help="Comma-separated: html, pdf."),
    include_phi: bool = typer.Option(
        False, "--include-phi",
        help="Show patient name, ID and birth date (read now from the DICOM headers)."),
    subject: str = typer.Option(None, "--subject", help="Report only this subject."),
    overlays: str = typer.Option("key", "--overlays",
                                 help="Radiograph overlays: key (reference + last follow-up), "
                                      "all, none."),
) -> None:
    """Write interpretation-ready HTML/PDF reports (per subject and per study)."""
    from rsa.report import build_report

    formats = tuple(f.strip().lower() for f in fmt.split(",") if f.strip())
    try:
        paths = build_report(results, out, formats=formats, include_phi=include_phi,
                             subject=subject, overlays=overlays)
    except RsaError as exc:
        fail(exc)
    for p in paths:
        typer.echo(f"Wrote {p}")
