"""report.html: one self-contained page a person can read at a glance.

The verdict, the quality figures, counts, timings, the gate check by check, shards, errors
grouped by reason, and sample queries: each sample item and its top-5 neighbours as
thumbnails with their title, category and caption. Thumbnails are inlined as data URIs and
the page fetches nothing, so it works wherever it is opened, from a bucket too. The layout
is a responsive grid: it fills a wide window and folds on a narrow one.

Numbers have one style: counts with thousands separators, ratios with three decimals,
rates in percent, times and sizes with their unit.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
from dataclasses import dataclass
from typing import List, Optional

THUMBNAIL_SIDE = 160


@dataclass
class SampleItem:
    """One item of a sample query, as the page shows it; ``score`` is its cosine to the
    query item (None for the query item itself)."""
    item_id: str
    title: Optional[str]
    category: Optional[str]
    caption: Optional[str]
    caption_source: Optional[str]
    caption_confidence: Optional[float]
    thumbnail: Optional[str]  # data URI
    score: Optional[float] = None


@dataclass
class SampleQuery:
    query: SampleItem
    neighbours: List[SampleItem]


def thumbnail_data_uri(image_bytes: bytes) -> Optional[str]:
    """A small JPEG of an image file, as a data URI; None when it does not decode."""
    from PIL import Image, ImageOps

    try:
        image = ImageOps.exif_transpose(Image.open(io.BytesIO(image_bytes)))
        image.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        image = image.convert("RGB")
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=80)
    except Exception:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


# --- numbers: one style for the whole page -------------------------------------------------

def count(n) -> str:
    """12,345"""
    return f"{int(n):,}"


def ratio(x) -> str:
    """0.997 (recall, precision, cosine)"""
    return f"{float(x):.3f}"


def percent(x, signed: bool = False) -> str:
    """A rate as a percentage, 2.5% (or a change, +2.5%); a rate above 0 never reads 0.0%."""
    x = float(x)
    if signed:
        return f"{x:+.1%}"
    return "<0.1%" if 0 < x < 0.0005 else f"{x:.1%}"


def duration(seconds) -> str:
    """38.8 s, 4 min 05 s, 2 h 03 min"""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def size(n_bytes) -> str:
    """812 B, 585.2 KiB, 2.4 MiB, 1.1 GiB"""
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def moment(iso: str) -> str:
    """An ISO timestamp as 2026-12-02 16:35:33 UTC."""
    try:
        when = datetime.datetime.fromisoformat(iso)
    except (TypeError, ValueError):
        return str(iso)
    if when.tzinfo is not None:
        when = when.astimezone(datetime.timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if when.tzinfo is not None else "")


def plain(value) -> str:
    """A value of unknown meaning, in the page's style."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return count(value)
    if isinstance(value, float):
        return ratio(value)
    return str(value)


# --- the quality gate: each check's verdict from its value, threshold and passed ----------

GATE_CHECKS = {  # check -> (what it is, how its value and threshold read, how they compare)
    "ann_recall_at_10": ("ANN recall@10", ratio, "≥"),
    "failure_rate": ("failure rate", percent, "≤"),
    "indexed_change": ("indexed items vs the previous version",
                       lambda x: percent(x, signed=True), "≥"),
    "label_precision": ("change in label P@10", lambda x: f"{float(x):+.3f}", "≥"),
    "model_unchanged": ("same model as the previous version", plain, ""),
    "space_ranks": ("queries whose nearest stand out", percent, "≥"),
    "neighbours_kept": ("model-space neighbours the projection keeps", percent, "≥"),
    "index_space": ("index space changed since the previous version", plain, ""),
}


def check_title(check: dict) -> str:
    known = GATE_CHECKS.get(check["check"])
    return known[0] if known else check["check"].replace("_", " ")


def check_figure(check: dict, key: str) -> str:
    """A check's value or threshold (with how the value must compare to it) in the page's
    style."""
    _, style, compare = GATE_CHECKS.get(check["check"], (None, plain, ""))
    if check[key] is None:
        return "n/a"
    figure = style(check[key])
    return f"{compare} {figure}" if key == "threshold" and compare else figure


