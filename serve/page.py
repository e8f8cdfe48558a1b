"""The search page at ``/``: one self-contained HTML file (its style and script inline; it
fetches only this server's API and thumbnails).

A text box; an image to drop on the page or choose; both together with a text weight;
results as a grid of thumbnails with score, title, category and caption; "more like this"
on every result; and the version that answered. The style is the build report's
(catalog_index/report_html.py): one look for the project's pages.
"""

from __future__ import annotations

from search.index import DEFAULT_TEXT_WEIGHT
from serve.thumbnails import THUMBNAIL_SIDE

STYLE = f"""
* {{ box-sizing: border-box; }}
[hidden] {{ display: none !important; }}
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 0; padding: 20px 28px; color: #222;
  background: #f6f7f9; }}
h1 {{ font-size: 22px; margin: 0 0 4px; }}
.sub {{ color: #555; margin: 0 0 16px; }}
.card {{ background: #fff; border: 1px solid #e2e4e8; border-radius: 8px; padding: 14px 16px;
  margin-bottom: 16px; }}
form {{ display: grid; grid-template-columns: minmax(0, 1fr) 220px; gap: 12px 16px;
  align-items: stretch; }}
@media (max-width: 700px) {{ form {{ grid-template-columns: minmax(0, 1fr); }} }}
.fields {{ display: flex; flex-direction: column; gap: 10px; }}
input[type=search] {{ font: inherit; font-size: 16px; padding: 8px 10px; width: 100%;
  border: 1px solid #c8ccd2; border-radius: 6px; }}
.row {{ display: flex; gap: 12px; align-items: center; flex-wrap: wrap; color: #444; }}
button {{ font: inherit; padding: 6px 14px; border-radius: 6px; border: 1px solid #1a73e8;
  background: #1a73e8; color: #fff; cursor: pointer; }}
button.plain {{ background: #fff; color: #1a73e8; }}
button:disabled {{ opacity: .5; cursor: default; }}
#drop {{ border: 2px dashed #c8ccd2; border-radius: 8px; display: flex; flex-direction: column;
  align-items: center; justify-content: center; text-align: center; color: #666;
  min-height: 140px; padding: 8px; cursor: pointer; background: #fafbfc; }}
#drop.over {{ border-color: #1a73e8; background: #eef4fd; }}
#drop img {{ width: 96px; height: 96px; object-fit: contain; image-rendering: pixelated; }}
#status {{ color: #555; margin: 0 0 10px; min-height: 1.4em; }}
#status.error {{ color: #b3261e; font-weight: 600; }}
.version {{ font-variant-numeric: tabular-nums; }}
#results {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr));
  gap: 14px; }}
figure.item {{ margin: 0; min-width: 0; font-size: 12px; background: #fff;
  border: 1px solid #e2e4e8; border-radius: 8px; padding: 8px; }}
figure.item img, .missing {{ display: block; width: 100%; max-width: {THUMBNAIL_SIDE * 2}px;
  aspect-ratio: 1; object-fit: contain; border: 1px solid #d8dbe0; border-radius: 4px;
  background: #fafafa; image-rendering: auto; }}
.missing {{ display: flex; align-items: center; justify-content: center; color: #888; }}
figcaption {{ margin-top: 4px; overflow-wrap: anywhere; }}
.head {{ display: flex; gap: 6px; align-items: baseline; }}
.score {{ font-weight: 700; font-variant-numeric: tabular-nums; }}
.id {{ color: #777; font-size: 11px; }}
.title {{ font-weight: 600; font-size: 13px; }}
.category {{ display: inline-block; padding: 0 6px; border-radius: 8px; background: #eceef1; }}
.caption {{ color: #333; }}
figure.item button {{ margin-top: 6px; padding: 2px 8px; font-size: 12px; }}
"""

