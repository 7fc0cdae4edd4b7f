// synguard live dashboard: polls api/stats once a second and draws each
// protected service's figures and recent history. No libraries, nothing
// fetched from anywhere but the gateway itself.
"use strict";

const POLL_MS = 1000;
const SVG_NS = "http://www.w3.org/2000/svg";
const HISTORY = 120; // points the server keeps; the charts' x axis

const cards = new Map(); // service -> card element

function fmtRate(v) {
  if (v >= 100) return Math.round(v).toLocaleString("en-US");
  if (v >= 10) return v.toFixed(0);
  if (v > 0) return Number.isInteger(v) ? String(v) : v.toFixed(1);
  return "0";
}

function fmtInt(v) {
  return Math.round(v).toLocaleString("en-US");
}

function fmtPct(ratio) {
  const p = 100 * ratio;
  return (p > 0 && p < 1 ? p.toFixed(2) : p >= 10 ? p.toFixed(0) : p.toFixed(1)) + "%";
}

function fmtDuration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return s + "s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + "m " + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(m / 60) + "h " + String(m % 60).padStart(2, "0") + "m";
}

function fmtTime(iso) {
  return new Date(iso).toLocaleTimeString("en-GB");
}

// fmtDateTime leaves the date out for times within a day of now.
function fmtDateTime(iso, now) {
  const d = new Date(iso);
  if (Math.abs(now - d.getTime()) < 86400e3) return fmtTime(iso);
  return d.toLocaleDateString("en-GB", { day: "numeric", month: "short" }) + " " + fmtTime(iso);
}

// fill replaces tbody's rows with rows (arrays of cell texts, or objects
// {cells, attrs, cls}), unless they are the ones it already shows: under
// a flood the page redraws once a second, and most tables do not change.
const shown = new WeakMap(); // tbody -> the rows it shows, as JSON

function fill(tbody, rows) {
  const key = JSON.stringify(rows);
  if (shown.get(tbody) === key) return;
  shown.set(tbody, key);
  while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
  for (const r of rows) {
    const row = Array.isArray(r) ? { cells: r } : r;
    const tr = document.createElement("tr");
    for (const [k, v] of Object.entries(row.attrs || {})) tr.setAttribute(k, v);
    if (row.cls) tr.className = row.cls;
    for (const v of row.cells) {
      const td = document.createElement("td");
      td.textContent = String(v);
      tr.appendChild(td);
    }
    tbody.appendChild(tr);
  }
}

function card(service) {
  let c = cards.get(service);
  if (c) return c;
  c = document.getElementById("service-card").content.firstElementChild.cloneNode(true);
  c.dataset.service = service;
  c.querySelector(".service").textContent = service;
  document.getElementById("services").appendChild(c);
  cards.set(service, c);
  return c;
}

// chart draws series (each {values, cls}) into svg on a shared y scale
// and returns that scale's top.
function chart(svg, series) {
  let top = 0;
  for (const s of series) for (const v of s.values) top = Math.max(top, v);
  const ymax = top > 0 ? top * 1.1 : 1;
  const w = 120, h = 40;
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  for (const s of series) {
    const n = s.values.length;
    if (n === 0) continue;
    const pts = s.values.map((v, i) => {
      const x = w - (n - 1 - i) * (w / (HISTORY - 1));
      const y = h - (v / ymax) * h;
      return x.toFixed(2) + "," + y.toFixed(2);
    });
    if (s.fill) {
      const area = document.createElementNS(SVG_NS, "polygon");
      const x0 = (w - (n - 1) * (w / (HISTORY - 1))).toFixed(2);
      area.setAttribute("points", x0 + "," + h + " " + pts.join(" ") + " " + w + "," + h);
      area.setAttribute("class", "area " + s.cls);
      svg.appendChild(area);
    }
    const line = document.createElementNS(SVG_NS, "polyline");
    line.setAttribute("points", pts.join(" "));
    line.setAttribute("class", "line " + s.cls);
    line.setAttribute("vector-effect", "non-scaling-stroke");
    svg.appendChild(line);
  }
  return top;
}

// renderAttack shows the attack in progress, if any, with its heaviest
// source prefixes and what their spread suggests.
function renderAttack(c, a) {
  const box = c.querySelector(".attack");
  box.hidden = a == null;
  if (a == null) return;
  const q = (name) => box.querySelector('[data-attack="' + name + '"]');
  q("summary").textContent =
    "since " + fmtTime(a.started) + " (" + fmtDuration(a.duration_s) + ", " + a.reason + ") · peak " +
    fmtRate(a.peak_syn_rate) + " SYN/s · " + fmtInt(a.syns) + " SYNs · " + fmtInt(a.handed_off) +
    " handed off · completion " + fmtPct(a.completion_ratio);
  const sources = a.top_sources || [];
  q("spread").textContent = sources.length ? "spread " + a.spread.toFixed(2) + ":" : "no source figures yet";
  q("hint").textContent = a.hint || "";
  fill(box.querySelector(".sources tbody"), sources.map((p) => ({
    cells: [p.prefix, fmtInt(p.syns), fmtInt(p.completed)],
    attrs: { "data-prefix": p.prefix },
  })));
}

