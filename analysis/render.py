"""A TableResult as markdown (the terminal: what `make ablation-*` prints), LaTeX (booktabs) and HTML.

Every rendering carries the same four parts: the table in the paper's layout (ours as median [min, max] beside the
paper's number, and under it the settings that differ from the paper's recipe), the per-arm detail (spread,
interval, delta against the reference arm, the paper's delta), the verdict per paper claim with the comparisons
behind it, and the settings (scientific / nuisance / fixed, divergences, tuned values at the edge of their search
range) with the notes. Written by hand rather than through pandas' Styler,
so the analysis needs nothing beyond pandas, numpy and matplotlib.
"""

from __future__ import annotations

import html as html_lib
import math
from collections.abc import Iterable

import pandas as pd

from analysis.tables import Metric, TableResult

VERDICT_MARK = {"reproduced": "reproduced", "contradicted": "CONTRADICTED", "inconclusive": "inconclusive",
                "no signal": "no signal", "not tested": "not tested", "format-dependent": "format-dependent"}


def _num(m: Metric, x: float | None, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if signed and math.isinf(x):  # a difference against a diverged run (perplexity +inf)
        return "+inf" if x > 0 else "-inf"
    s = m.fmt(x)
    return f"+{s}" if signed and x > 0 else s


def _with_metric(t: TableResult, frame: pd.DataFrame):
    """Each row of `frame` as a dict, with the Metric its "metric" column names."""
    metric = {m.key: m for m in t.metrics}
    for r in frame.to_dict("records"):
        yield r, metric[r["metric"]]


def interval_text(m: Metric, estimate: float, lo: float, hi: float, level: float, method: str) -> str:
    """'+1.2 [+0.5, +1.9] (95.0%, paired t)': each interval with its own level and rule, or 'no interval' and why."""
    if method.startswith("none"):
        return f"{_num(m, estimate, True)} (no interval: {method.removeprefix('none: ')})"
    rule = "paired t" if method == "paired t" else "sign"
    return f"{_num(m, estimate, True)} [{_num(m, lo, True)}, {_num(m, hi, True)}] ({level:.1%}, {rule})"


def detail_frame(t: TableResult) -> pd.DataFrame:
    """Per arm x metric, as display strings."""
    rows = []
    for r, m in _with_metric(t, t.detail):
        delta = "reference" if r["arm"] == t.reference_arm else interval_text(
            m, r["delta"], r["delta_lo"], r["delta_hi"], r["delta_level"], r["delta_method"])
        level = r["range_level"]
        rows.append({
            "paper row": r["paper_row"] or "(no paper row)", "arm": r["arm"], "metric": m.header,
            "runs (diverged)": f"{r['n_runs']} ({r['n_diverged']})", "values": r["n_values"],
            "median": _num(m, r["median"]),
            "min–max (covers the median with)": f"{_num(m, r['min'])}–{_num(m, r['max'])}"
            + (f" ({level:.0%})" if level == level else ""),
            f"Δ vs {t.reference_arm}, paired [interval] (level, rule)": delta,
            "paper": _num(m, r["paper"]),
            "paper Δ": "reference" if r["arm"] == t.reference_arm and not math.isnan(r["paper"])
            else _num(m, r["paper_delta"], True),
        })
    return pd.DataFrame(rows)


def claims_frame(t: TableResult) -> pd.DataFrame:
    rows = []
    for r, m in _with_metric(t, t.claims):
        rows.append({
            "claim": r["claim"], "comparison (A vs B)": f"{r['comparison']} ({r['arm_a']} vs {r['arm_b']})",
            "test": "A better" if r["kind"] == "superior" else f"A not worse (margin {_num(m, r['margin'])})",
            "metric": m.header, "role": r["role"], "paired seeds": r["n"],
            "our gain of A [interval] (level, rule)": interval_text(m, r["gain"], r["gain_lo"], r["gain_hi"],
                                                                    r["level"], r["method"]),
            "paper gain": _num(m, r["paper_gain"], True),
            # a supporting row does not decide the claim: its verdict is shown in brackets
            "verdict": VERDICT_MARK[r["verdict"]] if r["role"] == "primary" else f"({r['verdict']})",
            "note": r["why"],
        })
    return pd.DataFrame(rows, columns=["claim", "comparison (A vs B)", "test", "metric", "role", "paired seeds",
                                       "our gain of A [interval] (level, rule)", "paper gain", "verdict", "note"])


def verdicts_frame(t: TableResult) -> pd.DataFrame:
    v = t.verdicts.copy()
    v["verdict"] = v["verdict"].map(VERDICT_MARK)
    return v.rename(columns={"text": "the paper's claim"})[["claim", "the paper's claim", "verdict", "why"]]


def _kv(d: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items()) if d else "none"


def settings_lines(t: TableResult) -> list[str]:
    s = t.settings
    sci = "; ".join(f"{arm}: {_kv(v)}" for arm, v in s["scientific"].items())
    space = s["nuisance_space"]
    if space:
        searched = "; ".join(f"{k} in [{v.get('low')}, {v.get('high')}]{' (log)' if v.get('log') else ''}"
                             for k, v in space.items())
        tuned = f"tuned per arm ({s['tune'].get('trials', '?')} trials): {searched}"
    else:
        tuned = "not tuned at this scale (the values below were set, not searched)"
    used = "; ".join(f"{arm}: {_kv(v)}" for arm, v in s["nuisance"].items())
    edges = s["at_edge"]
    if not space:
        edge = "no search, so no edge"
    elif edges:
        seeds: dict[tuple, list] = {}  # one line per arm and tuned value, with the seeds that used it
        for e in edges:
            seeds.setdefault((e["arm"], e["key"], e["best"], e["low"], e["high"]), []).append(str(e["seed"]))
        edge = "YES: " + "; ".join(f"{arm} {key}={best} (range [{low}, {high}]; seeds {', '.join(s)})"
                                   for (arm, key, best, low, high), s in seeds.items()) + " - widen the range, re-tune"
    else:
        edge = "none"
    ft = s["finetune"]
    return [
        f"Scientific (compared): {', '.join(s['scientific_keys'])} — {sci}",
        f"Nuisance: {tuned}; used: {used}",
        f"Fixed: {_kv(s['fixed'])}",
        f"Fine-tuning: tasks {', '.join(ft.get('tasks', [])) or 'none'}, protocol {ft.get('protocol', '?')}",
        f"Runs: {s['n_runs']} ({len(t.study.arms)} arms x {len(t.study.seeds)} seeds), diverged: {s['n_diverged']}"
        + (f" ({'; '.join(s['diverged'])})" if s["diverged"] else ""),
        f"Tuned values at the edge of its search range: {edge}",
    ]


def deviation_lines(t: TableResult) -> list[str]:
    """'optim.peak_lr: 0.001–0.002 (paper: 0.0001; training setup: peak LR 1e-4)': each setting of the runs that
    differs from the paper's recipe (analysis.tables.deviations); empty when the study runs it."""
    return [f"{d['key']}: {d['ours']} (paper: {d['paper']}; {d['source']})" for d in t.deviations]


def deviations_heading(t: TableResult) -> str:
    """What the block under the table is called: '<scale>-scale deviations from the paper's recipe'."""
    scale = t.settings["scale"] or "this"
    return f"{scale}-scale deviations from the paper's recipe" + ("" if t.deviations else ": none")


def _title(t: TableResult) -> tuple[str, str]:
    s = t.settings
    title = f"Table {t.number}: {t.title}"
    sub = (f"study {t.study.name} (scale {s['scale']}) · {t.study.dir} · "
           f"{s['experiment_file'] or 'no experiment file'} · paper: {t.paper.source}")
    return title, sub


# ---------------------------------------------------------------------------------------------------------------
# Markdown


def md_table(df: pd.DataFrame) -> str:
    def cell(x: object) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def markdown(t: TableResult) -> str:
    title, sub = _title(t)
    parts = [
        f"## {title}", sub, "",
        "Ours: median over seeds [min, max]; tokens, steps and epochs: what each arm trained (median over seeds); "
        "paper: the paper's number for that row.", "",
        md_table(t.wide), "",
        f"**{deviations_heading(t)}**" + (" (the study's factors aside; ours, then the paper's):" if t.deviations
                                           else ""),
        *[f"- {line}" for line in deviation_lines(t)], "",
        "### The paper's claims", "", md_table(verdicts_frame(t)), "",
    ]
    if len(t.claims):
        parts += ["Comparisons behind the verdicts (gain: how much better A is than B, paired by seed; for "
                  "perplexity, lower is better):", "", md_table(claims_frame(t)), ""]
    parts += ["### Per arm and metric", "", md_table(detail_frame(t)), "",
              "### Settings", "", *[f"- {line}" for line in settings_lines(t)], "",
              "### Notes", "", *[f"- {n}" for n in t.notes], ""]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# LaTeX

_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "Δ": r"$\Delta$", "–": "--",
          "—": "---", "·": r"$\cdot$", "≥": r"$\geq$"}


