// sen's search page. Plain JavaScript, no dependencies. Every value from the server
// (camera names, paths, attributes) is inserted as text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "sen.apiKey";
let objectUrls = [];
let keyScope = null;
let detailId = null;
let detailBox = null;
let detailItem = null;

function key() {
  return sessionStorage.getItem(KEY) || "";
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const k = key();
  if (k) h["Authorization"] = "Bearer " + k;
  return h;
}

function say(text, isError) {
  const m = $("message");
  m.textContent = text;
  m.className = isError ? "error" : "";
}

// A clear sentence for each status an operator can act on.
function explain(status, body) {
  const detail = body && body.error && body.error.message ? " (" + body.error.message + ")" : "";
  switch (status) {
    case 401: return "An API key is needed, or this one is not known: enter one under \"API key\"." + detail;
    case 403: return "This key may not do that (it is a read key)." + detail;
    case 429: return "The server is busy; try again in a moment." + detail;
    case 503: return "The server is not ready (starting, or shutting down)." + detail;
    case 504: return "The request took too long." + detail;
    default: return "Error " + status + detail;
  }
}

async function api(path, options) {
  const r = await fetch(path, Object.assign({}, options || {}, { headers: headers(options && options.headers) }));
  let body = null;
  const ct = r.headers.get("content-type") || "";
  if (ct.includes("application/json")) body = await r.json().catch(() => null);
  return { ok: r.ok, status: r.status, body: body, response: r };
}

// Local time with its UTC offset, e.g. "2026-11-29 15:03:22 (UTC+01:00)".
function offsetText(d) {
  const m = -d.getTimezoneOffset();
  const sign = m >= 0 ? "+" : "-";
  const a = Math.abs(m);
  return "UTC" + sign + String(Math.floor(a / 60)).padStart(2, "0") + ":" + String(a % 60).padStart(2, "0");
}

function localTime(iso) {
  const d = new Date(iso);
  if (isNaN(d)) return iso;
  const p = (n) => String(n).padStart(2, "0");
  return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " +
    p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds()) + " (" + offsetText(d) + ")";
}

// A datetime-local value (local time) as RFC 3339 with the browser's offset.
function rfc3339(local) {
  if (!local) return null;
  const d = new Date(local);
  return isNaN(d) ? null : d.toISOString();
}

// A result from a central node names its box; its crop is fetched through the node.
async function imageUrl(x, thumb) {
  const path = (x.box !== undefined ? encodeURIComponent(x.box) + "/" : "") + encodeURIComponent(x.id);
  const r = await fetch("/v1/images/" + path + (thumb ? "?size=thumb" : ""), { headers: headers() });
  if (!r.ok) return null;
  const url = URL.createObjectURL(await r.blob());
  objectUrls.push(url);
  return url;
}

function clearResults() {
  objectUrls.forEach((u) => URL.revokeObjectURL(u));
  objectUrls = [];
  $("results").replaceChildren();
}

async function refreshStatus() {
  const ready = $("status-ready");
  const r = await api("/v1/stats").catch(() => null);
  if (!r) {
    ready.textContent = "unreachable";
    ready.className = "pill bad";
    return;
  }
  if (!r.ok) {
    ready.textContent = r.status === 503 ? "not ready" : "status: " + r.status;
    ready.className = "pill bad";
    if (r.status === 401 || r.status === 403) say(explain(r.status, r.body), true);
    return;
  }
  const s = r.body;
  keyScope = s.key_scope || null;
  ready.textContent = s.ready ? "ready" : "not ready";
  ready.className = s.ready ? "pill ok" : "pill bad";
  $("status-rows").textContent = s.rows + " rows";
  // A central node cannot group by track yet (SPEC §12): the box is unticked there.
  const group = $("group");
  if (s.backend !== undefined && !group.disabled) {
    group.checked = false;
    group.disabled = true;
    $("group-hint").textContent = "(not on a central node)";
  }
  $("status-model").textContent = s.provider + ", " + s.bundle.precision;
  const list = $("status-cameras");
  list.replaceChildren();
  const select = $("cameras");
  const chosen = new Set(Array.from(select.selectedOptions).map((o) => o.value));
  select.replaceChildren();
  for (const c of s.cameras) {
    const li = document.createElement("li");
    li.textContent = c.camera + ": " + c.rows + " rows, last ingest " + (c.last_ingest ? localTime(c.last_ingest) : "-");
    list.appendChild(li);
    const o = document.createElement("option");
    o.value = c.camera;
    o.textContent = c.camera;
    o.selected = chosen.has(c.camera);
    select.appendChild(o);
  }
}

