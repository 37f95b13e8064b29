// atomwatch's page: the controller's alarms through its own HTTP API, with the operator's token.
// No framework, no build step. Every text from the API (VM and process names come from guests)
// goes into the page as textContent, never as HTML.
"use strict";

const KEY = "atomwatch-api-token";
const $ = (id) => document.getElementById(id);
let chosen = null; // the alarm id shown in detail
let timer = null;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function when(ts) {
  return ts ? new Date(ts * 1000).toLocaleString() : "";
}

function num(x) {
  return typeof x === "number" ? (Math.abs(x) >= 1000 || Math.abs(x) < 0.01 ? x.toExponential(2) : x.toFixed(2)) : "";
}

function blameText(alarm, n) {
  return (alarm.blame || []).slice(0, n).map((b) => `${b.vm_name || b.vm_uuid || "?"} / ${b.metric || "?"}`).join(", ");
}

async function api(path, options) {
  const token = sessionStorage.getItem(KEY);
  const opts = Object.assign({ headers: {} }, options || {});
  opts.headers.Authorization = `Bearer ${token}`;
  opts.cache = "no-store";
  const r = await fetch(path, opts);
  let body = null;
  try { body = await r.json(); } catch (e) { body = { error: `${r.status} ${r.statusText}` }; }
  if (r.status === 401 || r.status === 503) {
    showLogin(body.error || "the token was refused");
    throw new Error(body.error);
  }
  if (!r.ok) throw new Error(body.error || `${r.status}`);
  return body;
}

function showLogin(message) {
  sessionStorage.removeItem(KEY);
  clearInterval(timer);
  $("login").hidden = false;
  $("alarms").hidden = $("detail").hidden = $("forget").hidden = true;
  $("login-error").textContent = message || "";
  $("status").textContent = "";
}

function row(tbody, cells, alarm) {
  const tr = el("tr", undefined, "pick");
  tr.dataset.alarm = alarm.id;
  if (alarm.id === chosen) tr.classList.add("chosen");
  for (const c of cells) tr.appendChild(c instanceof Node ? c : el("td", c));
  tr.addEventListener("click", () => show(alarm.id));
  tbody.appendChild(tr);
}

async function refresh() {
  try {
    const { alarms } = await api("/api/alarms");
    const open = alarms.filter((a) => a.state === "open");
    const recent = alarms.filter((a) => a.state !== "open").slice(0, 20);
    const tOpen = $("open").tBodies[0];
    const tRecent = $("recent").tBodies[0];
    tOpen.replaceChildren();
    tRecent.replaceChildren();
    for (const a of open) {
      row(tOpen, [`#${a.id}`, a.scope, a.detector, blameText(a, 3), a.level, `${num(a.score)} / ${num(a.threshold)}`, when(a.opened_at)], a);
    }
    for (const a of recent) {
      row(tRecent, [`#${a.id}`, el("td", a.state, `state-${a.state}`), a.scope, a.detector, blameText(a, 3), a.level, a.verdict || "", when(a.updated_at)], a);
    }
    $("open-none").hidden = open.length > 0;
    $("recent-none").hidden = recent.length > 0;
    $("alarms").hidden = false;
    $("status").textContent = `${open.length} open · updated ${new Date().toLocaleTimeString()}`;
    if (chosen === null && open.length) await show(open[0].id);
    else if (chosen !== null) await show(chosen, true);
  } catch (e) {
    $("status").textContent = `error: ${e.message}`;
  }
}

function chart(rows) {
  const box = $("chart");
  box.replaceChildren();
  const pts = rows.filter((r) => typeof r.score === "number" && typeof r.threshold === "number");
  if (!pts.length) { box.appendChild(el("p", "No rows kept.", "quiet")); return; }
  const NS = "http://www.w3.org/2000/svg";
  const W = 720, H = 240, L = 60, R = 10, T = 10, B = 46;
  const values = pts.flatMap((r) => [r.score, r.threshold]);
  const log = values.every((v) => v > 0);
  const f = (v) => (log ? Math.log10(v) : v);
  let lo = Math.min(...values.map(f)), hi = Math.max(...values.map(f));
  if (hi === lo) { hi += 1; lo -= 1; }
  const x0 = pts[0].index, x1 = Math.max(pts[pts.length - 1].index, x0 + 1);
  const x = (i) => L + ((i - x0) / (x1 - x0)) * (W - L - R);
  const y = (v) => T + (1 - (f(v) - lo) / (hi - lo)) * (H - T - B);
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("width", W);
  svg.setAttribute("height", H);
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.appendChild(e);
    return e;
  };
  add("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" });
  add("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" });
  const line = (key, cls) => add("polyline", { class: cls, points: pts.map((r) => `${x(r.index).toFixed(1)},${y(r[key]).toFixed(1)}`).join(" ") });
  line("threshold", "qa");
  line("score", "spe");
  add("text", { x: 4, y: T + 10 }, num(log ? 10 ** hi : hi));
  add("text", { x: 4, y: H - B }, num(log ? 10 ** lo : lo));
  add("text", { x: L, y: H - B + 14 }, `row ${x0}`);
  add("text", { x: W - R - 60, y: H - B + 14 }, `row ${x1}`);
  add("line", { x1: L, y1: H - 10, x2: L + 24, y2: H - 10, class: "spe" });
  add("text", { x: L + 30, y: H - 6 }, "SPE");
  add("line", { x1: L + 80, y1: H - 10, x2: L + 104, y2: H - 10, class: "qa" });
  add("text", { x: L + 110, y: H - 6 }, `Q_α${log ? " (log scale)" : ""}`);
  box.appendChild(svg);
}

