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
// Whether the bundle has a score calibration (watches then take min_p, else min_score).
let calibrated = null;
let central = false;
let streamCtl = null;
let lastAlertId = null;
const MAX_CARDS = 50;

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
  watchSetup(s);
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
    rank.textContent = "#" + x.rank + "  " + x.score.toFixed(3) + (typeof x.p === "number" ? " · p " + x.p.toFixed(2) : "");
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
  const rows = [["Score", x.score.toFixed(4) + (typeof x.p === "number" ? " (p " + x.p.toFixed(3) + ")" : "")], ["Camera", x.camera], ["Captured", localTime(x.time)],
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

// --- Watches and alerts (SPEC §12) ---

function sayWatch(text, isError) {
  const m = $("watch-message");
  m.textContent = text;
  m.className = isError ? "error" : "";
}

// The watch form follows the bundle: p when it has a score calibration, else a score.
// A central node has no watches (they live on each box).
function watchSetup(s) {
  const cal = !!(s.bundle && s.bundle.score_calibration && s.bundle.score_calibration.unavailable === undefined);
  central = s.backend !== undefined;
  for (const id of ["watch-box", "watches-section", "alerts-section", "history-box"]) $(id).hidden = central;
  if (central || cal === calibrated) return;
  calibrated = cal;
  $("watch-threshold-label").textContent = cal ? "Alert at p ≥" : "Alert at score ≥";
  $("watch-threshold").value = cal ? "0.9" : "0.3";
  $("watch-threshold").min = cal ? "0.000001" : "-1";
  $("watch-prior-field").hidden = !cal;
  $("watch-note").textContent = "Uses the description and the cameras selected above (none: all cameras)." +
    (cal ? " p is the probability that an alerting crop shows the person, at the prior: the share of crops you expect to show them."
      : " This bundle has no score calibration, so a watch alerts on the raw score (run sen calibrate-scores for p).");
}

async function addWatch() {
  const text = $("q").value.trim();
  if (!text) return sayWatch("Describe the person first: the watch uses the description above.", true);
  const name = $("watch-name").value.trim() || text.slice(0, 128);
  const threshold = Number($("watch-threshold").value);
  if (!$("watch-threshold").value || !isFinite(threshold)) return sayWatch("Give the threshold the watch alerts at.", true);
  const body = { name: name, text: text };
  body[calibrated ? "min_p" : "min_score"] = threshold;
  const cams = Array.from($("cameras").selectedOptions).map((o) => o.value);
  if (cams.length) body.cameras = cams;
  const prior = $("watch-prior").value.trim();
  if (calibrated && prior) body.prior = Number(prior);
  const cooldown = $("watch-cooldown").value.trim();
  if (cooldown) body.cooldown_s = Number(cooldown);
  const r = await api("/v1/watches", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  }).catch(() => null);
  if (!r) return sayWatch("The server cannot be reached.", true);
  if (!r.ok) return sayWatch(explain(r.status, r.body), true);
  sayWatch("Watching \u201c" + name + "\u201d (watch " + r.body.id + ").", false);
  loadWatches();
}

function thresholdText(w) {
  if (w.min_p !== undefined) return "p ≥ " + w.min_p + (w.prior !== undefined && w.prior !== null ? " at prior " + w.prior : " at the bundle's prior");
  return "score ≥ " + w.min_score;
}

function watchQueryText(w) {
  if (w.text !== undefined) return "\u201c" + w.text + "\u201d";
  if (w.like !== undefined) return "like row " + w.like;
  if (w.like_track !== undefined) return "like track " + w.like_track.track + (w.like_track.camera ? " (" + w.like_track.camera + ")" : "");
  return "";
}

async function loadWatches() {
  if (central) return;
  const list = $("watch-list");
  const r = await api("/v1/watches").catch(() => null);
  if (!r || !r.ok) {
    const li = document.createElement("li");
    li.textContent = r ? explain(r.status, r.body) : "The server cannot be reached.";
    list.replaceChildren(li);
    return;
  }
  list.replaceChildren();
  if (r.body.watches.length === 0) {
    const li = document.createElement("li");
    li.textContent = "No watches: describe a person above and use \u201cWatch this description\u201d.";
    list.appendChild(li);
  }
  for (const w of r.body.watches) {
    const li = document.createElement("li");
    li.dataset.id = String(w.id);
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = w.name;
    const desc = document.createElement("span");
    desc.className = "desc";
    desc.textContent = watchQueryText(w) + " · " + (w.cameras ? w.cameras.join(", ") : "all cameras") +
      " · " + thresholdText(w) + " · cooldown " + w.cooldown_s + " s";
    li.append(name, desc);
    if (keyScope === "write") {
      const del = document.createElement("button");
      del.type = "button";
      del.className = "danger";
      del.textContent = "Delete";
      del.setAttribute("aria-label", "Delete watch " + w.name);
      del.addEventListener("click", () => deleteWatch(w));
      li.appendChild(del);
    }
    list.appendChild(li);
  }
}

