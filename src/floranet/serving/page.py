"""The one-page web UI served at ``/`` by :mod:`floranet.serving`.

Plain HTML, CSS and vanilla JavaScript, all inline: nothing is fetched from
anywhere but the server itself (``/health``, ``/classes``, ``/predict``). When the server needs an API key,
the page takes it from its link's fragment (``/#key=...``, which browsers never send) or asks for it, keeps it
for the tab only (``sessionStorage``) and sends it as ``Authorization: Bearer``. The
Content-Security-Policy in :data:`HEADERS` enforces that in the browser: the
inline script and style are allowed by their SHA-256 hashes, connections only
to the page's own origin, images only from it or from ``blob:``/``data:``.
Server-provided text (class names, file names, errors, the model version) is only ever set with
``textContent``, never parsed as HTML, and shown through :data:`SHOWN`: control and bidi characters spelled out
(``\\u202e``) as :func:`floranet.utils.text.printable` spells them in the CLI's output and ``report.html`` (the JSON
keeps names as they are). The drop zone is a button to assistive technology (``role``), named by
its visible text (what a speech user reads out), and Enter or Space opens the file chooser.
"""

from __future__ import annotations

import base64
import hashlib

from floranet.utils.text import UNSAFE_CLASS

STYLE = """
:root { --accent: #2e7d32; --bar: #3f9844; --bg: #f6f7f4; --fg: #1d2521; --muted: #5f6b64; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       background: var(--bg); color: var(--fg); }
header { padding: 14px 24px; background: var(--accent); color: #fff; display: flex; align-items: baseline; gap: 16px; }
header h1 { margin: 0; font-size: 20px; }
header small { font-family: ui-monospace, monospace; font-size: 12px; min-width: 0; overflow-wrap: anywhere; }
main { max-width: 900px; margin: 24px auto; padding: 0 16px; display: grid; gap: 20px;
       grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); }
@media (max-width: 700px) { main { grid-template-columns: minmax(0, 1fr); } }
#drop { grid-column: 1 / -1; border: 2px dashed #9bb59d; border-radius: 12px; padding: 28px; text-align: center;
        background: #fff; cursor: pointer; transition: background .15s, border-color .15s; }
#drop.over { background: #e8f5e9; border-color: var(--accent); }
#drop input { display: none; }
#drop strong { color: var(--accent); }
.card { background: #fff; border-radius: 12px; padding: 16px; box-shadow: 0 1px 3px rgba(0,0,0,.08);
        min-height: 120px; }
#preview { position: relative; text-align: center; }
#preview img { width: min(100%, 360px); height: auto; max-height: 360px; object-fit: contain; border-radius: 8px; }
#preview p { color: var(--muted); }
#preview #cam-note { color: #8a5a00; font-size: 14px; overflow-wrap: anywhere; }
h2 { font-size: 15px; margin: 0 0 12px; color: var(--muted); font-weight: 600; text-transform: uppercase;
     letter-spacing: .04em; }
#results { list-style: none; margin: 0; padding: 0; }
#results li { margin: 0 0 12px; }
.row { display: flex; justify-content: space-between; gap: 8px; font-weight: 600; }
.row .cls { min-width: 0; overflow-wrap: anywhere; }  /* a long name wraps; its percentage stays in the card */
.row .pct { flex: none; font-variant-numeric: tabular-nums; }
.track { height: 14px; background: #e7ece8; border-radius: 7px; overflow: hidden; margin-top: 4px; }
.fill { height: 100%; background: var(--bar); border-radius: 7px; width: 0; transition: width .3s ease-out; }
#results li:first-child .fill { background: var(--accent); }
#results.unknown .fill, #results.unknown li:first-child .fill { background: #737c77; }
#meta { color: var(--muted); font-size: 13px; margin-top: 10px; min-height: 1.4em; overflow-wrap: anywhere; }
#warn { color: #8a5a00; font-size: 14px; }
#key { grid-column: 1 / -1; background: #fff8e1; border-radius: 10px; padding: 12px 16px; }
#error { grid-column: 1 / -1; display: none; background: #fdecea; color: #8b1a10; border-radius: 10px;
         padding: 12px 16px; }
label.toggle { display: inline-flex; gap: 8px; align-items: center; margin-top: 12px; cursor: pointer;
               user-select: none; }
"""