function finding(f) {
  const d = el("div", undefined, "finding");
  d.appendChild(el("strong", `${f.kind || "finding"} by ${f.by || "?"}`));
  if (f.vm_name) d.appendChild(el("span", ` on ${f.vm_name}`));
  d.appendChild(el("p", f.summary || ""));
  const suspects = f.suspects || [];
  if (suspects.length) {
    const ul = el("ul");
    for (const s of suspects.slice(0, 10)) {
      ul.appendChild(el("li", `suspect pid ${s.pid} ${s.name || ""} (score ${num(s.score)}): ${(s.evidence || []).join("; ")}`));
    }
    d.appendChild(ul);
  }
  return d;
}

async function show(id, quietly) {
  chosen = id;
  const a = await api(`/api/alarms/${id}`);
  for (const tr of document.querySelectorAll("tr.pick")) tr.classList.toggle("chosen", Number(tr.dataset.alarm) === id);
  $("detail-title").textContent = `Alarm #${a.id}: ${a.detector} on ${a.scope} — ${a.state}`;
  $("detail-summary").textContent =
    `${a.level} abnormal rows (rows ${a.first_row}–${a.last_row}), score ${num(a.score)} > ${num(a.threshold)}, ` +
    `opened ${when(a.opened_at)}` + (a.verdict ? `, verdict ${a.verdict}` : "") + (a.resolution ? `, ${a.resolution}` : "");
  const tb = $("blame").tBodies[0];
  tb.replaceChildren();
  for (const b of a.blame || []) {
    const tr = el("tr");
    for (const c of [b.vm_name || b.vm_uuid, b.metric, b.direction, b.rows, num(b.score)]) tr.appendChild(el("td", c));
    tb.appendChild(tr);
  }
  chart(a.rows || []);
  const fd = $("findings");
  fd.replaceChildren();
  if (!(a.findings || []).length) fd.appendChild(el("p", "None yet.", "quiet"));
  for (const f of a.findings || []) fd.appendChild(finding(f));
  const au = $("audit");
  au.replaceChildren();
  // runs of "extended" entries are one line each (an alarm of hours is extended every row)
  const lines = [];
  for (const e of a.audit || []) {
    const last = lines[lines.length - 1];
    if (last && e.action === "extended" && last.action === "extended" && last.actor === e.actor) {
      last.n += 1;
      last.ts = e.ts;
    } else lines.push({ ts: e.ts, actor: e.actor, action: e.action, n: 1 });
  }
  for (const e of lines.slice(-30)) {
    au.appendChild(el("li", `${when(e.ts)} ${e.actor}: ${e.action}${e.n > 1 ? ` ×${e.n}` : ""}`));
  }
  $("verdict").hidden = a.state !== "open";
  if (!quietly) $("verdict-result").textContent = "";
  $("detail").hidden = false;
}

async function verdict(kind) {
  if (chosen === null) return;
  if (kind === "malicious" && !confirm(`Mark alarm #${chosen} malicious? Orchestrators may act on it (terminate a process).`)) return;
  for (const b of $("verdict").querySelectorAll("button")) b.disabled = true;
  try {
    const a = await api(`/api/alarms/${chosen}/verdict`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ verdict: kind }),
    });
    $("verdict-result").textContent = `verdict ${kind} given: alarm #${a.id} is ${a.state}`;
  } catch (e) {
    $("verdict-result").textContent = `verdict refused: ${e.message}`;
  } finally {
    for (const b of $("verdict").querySelectorAll("button")) b.disabled = false;
  }
  await refresh();
}

function start() {
  $("login").hidden = true;
  $("forget").hidden = false;
  refresh();
  clearInterval(timer);
  timer = setInterval(refresh, 10000);
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, $("token").value.trim());
    $("token").value = "";
    start();
  });
  $("forget").addEventListener("click", () => showLogin(""));
  $("normal").addEventListener("click", () => verdict("normal"));
  $("malicious").addEventListener("click", () => verdict("malicious"));
  if (sessionStorage.getItem(KEY)) start();
  else showLogin("");
});