async function run(body) {
  clearResults();
  say("Searching…", false);
  $("latency").textContent = "";
  const t = performance.now();
  const r = await api("/v1/search", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  }).catch(() => null);
  if (!r) return say("The server cannot be reached.", true);
  if (!r.ok) return say(explain(r.status, r.body), true);
  const res = r.body.results;
  $("latency").textContent = "Server " + r.body.took_ms.toFixed(1) + " ms, page " + (performance.now() - t).toFixed(0) + " ms";
  if (res.length === 0) return say("No results: nothing matches these filters.", false);
  const like = r.body.like_track ? " like track " + r.body.like_track.track + " (" + r.body.like_track.camera + ")"
    : (r.body.like !== null && r.body.like !== undefined ? " like row " + r.body.like : "");
  say(res.length + (r.body.group ? " tracks and rows" : " results") + like, false);
  const ol = $("results");
  for (const x of res) {
    const li = document.createElement("li");
    li.dataset.id = String(x.id);
    const b = document.createElement("button");
    b.type = "button";
    b.className = "result";
    b.setAttribute("aria-label", "Result " + x.rank + ", camera " + x.camera + ", " + localTime(x.time));
    const img = document.createElement("img");
    img.alt = "Crop " + x.id + " from camera " + x.camera;
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = "#" + x.rank + "  " + x.score.toFixed(3);
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = x.camera + " · " + localTime(x.time);
    b.append(img, rank, meta);
    if (x.crops !== undefined) {
      // A track: how many crops it has and the time they span.
      const span = document.createElement("span");
      span.className = "track";
      span.textContent = x.crops + (x.crops === 1 ? " crop" : " crops") + " · " + spanText(x.first, x.last);
      b.appendChild(span);
      b.setAttribute("aria-label", b.getAttribute("aria-label") + ", a track of " + x.crops + " crops");
    }
    b.addEventListener("click", () => openDetail(x));
    li.appendChild(b);
    ol.appendChild(li);
    imageUrl(x, true).then((u) => { if (u) img.src = u; });
  }
}

/// "10:02:03–10:04:10" (one day) or two full local times.
function spanText(first, last) {
  const a = localTime(first), b = localTime(last);
  if (a === b) return a;
  const [da, ta] = a.split(" "), [db, tb] = b.split(" ");
  return da === db && tb !== undefined ? da + " " + ta + "–" + tb : a + " – " + b;
}

function search() {
  const text = $("q").value.trim();
  if (!text) return say("Describe the person to look for.", true);
  const body = { text: text, k: Number($("k").value) || 24 };
  const cams = Array.from($("cameras").selectedOptions).map((o) => o.value);
  if (cams.length) body.cameras = cams;
  const f = rfc3339($("from").value), t = rfc3339($("to").value);
  if (f) body.from = f;
  if (t) body.to = t;
  if ($("group").checked) body.group = "track";
  return run(body);
}

async function openDetail(x) {
  detailId = x.id;
  detailItem = x;
  detailBox = x.box === undefined ? null : x.box;
  $("detail-title").textContent = "Row " + x.id + " (#" + x.rank + ")";
  $("detail-message").textContent = "";
  const dl = $("detail-meta");
  dl.replaceChildren();
  const rows = [["Score", x.score.toFixed(4)], ["Camera", x.camera], ["Captured", localTime(x.time)],
    ["Path", x.path], ["Person id", x.pid === null ? "-" : String(x.pid)],
    ["Attributes", x.attrs === null ? "-" : JSON.stringify(x.attrs)]];
  if (detailBox !== null) rows.splice(1, 0, ["Box", detailBox]);
  if (x.track !== undefined) rows.push(["Track", x.track]);
  if (x.crops !== undefined) rows.push(["Crops", x.crops + ", " + spanText(x.first, x.last)]);
  if (x.bbox !== undefined) rows.push(["Position", x.bbox.map((v) => Math.round(v)).join(", ")]);
  if (x.source !== undefined) rows.push(["Source", x.source]);
  for (const [k, v] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    dl.append(dt, dd);
  }
  // Rows are deleted on their box, not through a central node.
  $("detail-delete").hidden = keyScope !== "write" || detailBox !== null;
  const img = $("detail-img");
  img.removeAttribute("src");
  img.alt = "Crop " + x.id + " from camera " + x.camera;
  $("detail").showModal();
  const u = await imageUrl(x, false);
  if (u && detailId === x.id) img.src = u;
}

async function deleteCurrent() {
  const id = detailId;
  if (id === null || !window.confirm("Delete row " + id + " for good?")) return;
  const r = await api("/v1/images/" + encodeURIComponent(id), { method: "DELETE" });
  if (!r.ok) return ($("detail-message").textContent = explain(r.status, r.body));
  $("detail").close();
  const li = document.querySelector('#results li[data-id="' + CSS.escape(String(id)) + '"]');
  if (li) li.remove();
  say("Row " + id + " deleted.", false);
  refreshStatus();
}

function init() {
  const off = offsetText(new Date());
  $("tz-from").textContent = "(local, " + off + ")";
  $("tz-to").textContent = "(local, " + off + ")";
  $("key").value = key();
  $("search-form").addEventListener("submit", (e) => { e.preventDefault(); search(); });
  $("key-save").addEventListener("click", () => {
    sessionStorage.setItem(KEY, $("key").value.trim());
    say("Key set for this tab.", false);
    refreshStatus();
  });
  $("key-clear").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    $("key").value = "";
    keyScope = null;
    say("Key forgotten.", false);
    refreshStatus();
  });
  $("detail-close").addEventListener("click", () => $("detail").close());
  $("detail-like").addEventListener("click", () => {
    const id = detailId, x = detailItem;
    $("detail").close();
    const k = Number($("k").value) || 24;
    // A track's "more like this" is the mean of its crops (like_track), grouped too.
    if (x && x.track !== undefined && detailBox === null) {
      run({ like_track: { camera: x.camera, track: x.track }, k: k, group: $("group").checked ? "track" : undefined });
      return;
    }
    const body = { like: id, k: k };
    if (detailBox !== null) body.like_box = detailBox;
    run(body);
  });
  $("detail-delete").addEventListener("click", deleteCurrent);
  refreshStatus();
  setInterval(refreshStatus, 15000);
}

document.addEventListener("DOMContentLoaded", init);