def tex(x: object) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in str(x))


def latex_table(df: pd.DataFrame, caption: str = "") -> str:
    # long text (claims, reasons) wraps in a paragraph column instead of running off the page
    cols = "".join("p{5cm}" if df[c].astype(str).str.len().max() > 40 else "l" for c in df.columns) if len(df) \
        else "l" * len(df.columns)
    lines = [r"\begin{table}[ht]", r"\centering", r"\small", rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
             " & ".join(tex(c) for c in df.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(tex(x) for x in row) + r" \\" for row in df.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(rf"\caption{{{tex(caption)}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines)


def _itemize(items: Iterable[str]) -> str:
    return "\n".join([r"\begin{itemize}", *[rf"\item {tex(i)}" for i in items], r"\end{itemize}"])


def latex(t: TableResult) -> str:
    """A fragment to \\input into a document that loads booktabs."""
    title, sub = _title(t)
    return "\n\n".join([
        f"% {title}\n% {sub}\n% needs \\usepackage{{booktabs}}",
        latex_table(t.wide, f"{title}. Ours: median over seeds [min, max]; paper: the paper's number."),
        tex(deviations_heading(t)) + ("\n" + _itemize(deviation_lines(t)) if t.deviations else ""),
        latex_table(verdicts_frame(t), "The paper's claims."),
        latex_table(detail_frame(t), "Per arm and metric."),
        _itemize(settings_lines(t)), _itemize(t.notes),
    ]) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# HTML

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:110em}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}td:has(+td){white-space:nowrap}img{max-width:48%;margin:.5em}"""


def html(t: TableResult, images: Iterable[str] = ()) -> str:
    """A standalone page; `images` are PNG file names beside it (the report folder)."""
    title, sub = _title(t)

    def table(df: pd.DataFrame) -> str:
        return df.to_html(index=False, escape=True, border=0)

    def items(lines: Iterable[str]) -> str:
        return "<ul>" + "".join(f"<li>{html_lib.escape(i)}</li>" for i in lines) + "</ul>"

    body = [
        f"<h1>{html_lib.escape(title)}</h1><p>{html_lib.escape(sub)}</p>",
        "<p>Ours: median over seeds [min, max]; paper: the paper's number for that row.</p>",
        table(t.wide), f"<p><b>{html_lib.escape(deviations_heading(t))}</b></p>",
        items(deviation_lines(t)) if t.deviations else "",
        "<h2>The paper's claims</h2>", table(verdicts_frame(t)), table(claims_frame(t)),
        "<h2>Per arm and metric</h2>", table(detail_frame(t)),
        "<h2>Settings</h2>", items(settings_lines(t)), "<h2>Notes</h2>", items(t.notes),
        *[f'<img src="{html_lib.escape(name)}" alt="{html_lib.escape(name)}">' for name in images],
    ]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html_lib.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")

