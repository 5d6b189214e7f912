"""One self-contained HTML report: the tables and the charts (embedded as base64), nothing to fetch."""

from __future__ import annotations

import base64
import math
from pathlib import Path

from jinja2 import Environment, select_autoescape

from distill.evaluate.report import gate_cells, gate_description

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.degraded td { background: #fde2e2; } tr.improved td { background: #e3f6e3; } tr.few td { color: #888; }
.alarm { background: #fde2e2; border-left: 4px solid #c00; padding: 0.5em 1em; }
.ok { background: #e3f6e3; border-left: 4px solid #080; padding: 0.5em 1em; }
img { max-width: 100%; }
</style></head><body>
<h1>{{ title }}</h1>
{% if report.degraded %}<div class="alarm"><b>Degraded</b> against <code>{{ report.baseline }}</code> (gate interval wholly beyond the metric's tolerance on the worse side):<ul>
{% for d in report.degraded %}<li><code>{{ d.model }}</code> on {{ "guard set " if d.guard }}<code>{{ d.set }}</code> ({{ d.where }}, n={{ d.n }}), {{ d.metric }}: {{ f(d.delta) }} [{{ f(d.low) }}, {{ f(d.high) }}] at {{ "%.2f" | format(d.level * 100) }}%, tolerance {{ d.tolerance }}, adjusted p {{ "%.2g" | format(d.p_adjusted) }}</li>
{% endfor %}</ul></div>
{% elif report.gate.models %}<div class="ok">Nothing gated degraded against <code>{{ report.baseline }}</code>.</div>{% endif %}
<p>{{ gate_text }}</p>
<p>Every model: paired bootstrap, {{ (report.confidence * 100) | round | int }}% intervals, {{ report.bootstrap_samples }} resamples.</p>
{% for png in images %}<img alt="chart" src="data:image/png;base64,{{ png }}">{% endfor %}
{% for set_name, e in report.sets.items() %}
<h2>{{ set_name }}{{ " (guard set)" if e.guard }}</h2>
<table><tr><th>model</th>{% for m in e.metrics %}<th>{{ e.metric_info[m].label }}{{ "" if e.metric_info[m].higher_is_better else " (lower is better)" }}</th>{% endfor %}<th>n</th></tr>
{% for model, s in e.models.items() %}<tr><td>{{ model }}</td>{% for m in e.metrics %}<td>{{ f(s.metrics[m].score, False) }}</td>{% endfor %}<td>{{ s.n }}</td></tr>{% endfor %}
</table>
{% set rows = slice_rows(e) %}
{% if rows %}<table><tr><th>slice</th><th>n</th>{% for model in e.models %}<th>{{ model }}</th>{% endfor %}</tr>
{% for sl, n, cells in rows %}<tr><td>{{ sl }}</td><td>{{ n }}</td>{% for c in cells %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}
</table>{% endif %}
{% if e.vs_base %}<table><tr><th>model</th><th>metric</th><th>where</th><th>n</th><th>difference</th><th>{{ (report.confidence * 100) | round | int }}% interval</th><th>tolerance</th><th>gate interval (level)</th><th>adjusted p</th><th>MDE</th><th>verdict</th></tr>
{% for model, cmp in e.vs_base.items() %}{% for m in e.metrics %}{% set c = cmp.metrics[m] %}
{% for where, x in [("all", c.overall)] + (c.slices | dictsort) %}
<tr class="{{ 'degraded' if x.degraded else ('improved' if x.verdict == 'improved' else ('few' if x.verdict in ('too few items', 'reported only') else '')) }}"><td>{{ model }}</td><td>{{ e.metric_info[m].label }}</td><td>{{ where }}</td><td>{{ x.n }}</td><td>{{ f(x.delta) }}</td><td>[{{ f(x.low) }}, {{ f(x.high) }}]</td>{% for cell in gate_cells(x) %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}{% endfor %}{% endfor %}</table>{% endif %}
{% endfor %}
{% if report.fidelity %}<h2>Fidelity to the teacher</h2>
<p>On {{ report.fidelity.answers }}: top-1 agreement (the model's most likely next token is the teacher's) and {{ report.fidelity.divergence }} (K = {{ report.fidelity.k }}), per token.</p>
{% for set_name, e in report.fidelity.sets.items() %}<p><code>{{ set_name }}</code>: {{ e.items }} items{% if e.items_without_teacher_tokens %} ({{ e.items_without_teacher_tokens }} left out: no teacher tokens matching its answer){% endif %}</p>
<table><tr><th>model</th><th>top-1 agreement</th><th>KL per token</th><th>tokens</th></tr>
{% for model, m in e.models.items() %}<tr><td>{{ model }}</td><td>{{ f(m.top1_agreement, False) }}</td><td>{{ f(m.kl_per_token, False) }}</td><td>{{ m.tokens }}</td></tr>{% endfor %}
</table>{% endfor %}{% endif %}
</body></html>
"""


def _f(x, signed: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _slice_rows(entry: dict) -> list[tuple]:
    models = entry["models"].values()
    names = sorted({s for m in models for s in m["slices"]})
    return [(s, max(m["slices"].get(s, {}).get("n", 0) for m in models),
             [_f(m["slices"][s]["score"], False) if s in m["slices"] else "" for m in models]) for s in names]


def render_html(report: dict, images: list[Path], title: str) -> str:
    env = Environment(autoescape=select_autoescape(default=True))
    pngs = [base64.b64encode(Path(p).read_bytes()).decode() for p in images if Path(p).is_file()]
    return env.from_string(_TEMPLATE).render(report=report, images=pngs, title=title, f=_f, slice_rows=_slice_rows,
                                             gate_text=gate_description(report).replace("`", ""), gate_cells=gate_cells)