def verdict(check: dict) -> str:
    """The sentence the gate wrote for the check (transforms/validate.py): what it found,
    true for a pass as for a fail."""
    return check.get("message") or (f"{plain(check['value'])} against the threshold "
                                    f"{plain(check['threshold'])}: "
                                    f"{'passed' if check['passed'] else 'failed'}")


# --- HTML ------------------------------------------------------------------------------------

def _e(value) -> str:
    return html.escape(str(value))


def _table(headers, rows, classes="") -> str:
    """A table; its ``classes`` say (in STYLE) which columns are numbers, aligned right."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>"
                   for row in rows)
    thead = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""
    return f'<table class="{classes}">{thead}<tbody>{body}</tbody></table>'


def _card(title: str, body: str, span: int = 1) -> str:
    """A card of the grid, ``span`` columns wide (0: the whole row) where the window has
    room for that many."""
    css = {0: " wide", 1: "", 2: " span2"}[span]
    return f'<section class="card{css}"><h2>{_e(title)}</h2>{body}</section>'


def _figure_tile(label: str, value: str, detail: str, state: str = "") -> str:
    return (f'<div class="tile {state}"><div class="label">{_e(label)}</div>'
            f'<div class="value">{value}</div><div class="detail">{detail}</div></div>')


def caption_note(item: SampleItem) -> str:
    """Where a caption came from, only where that tells something: a caption learned from
    the image, or ImageNet labels, with how sure it is; the catalog's own text goes
    without a note."""
    if item.caption_source == "learned":
        return f"learned from the image, {ratio(item.caption_confidence or 0)}"
    if item.caption_source == "labels":
        return f"ImageNet labels, {ratio(item.caption_confidence or 0)}"
    return ""


def _sample_item(item: SampleItem, query_category: Optional[str]) -> str:
    picture = (f'<img src="{item.thumbnail}" alt="{_e(item.item_id)}">' if item.thumbnail
               else '<div class="missing">no image</div>')
    head = (f'<span class="score">{ratio(item.score)}</span>' if item.score is not None
            else '<span class="query-tag">query</span>')
    lines = [f'<div class="head">{head}<span class="id">{_e(item.item_id)}</span></div>']
    if item.title:
        lines.append(f'<div class="title">{_e(item.title)}</div>')
    if item.category:
        same = item.score is not None and query_category is not None and \
            item.category == query_category
        other = item.score is not None and query_category is not None and not same
        lines.append(f'<div class="category{" same" if same else ""}{" other" if other else ""}">'
                     f"{_e(item.category)}</div>")
    if item.caption:
        note = caption_note(item)
        lines.append(f'<div class="caption">{_e(item.caption)}'
                     + (f' <span class="note">({_e(note)})</span>' if note else "") + "</div>")
    css = "item query-item" if item.score is None else "item"
    return f'<figure class="{css}">{picture}<figcaption>{"".join(lines)}</figcaption></figure>'


def _caption_sources(samples: List[SampleQuery]) -> str:
    shown = [item for q in samples for item in (q.query, *q.neighbours)]
    sources = {}
    for item in shown:
        sources[item.caption_source] = sources.get(item.caption_source, 0) + 1
    words = {"catalog": "from the catalog's text", "learned": "learned from the image",
             "labels": "ImageNet labels and colors", None: "of unknown source"}
    parts = [f"{count(n)} {words.get(source, source)}"
             for source, n in sorted(sources.items(), key=lambda s: -s[1])]
    return f"Captions shown: {', '.join(parts)}." if parts else ""


def _quality_tiles(manifest: dict) -> str:
    quality, counts, gate = manifest["quality"], manifest["counts"], manifest["validation"]["gate"]
    thresholds = {check["check"]: check for check in gate}
    recall = quality.get("ann_recall_at_10")
    tiles = []
    if recall is not None:
        target = thresholds.get("ann_recall_at_10")
        tiles.append(_figure_tile(
            "ANN recall@10", ratio(recall),
            f"against exact search, {count(quality.get('recall_queries', 0))} queries"
            + (f"; target {ratio(target['threshold'])}" if target else ""),
            "" if not target else "pass" if target["passed"] else "fail"))
    if quality.get("label_p_at_10") is not None:
        tiles.append(_figure_tile(
            "label P@10", ratio(quality["label_p_at_10"]),
            f"share of the 10 nearest with the same <b>{_e(quality.get('label_column'))}</b>, "
            f"{count(quality.get('label_queries', 0))} queries"))
    else:
        tiles.append(_figure_tile("label P@10", "n/a",
                                  "the catalog has no label column (--label-column)"))
    failure = thresholds.get("failure_rate")
    tiles.append(_figure_tile(
        "failure rate", percent(quality.get("failure_rate", 0)),
        f"{count(counts['failed'])} of {count(counts['input'])} items"
        + (f"; at most {percent(failure['threshold'])}" if failure else ""),
        "" if not failure else "pass" if failure["passed"] else "fail"))
    if "indexed_change" in quality:
        tiles.append(_figure_tile(
            "indexed items", percent(quality["indexed_change"], signed=True),
            f"against version {_e(quality.get('previous_version'))}"))
    return f'<div class="tiles">{"".join(tiles)}</div>'


def _count_rows(manifest: dict) -> list:
    counts = manifest["counts"]
    rows = [[_e(key), count(counts[key])] for key in ("input", "indexed", "failed", "duplicate")]
    rows += [[f"failed in {_e(stage)}", count(n)] for stage, n in counts["failed_by_stage"].items()]
    reuse = manifest.get("reuse") or {}
    source = (f"reused from version {reuse['from_version']}" if reuse.get("from_version")
              else f"reused (full build: {reuse.get('full_build_reason')})")
    rows += [[_e(label), count(counts[key])] for key, label in (
        ("reused", source), ("embedded", "embedded"),
        ("added", "added since the previous version"),
        ("removed", "removed since the previous version"),
        ("changed", "changed since the previous version (image or metadata)"))
        if key in counts]
    return rows


def _timing_rows(manifest: dict) -> list:
    timings, indexed = manifest["timings"], manifest["counts"]["indexed"]
    seconds = float(timings["seconds"])
    rows = [["started", _e(moment(timings["started_at"]))]]
    if timings.get("validated_at"):
        rows.append(["validated", _e(moment(timings["validated_at"]))])
    rows.append(["build time", duration(seconds)])
    if seconds > 0:
        rows.append(["throughput", f"{indexed / seconds:,.1f} items/s"])
    return rows


def _shards(n: int) -> str:
    return f"{count(n)} shard{'' if n == 1 else 's'}"


def _build_rows(manifest: dict) -> list:
    model, index = manifest["model"], manifest["index"]
    rows = [["source", _e(manifest["source"])],
            ["model", f"{_e(model['name'])} <code>{_e(model['fingerprint'][:12])}</code>"
                      + (f" ({_e(model['runtime'])})" if model.get("runtime") else "")],
            ["vectors", f"{count(model['embedding_dim'])}-d"
                        + (f" → {count(index['dimension'])}-d projection"
                           if index.get("dimension") not in (None, model["embedding_dim"])
                           else "")],
            ["index", ", ".join(_e(part) for part in (
                f"{index.get('library', 'annoy')} {index.get('library_version', '')}".strip(),
                index.get("metric"), _shards(len(index["shards"]))) if part)]]
    text_index = manifest.get("text_index")
    if text_index:
        rows.append(["text index", f"{_e(text_index.get('library', ''))}, "
                                   f"{count(text_index.get('documents', 0))} documents"])
    return rows


def _shard_table(shards: list) -> str:
    rows = [[count(s["shard"]), count(s["items"]), count(s["n_trees"]), count(s["search_k"]),
             ratio(s["recall_at_10"]), size(s["bytes"])] for s in shards]
    if shards:
        rows.append(["<b>all</b>", f"<b>{count(sum(s['items'] for s in shards))}</b>", "", "",
                     "", f"<b>{size(sum(s['bytes'] for s in shards))}</b>"])
    return _table(["shard", "items", "trees", "search_k", "recall@10", "size"], rows,
                  classes="shards")


def _gate_table(gate: list) -> str:
    rows = [[f"{_e(check_title(c))}<br><code>{_e(c['check'])}</code>",
             _e(check_figure(c, "value")), _e(check_figure(c, "threshold")),
             '<span class="ok">pass</span>' if c["passed"] else '<span class="bad">fail</span>',
             _e(verdict(c))] for c in gate]
    return _table(["check", "value", "threshold", "", "verdict"], rows, classes="gate")


def _error_table(error_groups: List[dict]) -> str:
    if not error_groups:
        return "<p>None.</p>"
    rows = [[_e(g["stage"]), _e(g["error_type"]), count(g["count"]),
             "<br>".join(_e(m) for m in g["examples"])] for g in error_groups]
    return _table(["stage", "error", "items", "examples"], rows, classes="errors")


STYLE = f"""
* {{ box-sizing: border-box; }}
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 0; padding: 20px 28px; color: #222;
  background: #f6f7f9; }}
