"""python -m analysis report PATH...   each study's table, plots and tidy CSV into <study>/report/; prints the markdown
python -m analysis tidy PATH [--csv F] the tidy frame (a row per run x metric) as CSV

PATH is a study folder (runs/<study>/, holding study.json) or a runs folder (every study under it). An incomplete
or unreadable study prints why on stderr (naming each missing run) and makes the exit code 2; the other studies are
still rendered.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.load import StudyError, find_studies, load_runs, load_study
from analysis.tables import make_table


def _studies(paths: list[str]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if (p / "study.json").is_file():
            out.append(p)
        else:
            found = find_studies(p)
            if not found:
                raise StudyError(f"{p}: neither a study folder (no study.json) nor a runs folder holding studies")
            out += found
    return out


def report(study_dir: Path, out: Path | None = None, quiet: bool = False) -> Path:
    """Render one study: table.md / .tex / .html, detail.csv, claims.csv, runs.csv (tidy) and the PNGs."""
    from analysis import plots, render  # matplotlib only when rendering

    study = load_study(study_dir)
    t = make_table(study)
    _ = study.curves  # every run's metrics.csv, read (and kept) now: one that cannot be read refuses before any file
    out = out or study_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    images = plots.plot_table(t, out)
    md = render.markdown(t)
    (out / "table.md").write_text(md)
    (out / "table.tex").write_text(render.latex(t))
    (out / "table.html").write_text(render.html(t, [p.name for p in images]))
    t.detail.to_csv(out / "detail.csv", index=False)
    t.claims.to_csv(out / "claims.csv", index=False)
    study.tidy.to_csv(out / "runs.csv", index=False)
    if not quiet:
        print(md)
        print(f"report: {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="render each study's table, plots and CSVs into <study>/report/")
    rep.add_argument("paths", nargs="+", help="study folders or runs folders")
    rep.add_argument("--quiet", action="store_true", help="do not print the markdown")
    tidy = sub.add_parser("tidy", help="the tidy frame (a row per run x metric) as CSV")
    tidy.add_argument("path", help="a study folder or a runs folder")
    tidy.add_argument("--csv", help="output file (default: stdout)")
    args = parser.parse_args(argv)

    try:
        if args.command == "tidy":
            frame = load_runs(args.path)
            frame.to_csv(args.csv or sys.stdout, index=False)
            return 0
        studies = _studies(args.paths)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    code = 0
    for study_dir in studies:
        try:
            report(study_dir, quiet=args.quiet)
        except StudyError as e:
            print(f"error: {e}", file=sys.stderr)
            code = 2
    return code


if __name__ == "__main__":
    sys.exit(main())
