"""report.html: one self-contained page a person can read at a glance.

Counts, timings, the quality gate, errors grouped by reason, and sample queries with their
top-5 neighbours as thumbnails (inlined as data URIs, so the page works wherever it is
opened, from a bucket too).
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from typing import List, Optional

THUMBNAIL_SIDE = 112


@dataclass
class SampleQuery:
    item_id: str
    caption: str
    thumbnail: Optional[str]  # data URI
    neighbours: list  # [(item_id, score, caption, thumbnail)]


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


def _e(value) -> str:
    return html.escape(str(value))


def _table(headers, rows) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(item_id, caption, thumbnail, score=None) -> str:
    picture = (f'<img src="{thumbnail}" alt="{_e(item_id)}">' if thumbnail
               else '<div class="missing">no image</div>')
    score_line = f"<b>{score:.3f}</b> " if score is not None else ""
    return (f'<figure>{picture}<figcaption>{score_line}{_e(item_id)}'
            f'<br><small>{_e(caption)}</small></figcaption></figure>')


def render(manifest: dict, error_groups: List[dict], samples: List[SampleQuery]) -> str:
    validation = manifest["validation"]
    status = "passed" if validation["passed"] else "failed"
    counts = manifest["counts"]
    problems = "".join(f"<li>{_e(p)}</li>" for p in validation["problems"])
    gate_rows = [[_e(c["check"]), _e(c["value"]), _e(c["threshold"]),
                  '<span class="ok">pass</span>' if c["passed"] else '<span class="bad">fail</span>']
                 for c in validation["gate"]]
    count_rows = [[_e(key), _e(counts[key])] for key in ("input", "indexed", "failed", "duplicate")]
    count_rows += [[f"failed in {_e(stage)}", _e(n)] for stage, n in counts["failed_by_stage"].items()]
    reuse = manifest.get("reuse") or {}
    source = (f"reused from version {reuse['from_version']}" if reuse.get("from_version")
              else f"reused (full build: {reuse.get('full_build_reason')})")
    count_rows += [[_e(label), _e(counts[key])] for key, label in (
        ("reused", source), ("embedded", "embedded"),
        ("added", "added since the previous version"),
        ("removed", "removed since the previous version"),
        ("changed", "changed since the previous version (image or metadata)"))
        if key in counts]
    error_rows = [[_e(g["stage"]), _e(g["error_type"]), _e(g["count"]),
                   "<br>".join(_e(m) for m in g["examples"])] for g in error_groups]
    timings = manifest["timings"]
    shards = manifest["index"]["shards"]
    shard_rows = [[_e(s["shard"]), _e(s["items"]), _e(s["n_trees"]), _e(s["search_k"]),
                   _e(s["recall_at_10"]), _e(f"{s['bytes']:,}")] for s in shards]
    sample_html = "".join(
        '<div class="query">' + _figure(q.item_id, q.caption, q.thumbnail) + '<div class="arrow">→</div>'
        + "".join(_figure(n[0], n[2], n[3], n[1]) for n in q.neighbours) + "</div>"
        for q in samples)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>catalog-image-index {_e(manifest['version_id'])}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }}
h1 {{ font-size: 20px; }} h2 {{ font-size: 16px; margin-top: 28px; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ddd; padding: 4px 8px; text-align: left; }}
.status-passed {{ color: #17692e; }} .status-failed {{ color: #b3261e; }}
.ok {{ color: #17692e; }} .bad {{ color: #b3261e; font-weight: bold; }}
.query {{ display: flex; align-items: flex-start; gap: 8px; margin-bottom: 16px; }}
figure {{ margin: 0; width: {THUMBNAIL_SIDE + 8}px; font-size: 11px; }}
figure img, .missing {{ width: {THUMBNAIL_SIDE}px; height: {THUMBNAIL_SIDE}px; object-fit: contain;
  border: 1px solid #ccc; background: #fafafa; }}
.query > figure:first-child img {{ border: 2px solid #1a73e8; }}
.arrow {{ font-size: 24px; padding-top: 40px; }}
</style></head>
<body>
<h1>Version {_e(manifest['version_id'])}: validation
  <span class="status-{status}">{status}</span></h1>
<p>Source {_e(manifest['source'])} · model {_e(manifest['model']['name'])}
  ({_e(manifest['model']['fingerprint'][:12])}, {_e(manifest['model']['embedding_dim'])}-d) ·
  {len(shards)} shards · built in {_e(timings['seconds'])} s (started {_e(timings['started_at'])})</p>
{f'<ul class="bad">{problems}</ul>' if problems else ''}
<h2>Counts</h2>{_table(['', 'items'], count_rows)}
<h2>Quality gate</h2>{_table(['check', 'value', 'threshold', ''], gate_rows)}
<h2>Shards</h2>{_table(['shard', 'items', 'trees', 'search_k', 'recall@10', 'bytes'], shard_rows)}
<h2>Errors by reason</h2>{_table(['stage', 'error', 'items', 'examples'], error_rows) if error_rows else '<p>None.</p>'}
<h2>Sample queries (top 5)</h2>{sample_html or '<p>No items.</p>'}
<script>
window.addEventListener("load", () => {{
  const images = Array.from(document.images);
  document.body.dataset.thumbnails = images.length;
  document.body.dataset.thumbnailsLoaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
}});
</script>
</body></html>
"""