SCRIPT = """
const $ = (id) => document.getElementById(id);
let chosen = null;  // the image file to search with

function show(status, isError) {
  $("status").textContent = status;
  $("status").className = isError ? "error" : "";
}

async function call(url, options) {
  const started = performance.now();
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = {detail: response.statusText}; }
  if (body && body.version) $("version").textContent = body.version;
  if (!response.ok) throw new Error((body && body.detail) || response.statusText);
  body.ms = performance.now() - started;
  return body;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function render(answer, what) {
  const grid = $("results");
  grid.replaceChildren();
  for (const hit of answer.results) {
    const m = hit.metadata || {};
    const figure = el("figure", "item");
    figure.dataset.itemId = hit.item_id;
    figure.dataset.category = m.category || "";
    const img = el("img");
    img.src = hit.thumbnail; img.alt = m.title || hit.item_id; img.loading = "lazy";
    img.onerror = () => img.replaceWith(el("div", "missing", "no image"));
    figure.append(img);
    const caption = el("figcaption");
    const head = el("div", "head");
    head.append(el("span", "score", hit.score.toFixed(3)), el("span", "id", hit.item_id));
    caption.append(head);
    if (m.title) caption.append(el("div", "title", m.title));
    if (m.category) caption.append(el("div", "category", m.category));
    if (m.caption) caption.append(el("div", "caption", m.caption));
    const more = el("button", "plain more", "more like this");
    more.type = "button";
    more.onclick = () => similar(hit.item_id, m.title || hit.item_id);
    caption.append(more);
    figure.append(caption);
    grid.append(figure);
  }
  const count = answer.results.length;
  show(`${count} result${count === 1 ? "" : "s"} ${what} — answered by version ` +
       `${answer.version} in ${answer.took_ms.toFixed(1)} ms`);
  document.body.dataset.answered = (Number(document.body.dataset.answered || 0) + 1);
  document.body.dataset.query = answer.query.type;
}

async function search(event) {
  if (event) event.preventDefault();
  const text = $("text").value.trim();
  const k = $("k").value;
  if (!text && !chosen) { show("Type some words, or drop an image.", true); return; }
  show("Searching…");
  try {
    if (chosen) {
      const form = new FormData();
      form.append("image", chosen);
      if (text) form.append("text", text);
      form.append("k", k);
      form.append("text_weight", $("weight").value);
      render(await call("/v1/search/image", {method: "POST", body: form}),
             text ? `for the image and “${text}”` : "for the image");
    } else {
      const params = new URLSearchParams({text, k});
      render(await call(`/v1/search?${params}`), `for “${text}”`);
    }
  } catch (error) { fail(error); }
}

async function similar(itemId, title) {
  show("Searching…");
  try {
    const params = new URLSearchParams({item_id: itemId, k: $("k").value});
    render(await call(`/v1/similar?${params}`), `like ${title}`);
    window.scrollTo(0, 0);
  } catch (error) { fail(error); }
}

function fail(error) {
  $("results").replaceChildren();
  show(error.message, true);
  document.body.dataset.failed = (Number(document.body.dataset.failed || 0) + 1);
}

function choose(file) {
  if (!file) return;
  chosen = file;
  const preview = el("img");
  preview.src = URL.createObjectURL(file);
  preview.alt = file.name;
  $("drop").replaceChildren(preview, el("div", null, file.name));
  $("clear").disabled = false;
  $("weightRow").hidden = false;
  search();
}

function clearImage() {
  chosen = null;
  $("file").value = "";
  $("drop").replaceChildren(el("div", null, "Drop an image here, or click to choose one"));
  $("clear").disabled = true;
  $("weightRow").hidden = true;
}

window.addEventListener("DOMContentLoaded", async () => {
  $("form").addEventListener("submit", search);
  $("file").addEventListener("change", () => choose($("file").files[0]));
  $("clear").addEventListener("click", clearImage);
  const drop = $("drop");
  drop.addEventListener("click", () => $("file").click());
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    choose(e.dataTransfer.files[0]);
  });
  $("weight").addEventListener("input", () => { $("weightValue").textContent = $("weight").value; });
  try {
    const version = await call("/v1/version");
    $("version").textContent = version.version;
    $("items").textContent = version.items.toLocaleString("en");
    if (!version.image_queries) $("drop").title = "this version has no query model";
  } catch (error) { show(error.message, true); }
  document.body.dataset.ready = "1";
});
"""


def page_html() -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>catalog-index search</title>
<style>{STYLE}</style></head>
<body>
<h1>Catalog image search</h1>
<p class="sub">Version <b class="version" id="version">…</b> · <span id="items">…</span> items
 · <a href="/docs">API</a> · <a href="/metrics">metrics</a></p>
<section class="card">
<form id="form">
 <div class="fields">
  <input type="search" id="text" name="text" placeholder="Words: “ankle boot”, “red dress”…"
   maxlength="1000" autocomplete="off" autofocus>
  <div class="row">
   <button type="submit" id="go">Search</button>
   <label>results <select id="k"><option>12</option><option selected>24</option>
    <option>48</option><option>96</option></select></label>
   <button type="button" class="plain" id="clear" disabled>clear image</button>
  </div>
  <div class="row" id="weightRow" hidden>
   <label>text weight <input type="range" id="weight" min="0" max="1" step="0.05"
    value="{DEFAULT_TEXT_WEIGHT}"></label> <span id="weightValue">{DEFAULT_TEXT_WEIGHT}</span>
   <span>(with an image and words: how much the words count)</span>
  </div>
 </div>
 <div id="drop"><div>Drop an image here, or click to choose one</div></div>
 <input type="file" id="file" accept="image/*" hidden>
</form>
</section>
<p id="status"></p>
<div id="results"></div>
<script>{SCRIPT}</script>
</body></html>
"""
