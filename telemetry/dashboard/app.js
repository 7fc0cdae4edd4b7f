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
  if (v > 0) return v.toFixed(1);
  return "0";
}

function fmtInt(v) {
  return Math.round(v).toLocaleString("en-US");
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

function renderService(s) {
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
  for (const s of doc.services) {
    renderService(s);
    seen.add(s.service);
  }
  for (const [name, el] of cards) {
    if (!seen.has(name)) {
      el.remove();
      cards.delete(name);
    }
  }
  renderQueues(doc.queues || []);
  renderSuppressed(doc.log_suppressed);
  const entries = document.getElementById("handoff-entries");
  entries.textContent = doc.handoff_entries == null ? "–" : fmtInt(doc.handoff_entries);
  entries.dataset.value = doc.handoff_entries == null ? "" : String(doc.handoff_entries);
  const up = Math.floor(doc.uptime_seconds);
  document.getElementById("updated").textContent =
    "up " + Math.floor(up / 3600) + "h " + Math.floor((up % 3600) / 60) + "m " + (up % 60) + "s · " +
    new Date(doc.time).toLocaleTimeString();
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