async function deleteWatch(w) {
  if (!window.confirm("Delete watch \u201c" + w.name + "\u201d? It stops alerting at once.")) return;
  const r = await api("/v1/watches/" + encodeURIComponent(w.id), { method: "DELETE" }).catch(() => null);
  if (!r) return sayWatch("The server cannot be reached.", true);
  if (!r.ok) return sayWatch(explain(r.status, r.body), true);
  sayWatch("Watch \u201c" + w.name + "\u201d deleted.", false);
  loadWatches();
}

function alertWhat(a) {
  return (typeof a.p === "number" ? "p " + a.p.toFixed(2) + ", " : "") + "score " + a.score.toFixed(3);
}

function alertCard(a) {
  const li = document.createElement("li");
  li.className = "alert-card";
  li.dataset.id = String(a.id);
  const img = document.createElement("img");
  img.alt = "Crop " + a.row + " from camera " + a.camera;
  const what = document.createElement("span");
  what.className = "what";
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = a.name;
  const where = document.createElement("span");
  where.className = "camera";
  where.textContent = a.camera + (a.track !== undefined && a.track !== null ? " · track " + a.track : "");
  const when = document.createElement("span");
  when.className = "time";
  when.textContent = localTime(a.time);
  const score = document.createElement("span");
  score.textContent = alertWhat(a);
  what.append(name, where, when, score);
  li.append(img, what);
  imageUrl({ id: a.row }, true).then((u) => { if (u) img.src = u; });
  return li;
}

function setAlertState(text, cls) {
  const st = $("alerts-state");
  st.textContent = text;
  st.className = "pill " + (cls || "");
}

// Server-Sent Events read with fetch, so the key goes in the Authorization header
// and never in a URL (EventSource cannot send headers).
async function readEvents(body) {
  const reader = body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += dec.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      let id = null, event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const i = line.indexOf(":");
        const field = i < 0 ? line : line.slice(0, i);
        const v = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
        if (field === "id") id = v;
        else if (field === "event") event = v;
        else if (field === "data") data.push(v);
      }
      if (event !== "alert" || data.length === 0) continue;
      const a = JSON.parse(data.join("\n"));
      if (id !== null) lastAlertId = id;
      const cards = $("alert-cards");
      cards.prepend(alertCard(a));
      while (cards.children.length > MAX_CARDS) cards.lastElementChild.remove();
    }
  }
}

function pause(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
  });
}

// The live stream: reconnects with Last-Event-ID, so nothing is missed or shown twice.
async function startAlerts() {
  if (streamCtl) streamCtl.abort();
  if (central) return;
  const ctl = new AbortController();
  streamCtl = ctl;
  while (!ctl.signal.aborted) {
    const h = lastAlertId !== null ? { "Last-Event-ID": lastAlertId } : {};
    let r = null;
    try {
      r = await fetch("/v1/alerts/stream", { headers: headers(h), signal: ctl.signal });
    } catch (e) {
      r = null;
    }
    if (ctl.signal.aborted) return;
    if (r && r.ok) {
      setAlertState("live", "ok");
      try { await readEvents(r.body); } catch (e) { /* the connection dropped: reconnect */ }
      if (ctl.signal.aborted) return;
    } else if (r && (r.status === 401 || r.status === 403)) {
      // Waits for a key: saving one restarts the stream.
      return setAlertState("needs a read key", "bad");
    } else {
      setAlertState(r ? (r.status === 503 ? "server busy or not ready" : "error " + r.status) : "unreachable", "bad");
    }
    setAlertState("reconnecting…", "bad");
    await pause(3000, ctl.signal);
  }
}

async function loadHistory() {
  const params = new URLSearchParams();
  const f = rfc3339($("from").value), t = rfc3339($("to").value);
  params.set("from", f || new Date(Date.now() - 24 * 3600 * 1000).toISOString());
  if (t) params.set("to", t);
  params.set("limit", "1000");
  const ol = $("history");
  const r = await api("/v1/alerts?" + params.toString()).catch(() => null);
  if (!r || !r.ok) {
    const li = document.createElement("li");
    li.textContent = r ? explain(r.status, r.body) : "The server cannot be reached.";
    ol.replaceChildren(li);
    return;
  }
  ol.replaceChildren();
  const alerts = r.body.alerts.slice().reverse();
  if (alerts.length === 0) {
    const li = document.createElement("li");
    li.textContent = "No alerts in this time.";
    ol.appendChild(li);
  }
  for (const a of alerts) {
    const li = document.createElement("li");
    li.dataset.id = String(a.id);
    li.textContent = localTime(a.created) + " · " + a.name + " · " + a.camera +
      (a.track !== undefined && a.track !== null ? " · track " + a.track : "") + " · row " + a.row + " · " + alertWhat(a);
    ol.appendChild(li);
  }
}

function keyChanged() {
  refreshStatus().then(() => { loadWatches(); startAlerts(); });
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
    keyChanged();
  });
  $("key-clear").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    $("key").value = "";
    keyScope = null;
    say("Key forgotten.", false);
    keyChanged();
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
  $("watch-form").addEventListener("submit", (e) => { e.preventDefault(); addWatch(); });
  $("history-load").addEventListener("click", loadHistory);
  keyChanged();
  setInterval(refreshStatus, 15000);
}

document.addEventListener("DOMContentLoaded", init);