// Hand-off failures, in the order an operator checks them, with what
// each says about the backend.
const FAILURES = [
  ["backend_reset", "the backend resets the replayed SYNs: is the service listening?"],
  ["backend_timeout", "the backend does not answer the replayed SYNs: is it up, and routed back through this gateway?"],
  ["handoff_failed", "conntrack refuses the flows' entries: is its table full?"],
  ["pending_full", "too many flows wait on the backend: it is slow, or --max-pending is too low"],
];

// renderBackend shows the backend's state, the options announced for it
// and, when validated flows are not being handed off, why.
function renderBackend(c, s, now) {
  const b = s.backend || {};
  const q = (name) => c.querySelector('[data-backend="' + name + '"]');
  const state = b.up == null ? "unknown" : b.up ? "up" : "down";
  const st = q("state");
  st.textContent = state;
  st.dataset.state = state;
  let detail = b.reason || "";
  if (b.since) {
    const ago = (now - new Date(b.since).getTime()) / 1000;
    detail += (detail ? " · " : "") + state + " for " + fmtDuration(ago) + " (since " + fmtTime(b.since) + ")";
  }
  q("detail").textContent = state === "unknown" ? "no verdict yet" : detail;
  const ws = b.wscale == null || b.wscale < 0 ? "none" : String(b.wscale);
  q("options").textContent = b.mss
    ? "MSS " + b.mss + " · window scale " + ws + " · SACK " + (b.sack ? "on" : "off") + (b.options ? " · " + b.options : "")
    : "options not known yet";
  const rates = s.rates || {};
  const totals = s.totals || {};
  let worst = null;
  for (const [name, why] of FAILURES) {
    const tr = c.querySelector('[data-failure="' + name + '"]');
    const r = rates[name] || 0;
    tr.cells[1].textContent = fmtRate(r);
    tr.cells[2].textContent = fmtInt(totals[name] || 0);
    tr.className = r > 0 ? "warn" : "";
    if (r > 0 && (worst == null || r > worst.r)) worst = { r, why };
  }
  q("why").textContent = worst ? "hand-offs failing: " + worst.why : "";
}

// renderHistory lists the attacks that ended, newest first.
function renderHistory(c, attacks, now) {
  c.querySelector('[data-history="empty"]').hidden = attacks.length > 0;
  fill(c.querySelector(".attacks tbody"), attacks.map((a) => {
    const top = (a.top_sources || [])[0];
    return {
      cells: [
        fmtDateTime(a.started, now), a.ended ? fmtTime(a.ended) : "", fmtDuration(a.duration_s),
        fmtRate(a.peak_syn_rate), fmtInt(a.syns), fmtPct(a.completion_ratio),
        top ? top.prefix + (a.hint ? " (" + a.hint + ")" : "") : "—",
      ],
    };
  }));
}

function renderService(s, now) {
  const c = card(s.service);
  const mode = c.querySelector('[data-field="mode"]');
  mode.textContent = s.mode;
  mode.dataset.mode = s.mode;
  const set = (field, text, raw) => {
    const el = c.querySelector('[data-field="' + field + '"]');
    el.textContent = text;
    el.dataset.value = String(raw);
  };
  set("half_open", fmtInt(s.half_open), s.half_open);
  set("syn", fmtRate(s.rates.syn), s.rates.syn);
  set("synack", fmtRate(s.rates.synack), s.rates.synack);
  const xdp = s.rates.xdp_synack || 0;
  const share = s.rates.synack > 0 ? Math.round((100 * xdp) / s.rates.synack) : 0;
  set("synack_path", s.rates.synack > 0 ? "XDP " + share + "% · queue " + (100 - share) + "%" : "", share);
  set("cookie_valid", fmtRate(s.rates.cookie_valid), s.rates.cookie_valid);
  set("cookie_invalid", fmtRate(s.rates.cookie_invalid), s.rates.cookie_invalid);
  set("handed_off", fmtRate(s.rates.handed_off), s.rates.handed_off);
  for (const el of c.querySelectorAll("[data-total]")) {
    const name = el.dataset.total;
    if (name === "pending") {
      el.textContent = fmtInt(s.pending) + " pending";
    } else {
      el.textContent = fmtInt((s.totals && s.totals[name]) || 0) + " total";
    }
  }
  c.querySelector(".handshake").textContent =
    s.handshake_ms == null ? "" : "backend handshake " + s.handshake_ms.toFixed(2) + " ms";
  renderAttack(c, s.attack);
  renderBackend(c, s, now);
  renderHistory(c, s.attacks || [], now);

  const h = s.history;
  const draw = (name, series) => {
    const fig = c.querySelector('[data-chart="' + name + '"]');
    const top = chart(fig.querySelector("svg"), series);
    fig.querySelector(".max").textContent = "max " + fmtRate(top);
  };
  draw("handshake", [
    { values: h.syn, cls: "syn", fill: true },
    { values: h.synack, cls: "synack" },
  ]);
  draw("cookies", [
    { values: h.cookie_invalid, cls: "invalid", fill: true },
    { values: h.cookie_valid, cls: "valid" },
  ]);
  draw("flows", [
    { values: h.half_open, cls: "halfopen", fill: true },
    { values: h.handed_off, cls: "handoff" },
  ]);
}

