"""Analysis: reads run folders back into the paper's tables (never imports training code).

    load.py      runs/<study>/ (study.json, grid.sqlite, run folders) -> a tidy DataFrame, a row per run x metric
    paper.py     the paper's Tables 1-4: the one place their numbers live, and what differs per table
    tables.py    make_table, for every paper table: medians, ranges, paired deltas, verdicts per claim
    render.py    markdown (terminal), LaTeX, HTML
    plots.py     learning curves, perplexity vs batch size, downstream bars (PNG)
    notebooks/   table.ipynb (its TABLE parameter, or $TABLE, picks the table) and an overview, on $RUNS_DIR
    __main__.py  `python -m analysis report runs/<study>` -> runs/<study>/report/

Everything here reads files only, so it runs on a laptop over results copied from a cluster.
"""