h1 {{ font-size: 22px; margin: 0 0 4px; }} h2 {{ font-size: 15px; margin: 0 0 10px; }}
.sub {{ color: #555; margin: 0 0 16px; }}
.badge {{ padding: 2px 10px; border-radius: 12px; color: #fff; font-size: 15px; }}
.badge.passed {{ background: #17692e; }} .badge.failed {{ background: #b3261e; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr));
  gap: 16px; align-items: start; }}
.card {{ background: #fff; border: 1px solid #e2e4e8; border-radius: 8px; padding: 14px 16px;
  min-width: 0; overflow-x: auto; }}
.wide {{ grid-column: 1 / -1; }}
@media (min-width: 700px) {{ .span2 {{ grid-column: span 2; }} }}
.problems {{ margin: 0; padding-left: 20px; color: #b3261e; font-weight: 600; }}
.tiles {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(190px, 1fr)); gap: 12px; }}
.tile {{ border: 1px solid #e2e4e8; border-radius: 6px; padding: 10px 12px; }}
.tile .label {{ color: #555; }} .tile .value {{ font-size: 28px; font-weight: 600; }}
.tile .detail {{ color: #555; font-size: 12px; }}
.tile.pass {{ border-left: 4px solid #17692e; }} .tile.fail {{ border-left: 4px solid #b3261e; }}
.tile.fail .value {{ color: #b3261e; }}
table {{ border-collapse: collapse; width: 100%; }}
td, th {{ border-bottom: 1px solid #eceef1; padding: 4px 8px; text-align: left;
  vertical-align: top; }}
th {{ color: #555; font-weight: 600; }}
.shards td, .shards th, .counts td:nth-child(2), .counts th:nth-child(2),
.gate td:nth-child(2), .gate td:nth-child(3), .gate th:nth-child(2), .gate th:nth-child(3),
.errors td:nth-child(3), .errors th:nth-child(3) {{ text-align: right;
  font-variant-numeric: tabular-nums; white-space: nowrap; }}
code {{ font-size: 11px; color: #666; }}
.ok {{ color: #17692e; font-weight: 600; }} .bad {{ color: #b3261e; font-weight: 700; }}
.errors td:last-child {{ font-size: 12px; color: #444; word-break: break-word; }}
.samples-note {{ color: #555; margin: 0 0 12px; }}
.query {{ display: grid; grid-template-columns: repeat(6, minmax(0, 1fr)); gap: 12px;
  padding: 12px 0; border-top: 1px solid #eceef1; }}
@media (max-width: 1000px) {{ .query {{ grid-template-columns: repeat(3, minmax(0, 1fr)); }} }}
@media (max-width: 560px) {{ .query {{ grid-template-columns: repeat(2, minmax(0, 1fr)); }} }}
figure.item {{ margin: 0; min-width: 0; font-size: 12px; }}
figure.item img, .missing {{ display: block; width: 100%; max-width: {THUMBNAIL_SIDE * 2}px;
  aspect-ratio: 1; object-fit: contain; border: 1px solid #d8dbe0; border-radius: 4px;
  background: #fafafa; }}
.missing {{ display: flex; align-items: center; justify-content: center; color: #888; }}
figure.query-item img {{ border: 3px solid #1a73e8; }}
figcaption {{ margin-top: 4px; overflow-wrap: anywhere; }}
.head {{ display: flex; gap: 6px; align-items: baseline; }}
.score {{ font-weight: 700; }} .query-tag {{ color: #1a73e8; font-weight: 700; }}
.id {{ color: #777; font-size: 11px; }}
.title {{ font-weight: 600; font-size: 13px; }}
.category {{ display: inline-block; padding: 0 6px; border-radius: 8px; background: #eceef1; }}
.category.same {{ background: #dcefe1; }} .category.other {{ background: #f8e0de; }}
.caption {{ color: #333; }} .note {{ color: #888; }}
"""

# Recorded on the page once it has loaded (read back by the browser test): how many images
# there are and how many decoded, the window's width and the width the samples fill, and the
# most cards the grid puts side by side in one row.
SCRIPT = """
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const data = document.body.dataset;
  data.thumbnails = images.length;
  data.thumbnailsLoaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  data.windowWidth = window.innerWidth;
  const query = document.querySelector(".query");
  data.samplesWidth = query ? Math.round(query.getBoundingClientRect().width) : 0;
  const rows = {};
  for (const card of document.querySelectorAll(".grid > .card")) {
    rows[card.offsetTop] = (rows[card.offsetTop] || 0) + 1;
  }
  data.cardsPerRow = Math.max(0, ...Object.values(rows));
});
"""


def render(manifest: dict, error_groups: List[dict], samples: List[SampleQuery]) -> str:
    validation = manifest["validation"]
    status = "passed" if validation["passed"] else "failed"
    shards = manifest["index"]["shards"]
    problems = "".join(f"<li>{_e(p)}</li>" for p in validation["problems"])
    sample_html = "".join(
        '<div class="query">' + _sample_item(q.query, q.query.category)
        + "".join(_sample_item(n, q.query.category) for n in q.neighbours) + "</div>"
        for q in samples)
    timings = manifest["timings"]
    cards = [
        _card("Why it failed", f'<ul class="problems">{problems}</ul>', span=0)
        if problems else "",
        _card("Quality", _quality_tiles(manifest), span=0),
        _card("Quality gate", _gate_table(validation["gate"]), span=2),
        _card("Errors by reason", _error_table(error_groups), span=2),
        _card("Counts", _table(["", "items"], _count_rows(manifest), classes="counts")),
        _card("Build and timings", _table(["", ""], _build_rows(manifest)
                                          + _timing_rows(manifest))),
        _card("Shards", _shard_table(shards), span=2),
        _card(f"Sample queries: {count(len(samples))} items and their top "
              f"{count(max((len(q.neighbours) for q in samples), default=0))}",
              (f'<p class="samples-note">{_e(_caption_sources(samples))} Scores are cosine '
               "similarities; a neighbour's category is green when it matches the query's."
               f"</p>{sample_html}") if samples else "<p>No items.</p>", span=0),
    ]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>catalog-image-index {_e(manifest['version_id'])}: {status}</title>
<style>{STYLE}</style></head>
<body>
<h1>Version {_e(manifest['version_id'])}: validation
  <span class="badge {status} status-{status}">{status}</span></h1>
<p class="sub">{count(manifest['counts']['indexed'])} items indexed in {_shards(len(shards))}
  from {_e(manifest['source'])} · built in {duration(timings['seconds'])},
  started {_e(moment(timings['started_at']))}</p>
<main class="grid">
{"".join(cards)}
</main>
<script>{SCRIPT}</script>
</body></html>
"""
