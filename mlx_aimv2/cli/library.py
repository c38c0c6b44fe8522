"""The photo library's commands: index (and --watch), search, dupes."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UserError
from .common import PICTURES, check_output, model_option, report_bad, shown


def index(
    paths: List[str] = typer.Argument(..., help="folders (recursive), image files or globs"),
    db: Path = typer.Option(..., "--db", help="the index file (SQLite), made if missing, e.g. lib.aimv2"),
    model: Optional[str] = model_option(
        "for a new index: a LiT model (text and image search) or any "
        "encoder (image search)  \\[default: apple/aimv2-large-patch14-224-lit, "
        "else demo-lit]"
    ),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, help="images per batch and per commit"),
    fast_decode: bool = typer.Option(
        False, "--fast-decode", help="decode large JPEGs at reduced size first (several times faster)"
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    watch: bool = typer.Option(
        False, "--watch", help="then keep following the folders: index what is added, changed or deleted"
    ),
):
    """Index a photo library for search: embeds new and changed images, drops deleted ones."""
    from ..index import Index

    t0 = time.perf_counter()

    def report(s):
        typer.echo(
            f"{shown(db)}: {s}  (model: {(lib.info['model'] or {}).get('ref', 'none yet')}; "
            f"{time.perf_counter() - t0:.1f} s)"
        )
        for p, why in s.missing:
            typer.echo(f"  {shown(p)}: {why}", err=True)
        report_bad(s.bad)

    with Index(db, model) as lib:
        try:
            if watch:
                return _watch(lib, paths, report, batch_size=batch_size, progress=progress, fast_decode=fast_decode)
            s = lib.add(paths, batch_size, progress, fast_decode=fast_decode)
        except KeyboardInterrupt:
            typer.echo(
                f"interrupted: the {len(lib)} images committed to {db} are kept; run the same command "
                f"again to continue",
                err=True,
            )
            raise typer.Exit(130) from None
        except BaseException:
            lib.discard_if_empty()  # a failed first run leaves no empty index behind
            raise
        report(s)
        if s.total == 0:
            raise typer.Exit(1)


def _watch(lib, paths, report, **options) -> None:
    """index --watch: until SIGTERM (a service manager's stop), which ends it between passes (exit 0),
    or Ctrl-C, which ends it at once - in a pass too, keeping every committed batch - and exits 130
    as every command does."""
    import threading

    from ..index.watch import watch

    stop = threading.Event()
    old = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    typer.echo("watching for changes; Ctrl-C to stop", err=True)
    try:
        watch(lib, paths, report, stop, **options)
    except KeyboardInterrupt:
        typer.echo(f"interrupted; stopped watching; {len(lib)} images in the index are kept", err=True)
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, old)
    typer.echo(f"stopped watching; {len(lib)} images in the index", err=True)


def search(
    db: Path = typer.Argument(..., help="an index made by `mlx-aimv2 index`"),
    query: Optional[List[str]] = typer.Argument(
        None,
        help="what to look for: words (a LiT index), an image file, or terms joined by + and - with "
        "weights, e.g. '2:golden retriever' + pool.jpg - fruit",
    ),
    image: Optional[List[str]] = typer.Option(None, "--image", help="find images like this one (repeatable)"),
    k: int = typer.Option(10, "-k", min=1, help="how many results"),
    grid: Optional[Path] = typer.Option(None, "--grid", help="save a contact sheet of the hits (.png/.jpg)"),
    as_json: bool = typer.Option(False, "--json", help="print the hits as JSON, for scripts"),
):
    """Search an index by text, by example images, or both with weights: paths and cosine scores, best first."""
    from ..index import Index
    from ..index.query import Term, parse

    if not query and not image:
        raise UserError("give a text query, or --image PATH")
    if grid is not None:
        check_output(grid, PICTURES, "--grid")
    terms = (parse(query) if query else []) + [Term(p, 1.0, True) for p in image or []]
    with Index(db, create=False, read_only=True) as lib:
        hits = lib.search(query=terms, k=k)
    if as_json:
        typer.echo(json.dumps([{"path": shown(h.path), "score": round(h.score, 6)} for h in hits], indent=1))
    else:
        for i, h in enumerate(hits, 1):
            typer.echo(f"{i:>3}  {h.score:.4f}  {shown(h.path)}")
    if grid is not None:
        from ..viz import contact_sheet

        contact_sheet(
            [h.path for h in hits], [f"{i}. {h.score:.3f}\n{Path(h.path).name}" for i, h in enumerate(hits, 1)], grid
        )
        typer.echo(f"saved {grid}", err=as_json)


def dupes(
    db: Path = typer.Argument(..., help="an index made by `mlx-aimv2 index`"),
    threshold: float = typer.Option(
        0.95, "--threshold", "-t", min=0.0, max=1.0, help="cosine similarity at which two images are near-duplicates"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the groups as JSON, for scripts"),
    grid: Optional[Path] = typer.Option(None, "--grid", help="save a contact sheet of the groups (.png/.jpg)"),
):
    """Group near-duplicate photos: re-encodes, resizes, small crops and edits of one photo."""
    from ..index import Index

    if grid is not None:
        check_output(grid, PICTURES, "--grid")
    with Index(db, create=False, read_only=True) as lib:
        groups = lib.dupes(threshold)
        total = len(lib)
    if as_json:
        out = [[{"path": shown(h.path), "score": round(h.score, 6)} for h in g] for g in groups]
        typer.echo(json.dumps(out, indent=1))
    else:
        for i, g in enumerate(groups, 1):
            typer.echo(f"group {i} ({len(g)} images)")
            for h in g:
                typer.echo(f"  {h.score:.4f}  {shown(h.path)}")
    extra = sum(len(g) - 1 for g in groups)
    typer.echo(f"{len(groups)} group(s) of near-duplicates among {total} images; {extra} could go", err=as_json)
    if grid is not None and groups:
        from ..viz import contact_sheet

        shown_groups = groups[:12]
        paths = [h.path for g in shown_groups for h in g[:6]]
        labels = [
            f"group {i}: {h.score:.3f}\n{Path(h.path).name}" for i, g in enumerate(shown_groups, 1) for h in g[:6]
        ]
        contact_sheet(paths, labels, grid)
        typer.echo(f"saved {grid}", err=as_json)
    elif grid is not None:
        typer.echo(f"no groups, so no contact sheet: {grid} was not written", err=True)


COMMANDS = [index, search, dupes]