# shown(text): text with the characters utils.text.printable escapes (UNSAFE_CLASS, the one list) escaped as it
# escapes them, \\xNN below 0x100 and \\uNNNN above: "abc\\u202egpj.exe", not "abcexe.jpg" reversed by the browser.
SHOWN = (
    """
  const unsafe = /"""
    + UNSAFE_CLASS
    + """/g;
  function shown(text) {
    return String(text).replace(unsafe, (c) => {
      const code = c.charCodeAt(0);
      return code < 0x100 ? "\\\\x" + code.toString(16).padStart(2, "0") : "\\\\u" + code.toString(16).padStart(4, "0");
    });
  }
"""
)

SCRIPT = (
    """
(function () {
  "use strict";
"""
    + SHOWN
    + """  const $ = (id) => document.getElementById(id);
  const drop = $("drop"), input = $("file"), photo = $("photo"), hint = $("hint"), results = $("results"),
        meta = $("meta"), errorBox = $("error"), camBox = $("gradcam"), warn = $("warn"), camNote = $("cam-note");
  let current = null;      // the File being shown
  let photoUrl = null;     // object URL of the photo
  let camUrl = null;       // data: URL of the Grad-CAM overlay for the current file
  let camWhy = "";         // the server's gradcam_note: why that overlay is one flat tint
  // The last answer was an error: no photo is shown (a file the server refuses is often one the browser cannot
  // draw either, and its preview was a broken-image icon).
  let refused = false;
  // The browser cannot draw the chosen file (TIFF in Chrome) though the server reads it: said, not a broken icon.
  let undrawable = false;
  let token = 0;           // ignores answers to superseded uploads
  // The API key, when the server needs one: from the link's fragment (#key=..., never sent to any server)
  // or typed in once; kept for this tab only.
  // Percent-decoding only: URLSearchParams would turn a base64 key's "+" into a space.
  const linked = /^#key=(.+)$/.exec(location.hash);
  let fromLink = null;
  if (linked) { try { fromLink = decodeURIComponent(linked[1]); } catch (e) { fromLink = linked[1]; } }
  if (fromLink) { sessionStorage.setItem("floranet-key", fromLink); history.replaceState(null, "", location.pathname); }
  // What the server accepts as a key; a header cannot carry other characters (fetch would throw before sending).
  const keyShape = /^[\x21-\x7e]{16,}$/;
  const stored = sessionStorage.getItem("floranet-key");
  if (stored && !keyShape.test(stored)) sessionStorage.removeItem("floranet-key");  // never a key the server takes
  const keyBox = $("key"), keyInput = $("key-input");
  function authHeaders() {
    const key = sessionStorage.getItem("floranet-key");
    return key ? { "Authorization": "Bearer " + key } : {};
  }
  keyBox.addEventListener("submit", (e) => {  // the button or Enter in the field
    e.preventDefault();
    const key = keyInput.value.trim();
    if (!keyShape.test(key)) {
      showError("An API key is at least 16 printable ASCII characters without spaces; check what was pasted.");
      return;
    }
    sessionStorage.setItem("floranet-key", key);
    keyBox.hidden = true;
    if (current) classify(current, camBox.checked);
  });

  fetch("health").then((r) => r.json()).then((h) => { $("version").textContent = "model " + shown(h.model_version); })
    .catch(() => {});

  function showError(message) {
    errorBox.textContent = shown(message);
    errorBox.style.display = message ? "block" : "none";
  }

  function showPhoto() {
    const url = camBox.checked && camUrl ? camUrl : photoUrl;
    const cannot = undrawable && url === photoUrl;
    const visible = Boolean(url) && !refused && !cannot;
    if (visible) photo.src = url; else photo.removeAttribute("src");
    photo.hidden = !visible;
    hint.hidden = visible;
    hint.textContent = refused ? "No answer for this photo (see the message above)."
      : cannot ? "This browser cannot show this file's format; the server read it (see the answer)."
      : "No photo yet.";
    photo.alt = camBox.checked && camUrl ? "photo with Grad-CAM heat map" : "uploaded photo";
    camNote.textContent = shown(camWhy);
    camNote.hidden = !(visible && camBox.checked && camUrl && camWhy);
  }

  function render(answer) {
    results.textContent = "";
    for (const item of answer.top_k) {
      const li = document.createElement("li");
      const row = document.createElement("div");
      row.className = "row";
      const name = document.createElement("span");
      name.className = "cls";
      name.textContent = shown(item["class"]);
      const pct = document.createElement("span");
      pct.className = "pct";
      pct.textContent = (100 * item.probability).toFixed(1) + "%";
      row.append(name, pct);
      const track = document.createElement("div");
      track.className = "track";
      const fill = document.createElement("div");
      fill.className = "fill";
      track.append(fill);
      li.append(row, track);
      results.append(li);
      requestAnimationFrame(() => { fill.style.width = (100 * item.probability).toFixed(1) + "%"; });
    }
    if (answer.unknown) {
      warn.textContent = "Unknown: this photo looks like none of the classes the model knows (out-of-distribution " +
        "score " + Number(answer.ood_score).toFixed(3) + "). The bars show the closest classes anyway.";
    } else {
      warn.textContent = answer.low_confidence ? "Low confidence: the model is unsure about this photo." : "";
    }
    results.classList.toggle("unknown", Boolean(answer.unknown));
    const t = answer.timing_ms || {};
    meta.textContent = shown(answer.file) + " \\u00b7 " + Math.round(t.total || 0) + " ms (decode " +
      (t.decode || 0).toFixed(1) + ", queue " + (t.queue || 0).toFixed(1) + ", inference " +
      (t.inference || 0).toFixed(1) + ")";
    if (answer.gradcam_png) {
      camUrl = "data:image/png;base64," + answer.gradcam_png;
      camWhy = answer.gradcam_note || "";
    }
    else if (answer.gradcam_error) showError(answer.gradcam_error);
    showPhoto();
  }

  async function classify(file, withCam) {
    const mine = ++token;
    showError("");
    meta.textContent = "Classifying\\u2026";
    const form = new FormData();
    form.append("file", file, file.name || "upload");
    form.append("filename", file.name || "upload");  // as it is: the header's "%22" may be a quote or itself
    try {
      const response = await fetch("predict" + (withCam ? "?gradcam=1" : ""),
                                   { method: "POST", body: form, headers: authHeaders() });
      let answer;
      try { answer = await response.json(); } catch (e) { answer = null; }
      if (typeof answer !== "object" || answer === null) answer = {};  // not JSON, or JSON but not an object
      if (mine !== token) return;
      if (response.status === 401) keyBox.hidden = false;
      if (!response.ok || !Array.isArray(answer.top_k)) {  // a proxy's page with 200 is no answer either
        results.textContent = "";
        meta.textContent = "";
        warn.textContent = "";
        showError(answer.error || ("HTTP " + response.status + (response.ok ? ": not an answer from floranet" : "")));
        refused = true;
        showPhoto();
        return;
      }
      refused = false;
      render(answer);
    } catch (e) {
      if (mine === token) { meta.textContent = ""; showError("The server could not be reached: " + e.message); }
    }
  }

  function choose(file) {
    if (!file) return;
    current = file;
    camUrl = null;
    camWhy = "";
    refused = false;  // shown while it is classified
    undrawable = false;
    if (photoUrl) URL.revokeObjectURL(photoUrl);
    photoUrl = URL.createObjectURL(file);
    showPhoto();
    classify(file, camBox.checked);
  }

  photo.addEventListener("error", () => {
    if (photoUrl && photo.getAttribute("src") === photoUrl) { undrawable = true; showPhoto(); }
  });
  input.addEventListener("change", () => choose(input.files[0]));
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); }
  });
  for (const kind of ["dragenter", "dragover"]) {
    drop.addEventListener(kind, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const kind of ["dragleave", "drop"]) {
    drop.addEventListener(kind, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => choose(e.dataTransfer.files[0]));
  document.addEventListener("dragover", (e) => e.preventDefault());
  document.addEventListener("drop", (e) => e.preventDefault());
  camBox.addEventListener("change", () => {
    if (camBox.checked && current && !camUrl) classify(current, true);
    else showPhoto();
  });
})();
"""
)

PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>floranet</title>
<link rel="icon" href="data:,">
<style>{STYLE}</style>
</head>
<body>
<header><h1>floranet</h1><small id="version"></small></header>
<main>
  <label id="drop" tabindex="0" role="button">
    <input id="file" type="file" accept="image/*">
    <strong>Drop a photo here</strong> or click to choose one
  </label>
  <div id="error" role="alert"></div>
  <form id="key" hidden><label>API key <input id="key-input" type="password" autocomplete="off"></label>
    <button id="key-save" type="submit">Use key</button></form>
  <section class="card" id="preview">
    <h2>Photo</h2>
    <p id="hint">No photo yet.</p>
    <img id="photo" hidden alt="">
    <p id="cam-note" hidden></p>
    <div><label class="toggle"><input id="gradcam" type="checkbox"> Show Grad-CAM (where the model looked)</label></div>
  </section>
  <section class="card">
    <h2>Top classes</h2>
    <ol id="results" aria-live="polite"></ol>
    <div id="warn" aria-live="polite"></div>
    <div id="meta"></div>
  </section>
</main>
<script>{SCRIPT}</script>
</body>
</html>
"""


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; script-src {_hash(SCRIPT)}; style-src {_hash(STYLE)}; "
        "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
