"""One self-contained HTML report: the tables, the charts (embedded as base64) and the items where the models
disagree, filterable in the page; nothing to fetch."""

from __future__ import annotations

import base64
import math
from pathlib import Path

from jinja2 import Environment, select_autoescape

from distill.evaluate.answers import disagreements
from distill.evaluate.report import gate_cells, gate_description, heading_kind, set_kind

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
table.answers td, table.answers th { text-align: left; vertical-align: top; max-width: 22em; overflow-wrap: anywhere; }
td.right { background: #e3f6e3; } td.wrong { background: #fde2e2; }
details pre { white-space: pre-wrap; font-size: 0.85em; max-width: 40em; }
.filters { margin: 0.5em 0; } .filters label { margin-right: 1.5em; }
</style></head><body>
<h1>{{ title }}</h1>
{% if report.degraded %}<div class="alarm"><b>Degraded</b> against <code>{{ report.baseline }}</code> (gate interval wholly beyond the metric's tolerance on the worse side):<ul>
{% for d in report.degraded %}<li><code>{{ d.model }}</code> on {{ kind(d) ~ " " if d.guard }}<code>{{ d.set }}</code> ({{ d.where }}, n={{ d.n }}), {{ d.metric }}: {{ f(d.delta) }} [{{ f(d.low) }}, {{ f(d.high) }}] at {{ "%.2f" | format(d.level * 100) }}%, tolerance {{ d.tolerance }}, adjusted p {{ "%.2g" | format(d.p_adjusted) }}</li>
{% endfor %}</ul></div>
{% elif report.gate.models %}<div class="ok">Nothing gated degraded against <code>{{ report.baseline }}</code>.</div>{% endif %}
<p>{{ gate_text }}</p>
<p>Every model: paired bootstrap, {{ (report.confidence * 100) | round | int }}% intervals, {{ report.bootstrap_samples }} resamples.</p>
{% for png in images %}<img alt="chart" src="data:image/png;base64,{{ png }}">{% endfor %}
{% for set_name, e in report.sets.items() %}
<h2>{{ set_name }}{{ heading_kind(e) }}</h2>
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
{% set a = answers.get(set_name) %}{% if a %}
<section class="answers" data-set="{{ set_name }}">
<h3>Where the models disagree: {{ a.total }} of {{ a.n_items }} items{% if a.total > a.rows | length %} (the first {{ a.rows | length }} shown; every answer is in predictions.parquet){% endif %}</h3>
{% if a.rows %}<div class="filters">
{% if a.slices %}<label>slice <select class="f-slice"><option value="">all</option>{% for sl in a.slices %}<option>{{ sl }}</option>{% endfor %}</select></label>{% endif %}
{% if a.worse is not none %}<label><input type="checkbox" class="f-worse"> student wrong, teacher right ({{ a.worse }})</label>{% endif %}
<span class="count">{{ a.rows | length }} shown</span></div>
<table class="answers"><tr><th>slice</th><th>input</th><th>reference</th>{% for m in a.models %}<th>{{ m }}</th>{% endfor %}</tr>
{% for r in a.rows %}<tr data-slice="{{ r.slice if r.slice is not none else '' }}" data-worse="{{ 1 if r.worse else 0 }}"><td>{{ r.slice if r.slice is not none else "" }}</td>
<td>{{ r.input }}{% for x in r.answers if x %}{% if loop.first or x.prompt != loop.previtem.prompt %}<details><summary>prompt of {{ x.model }}</summary><pre>{{ x.prompt }}</pre></details>{% endif %}{% endfor %}</td>
<td>{{ r.reference }}</td>{% for x in r.answers %}{% if x %}<td class="{{ 'right' if x.right else ('wrong' if x.right is sameas false else '') }}">{{ x.text if x.text else "(empty)" }}{% if x.right is none %} ({{ f(x.score, False) }}){% endif %}</td>{% else %}<td></td>{% endif %}{% endfor %}</tr>
{% endfor %}</table>{% endif %}
</section>{% endif %}
{% endfor %}
{% if report.fidelity %}<h2>Fidelity to the teacher</h2>
<p>On {{ report.fidelity.answers }}: top-1 agreement (the model's most likely next token is the teacher's) and {{ report.fidelity.divergence }} (K = {{ report.fidelity.k }}), per token.</p>
{% for set_name, e in report.fidelity.sets.items() %}<p><code>{{ set_name }}</code>: {{ e.items }} items{% if e.items_without_teacher_tokens %} ({{ e.items_without_teacher_tokens }} left out: no teacher tokens matching its answer){% endif %}</p>
<table><tr><th>model</th><th>top-1 agreement</th><th>KL per token</th><th>tokens</th></tr>
{% for model, m in e.models.items() %}<tr><td>{{ model }}</td><td>{{ f(m.top1_agreement, False) }}</td><td>{{ f(m.kl_per_token, False) }}</td><td>{{ m.tokens }}</td></tr>{% endfor %}
</table>{% endfor %}{% endif %}
<script>
// Filters of the answer tables; the URL hash keeps them (#slice=irregular&worse=1), so a link opens filtered.
function applyFilters(sec) {
  const sl = sec.querySelector(".f-slice"), w = sec.querySelector(".f-worse");
  let n = 0;
  sec.querySelectorAll("tr[data-slice]").forEach(tr => {
    const show = (!sl || !sl.value || tr.dataset.slice === sl.value) && (!w || !w.checked || tr.dataset.worse === "1");
    tr.hidden = !show; n += show;
  });
  const count = sec.querySelector(".count"); if (count) count.textContent = n + " shown";
}
function saveHash(sec) {
  const p = new URLSearchParams(), sl = sec.querySelector(".f-slice"), w = sec.querySelector(".f-worse");
  if (sl && sl.value) p.set("slice", sl.value);
  if (w && w.checked) p.set("worse", "1");
  history.replaceState(null, "", "#" + p.toString());
}
const wanted = new URLSearchParams(location.hash.slice(1));
document.querySelectorAll("section.answers").forEach(sec => {
  const sl = sec.querySelector(".f-slice"), w = sec.querySelector(".f-worse");
  if (sl && [...sl.options].some(o => o.value === wanted.get("slice"))) sl.value = wanted.get("slice");
  if (w) w.checked = wanted.get("worse") === "1";
  for (const el of [sl, w]) if (el) el.addEventListener("change", () => { applyFilters(sec); saveHash(sec); });
  applyFilters(sec);
});
</script>
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


def render_html(report: dict, images: list[Path], title: str, predictions: list[dict] | None = None) -> str:
    env = Environment(autoescape=select_autoescape(default=True))
    pngs = [base64.b64encode(Path(p).read_bytes()).decode() for p in images if Path(p).is_file()]
    answers = disagreements(predictions, report) if predictions else {}
    return env.from_string(_TEMPLATE).render(report=report, images=pngs, title=title, f=_f, slice_rows=_slice_rows, answers=answers,
                                             gate_text=gate_description(report).replace("`", ""), gate_cells=gate_cells,
                                             kind=set_kind, heading_kind=heading_kind)