function renderQueues(queues) {
  const body = document.querySelector("#queues tbody");
  while (body.firstChild) body.removeChild(body.firstChild);
  for (const q of queues) {
    const tr = document.createElement("tr");
    for (const v of [q.queue, fmtRate(q.received_rate), fmtInt(q.received), fmtInt(q.kernel_drops), fmtInt(q.enobufs)]) {
      const td = document.createElement("td");
      td.textContent = String(v);
      tr.appendChild(td);
    }
    if (q.kernel_drops > 0 || q.enobufs > 0) tr.className = "warn";
    body.appendChild(tr);
  }
}

// The fields an event line shares with every other; the rest are its
// details.
const COMMON = new Set(["time", "level", "event", "service", "message"]);

function detailOf(e) {
  const parts = [];
  if (e.message) parts.push(e.message);
  for (const [k, v] of Object.entries(e)) {
    if (COMMON.has(k)) continue;
    let text = typeof v === "object" && v !== null ? JSON.stringify(v) : String(v);
    if (k === "top_sources" && Array.isArray(v)) text = v.slice(0, 3).map((p) => p.prefix + " " + fmtInt(p.syns)).join(", ");
    parts.push(k + "=" + text);
  }
  const line = parts.join(" · ");
  return line.length > 240 ? line.slice(0, 239) + "…" : line;
}

function renderEvents(events) {
  document.getElementById("no-events").hidden = events.length > 0;
  fill(document.querySelector("#events tbody"), events.map((e) => ({
    cells: [e.time ? fmtTime(e.time) : "", e.level || "", e.event || "", e.service || "", detailOf(e)],
    attrs: { "data-event": e.event || "" },
    cls: e.level ? "lvl-" + e.level : "",
  })));
}

function renderXDP(actions) {
  document.getElementById("xdp").textContent = actions && actions.length
    ? "XDP fast path: " + actions.map((a) => a.action + " " + fmtInt(a.packets) + " (" + fmtRate(a.rate) + "/s)").join(" · ")
    : "";
}

function renderSuppressed(m) {
  const parts = Object.keys(m || {}).filter((k) => m[k] > 0).sort().map((k) => k + " " + fmtInt(m[k]));
  document.getElementById("suppressed").textContent =
    parts.length ? "log lines held back by the rate limit: " + parts.join(", ") : "";
}

function setStatus(state, text) {
  const el = document.getElementById("status");
  el.dataset.state = state;
  el.textContent = text;
}

function render(doc) {
  const seen = new Set();
  const now = new Date(doc.time).getTime();
  for (const s of doc.services) {
    renderService(s, now);
    seen.add(s.service);
  }
  for (const [name, el] of cards) {
    if (!seen.has(name)) {
      el.remove();
      cards.delete(name);
    }
  }
  renderQueues(doc.queues || []);
  renderXDP(doc.xdp);
  renderEvents(doc.events || []);
  renderSuppressed(doc.log_suppressed);
  const entries = document.getElementById("handoff-entries");
  entries.textContent = doc.handoff_entries == null ? "–" : fmtInt(doc.handoff_entries);
  entries.dataset.value = doc.handoff_entries == null ? "" : String(doc.handoff_entries);
  const up = Math.floor(doc.uptime_seconds);
  document.getElementById("updated").textContent =
    "up " + Math.floor(up / 3600) + "h " + Math.floor((up % 3600) / 60) + "m " + (up % 60) + "s · " +
    fmtTime(doc.time);
}

async function poll() {
  try {
    const resp = await fetch("api/stats", { cache: "no-store" });
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    render(await resp.json());
    setStatus("live", "live");
  } catch (err) {
    setStatus("down", "no data: " + err.message);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
