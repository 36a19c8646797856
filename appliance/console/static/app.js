// shadowtap console: plain JS, no dependencies. Every call goes to the same origin with the
// cookie the /?token= visit set. Live updates: Server-Sent Events (/api/events).
"use strict";

const $ = (s, el = document) => el.querySelector(s);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const fmt = (v, d = 1) => (v === null || v === undefined) ? "-" : (typeof v === "number" ? v.toLocaleString(undefined, {maximumFractionDigits: d}) : String(v));
const pct = (v) => (v === null || v === undefined) ? "-" : (100 * v).toFixed(2) + " %";

async function api(path, opts) {
  const r = await fetch(path, Object.assign({credentials: "same-origin"}, opts || {}));
  if (r.status === 401) { document.body.dataset.denied = "1"; throw new Error("401: token needed"); }
  return r.json();
}

const state = {page: "overview", endpoint: null, exOffset: 0, exLimit: 50, latEndpoint: null, findings: null};

// ---- navigation --------------------------------------------------------------------------
function show(page) {
  state.page = page;
  document.querySelectorAll(".page").forEach((s) => { s.hidden = s.id !== "page-" + page; });
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("on", a.dataset.page === page));
  ({overview: loadOverview, findings: loadFindings, exchanges: loadExchanges, latency: loadLatency,
    canary: loadCanary, shadows: loadShadows}[page] || (() => {}))();
}
window.addEventListener("hashchange", () => show((location.hash || "#overview").slice(1).split("/")[0]));

// ---- overview ----------------------------------------------------------------------------
function renderOverview(ov) {
  const c = ov.capture || {};
  $("#ov-pps").textContent = fmt(c.packets_per_s);
  $("#ov-drops").textContent = fmt(c.kernel_drops, 0);
  $("#ov-drops-rate").textContent = fmt(c.kernel_drops_per_s) + " /s";
  $("#ov-shed").textContent = pct(ov.shed_share);
  $("#ov-eps").textContent = fmt(c.exchanges_per_s);
  $("#ov-ex-total").textContent = "/s; " + fmt(c.exchanges, 0) + " in all";
  const st = ov.status || {};
  $("#ov-cps").textContent = ov.shadowing ? fmt(c.compared_per_s) : "off";
  $("#ov-compared").textContent = ov.shadowing ? "/s; " + fmt(st.compared, 0) + " in all" : "no shadowing section";
  const v = ov.verdict;
  const vEl = $("#ov-verdict"), badge = $("#verdict-badge");
  vEl.className = "v"; badge.className = "badge";
  if (v && v.verdict) {
    vEl.textContent = v.verdict.toUpperCase(); vEl.classList.add(v.verdict);
    badge.textContent = v.verdict.toUpperCase() + " · " + v.regressions + " regression(s)"; badge.classList.add(v.verdict);
    $("#ov-verdict-sub").textContent = `${v.regressions} regression(s), ${v.noise} noise, ${v.undecided} undecided; ${fmt(v.compared, 0)} compared` +
      (v.latency_regressions && v.latency_regressions.length ? `; slower: ${v.latency_regressions.join(", ")}` : "");
  } else {
    vEl.textContent = ov.shadowing ? "pending" : "-"; badge.textContent = ov.shadowing ? "no verdict yet" : "no shadowing";
    $("#ov-verdict-sub").textContent = "";
  }
  const tb = $("#ov-shadows tbody");
  tb.innerHTML = "";
  for (const [name, h] of Object.entries(st.shadows || {})) {
    tb.insertAdjacentHTML("beforeend", `<tr><td>${esc(name)}</td><td class="${h.up ? "up" : "down"}">${h.up ? "up" : "DOWN"}</td><td class=n>${fmt(h.answered, 0)}</td><td class=n>${fmt(h.failed, 0)}</td></tr>`);
  }
  $("#ov-health").textContent = (ov.healthy ? "healthy: " : "NOT healthy: ") + ov.health +
    `; exchanges listed ${fmt(ov.exchanges.listed, 0)} of ${fmt(ov.exchanges.seen, 0)} logged (ring ${fmt(ov.exchanges.ring, 0)})` +
    (ov.exchanges.sanitised ? "" : "; exchange list off: sanitise is disabled");
}

async function loadOverview() {
  renderOverview(await api("/api/overview"));
  drawRates(await api("/api/rates?points=300"));
}

// ---- charts (inline SVG) -----------------------------------------------------------------
const COLORS = ["#2563eb", "#d97706", "#059669", "#b42318", "#7c3aed"];
function lineChart(el, points, series, opts) {
  const W = opts.width || 900, H = opts.height || 220, L = 48, B = 22, T = 10, R = 10;
  const ts = points.map((p) => p.t);
  const t0 = Math.min(...ts), t1 = Math.max(...ts, t0 + 1);
  let ymax = 0;
  for (const s of series) for (const p of points) { const v = p[s.key]; if (typeof v === "number" && v > ymax) ymax = v; }
  ymax = ymax > 0 ? ymax * 1.1 : 1;
  const x = (t) => L + (W - L - R) * (t - t0) / (t1 - t0);
  const y = (v) => H - B - (H - B - T) * v / ymax;
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const add = (tag, attrs, text) => { const e = document.createElementNS(NS, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); if (text !== undefined) e.textContent = text; svg.appendChild(e); return e; };
  add("line", {x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis"});
  add("line", {x1: L, y1: T, x2: L, y2: H - B, class: "axis"});
  for (let i = 0; i <= 4; i++) {
    const v = ymax * i / 4;
    add("text", {x: 2, y: y(v) + 3}, fmt(v, v < 10 ? 1 : 0));
  }
  add("text", {x: L, y: H - 6}, new Date(t0 * 1000).toLocaleTimeString());
  add("text", {x: W - R - 60, y: H - 6}, new Date(t1 * 1000).toLocaleTimeString());
  series.forEach((s, i) => {
    const pts = points.filter((p) => typeof p[s.key] === "number").map((p) => `${x(p.t).toFixed(1)},${y(p[s.key]).toFixed(1)}`);
    if (pts.length) add("polyline", {points: pts.join(" "), fill: "none", stroke: COLORS[i % COLORS.length], "stroke-width": 1.6, "data-series": s.key});
    add("rect", {x: L + 10 + i * 170, y: T, width: 12, height: 4, fill: COLORS[i % COLORS.length]});
    add("text", {x: L + 26 + i * 170, y: T + 6}, s.label);
  });
  el.innerHTML = ""; el.appendChild(svg);
}

function drawRates(points) {
  if (!points.length) return;
  lineChart($("#ov-chart"), points, [
    {key: "packets_per_s", label: "packets/s"}, {key: "exchanges_per_s", label: "exchanges/s"},
    {key: "compared_per_s", label: "compared/s"}, {key: "kernel_drops_per_s", label: "kernel drops/s"},
    {key: "shed_per_s", label: "shed/s"}], {});
}

// ---- findings ----------------------------------------------------------------------------
const rate = (n, of) => of ? ` (${(100 * n / of).toFixed(n === of || n === 0 ? 0 : 1)} %)` : "";
const pval = (v) => v === null || v === undefined ? "-" : Number(v).toExponential(1);
function findingRow(f, group) {
  const sec = f.secondary_diffs === null ? "-" : `${f.secondary_diffs}/${f.compared}${rate(f.secondary_diffs, f.compared)}`;
  const last = `<td class=n>${pval(f.p_adjusted)}</td>` + (group === "noise" ? `<td>${esc(f.reason)}</td>` : "");
  const btn = f.marked ? `<span class="muted">marked</span>`
    : (group === "noise" ? "" : `<button class="mark" data-noise="1">mark as noise</button> ` +
       `<button class="mark" data-noise="1" data-all="1" title="this field and kind on every endpoint">… on all endpoints</button>`);
  return `<tr class="click ${group === "regressions" ? "reg" : ""}" data-endpoint="${esc(f.endpoint)}" data-field="${esc(f.field)}" data-kind="${esc(f.kind)}">` +
    `<td>${esc(f.endpoint)}</td><td><code>${esc(f.field)}</code></td><td>${esc(f.kind)}</td>` +
    `<td class=n>${f.candidate_diffs}/${f.compared}${rate(f.candidate_diffs, f.compared)}</td><td class=n>${sec}</td>${last}<td>${btn}</td></tr>`;
}

function renderFindings(d) {
  state.findings = d;
  const s = d.summary;
  $("#fd-summary").textContent = !d.shadowing ? "No shadowing section in the config: nothing is compared." :
    s ? `Verdict ${s.verdict.toUpperCase()}: ${s.regressions} regression(s) in ${s.regression_requests} of ${s.compared} compared requests; ${s.noise} noise, ${s.undecided} undecided. ` +
      `${d.marks.length} field(s) marked as noise from this console. Click a row for its examples.` : "No verdict yet.";
  const ep = state.endpoint;
  $("#fd-ep-filter").textContent = ep ? `of ${ep} (click it again for all)` : "(all endpoints)";
  const tb = $("#fd-endpoints tbody"); tb.innerHTML = "";
  for (const e of d.endpoints) {
    tb.insertAdjacentHTML("beforeend", `<tr class="click ${e.regressions ? "reg" : ""} ${e.endpoint === ep ? "sel" : ""}" data-ep="${esc(e.endpoint)}"><td>${esc(e.endpoint)}</td><td class=n>${e.compared}</td><td class=n>${e.regressions}</td><td class=n>${e.noise}</td><td class=n>${e.undecided}</td></tr>`);
  }
  for (const g of ["regressions", "undecided", "noise"]) {
    const body = $(`#fd-${g} tbody`);
    const rows = d[g].filter((f) => !ep || f.endpoint === ep);
    body.innerHTML = rows.length ? rows.map((f) => findingRow(f, g)).join("") : `<tr><td colspan=8 class="muted">none</td></tr>`;
  }
  $("#fd-noise-count").textContent = `(${d.noise_total})`;
  $("#fd-marks tbody").innerHTML = d.marks.map((m) => `<tr data-endpoint="${esc(m.endpoint)}" data-field="${esc(m.field)}" data-kind="${esc((m.kinds || [])[0] || "")}"><td>${esc(m.endpoint)}</td><td><code>${esc(m.field)}</code></td><td>${esc((m.kinds || []).join(", ") || "any")}</td><td><button class="mark" data-noise="0">un-mark</button></td></tr>`).join("") ||
    `<tr><td colspan=4 class="muted">none</td></tr>`;
  $("#fd-marks-file").textContent = d.rules_file ? `Saved to ${d.rules_file} (the rules format of shadowtap diff --rules); the verdict applies them at once.` : "Kept in memory (no console.rules_file and no shadowing.report to put it beside); the verdict applies them at once.";
}

async function loadFindings() {
  renderFindings(await api("/api/findings"));
  const m = (location.hash || "").match(/^#findings\/(.+)$/);
  if (m) openFinding(...JSON.parse(decodeURIComponent(m[1])));
}

async function openFinding(endpoint, field, kind) {
  const q = new URLSearchParams({endpoint, field, kind});
  const f = await api("/api/finding?" + q);
  const box = $("#fd-detail");
  box.hidden = false;
  if (f.error) { $("#fd-detail-title").textContent = f.error; $("#fd-examples").innerHTML = ""; return; }
  $("#fd-detail-title").innerHTML = `<code>${esc(f.endpoint)}</code> <code>${esc(f.field)}</code> ${esc(f.kind)} — ${esc(f.verdict)}`;
  const sec = f.secondary_diffs === null ? "-" : `${f.secondary_diffs}/${f.compared}`;
  $("#fd-detail-sub").textContent = `${f.names.candidate} differs in ${f.candidate_diffs}/${f.compared}, ${f.names.secondary} in ${sec}` +
    (f.p_adjusted !== null && f.p_adjusted !== undefined ? `; p = ${f.p_value}, Holm-adjusted ${f.p_adjusted}` : "") +
    (f.reason && !f.reason.startsWith("candidate differs in") ? `. ${f.reason}` : "") + ".";
  // Server-rendered by replay.report's highlighter: every body byte is HTML-escaped there.
  $("#fd-examples").innerHTML = (f.examples || []).map((ex) =>
    `<details open class="example"><summary>request <code>${esc(ex.id)}</code>: <code>${esc(ex.request)}</code> — production <code>${esc(ex.primary_value)}</code> → ${esc(f.names.candidate)} <code>${esc(ex.candidate_value)}</code></summary>${ex.html}</details>`
  ).join("") || `<p class="muted">No examples kept for this field (noise covered by a rule keeps none).</p>`;
  box.scrollIntoView({behavior: "instant", block: "start"});
}

async function mark(endpoint, field, kind, noise) {
  const r = await api("/api/noise", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({endpoint, field, kind, noise})});
  if (r.verdict) renderOverview(await api("/api/overview"));
  await loadFindings();
}

document.addEventListener("click", (ev) => {
  const b = ev.target.closest("button.mark");
  if (b) {
    ev.stopPropagation();
    const tr = b.closest("tr");
    mark(b.dataset.all ? "*" : tr.dataset.endpoint, tr.dataset.field, tr.dataset.kind, b.dataset.noise === "1");
    return;
  }
  const epRow = ev.target.closest("#fd-endpoints tr[data-ep]");
  if (epRow) { state.endpoint = state.endpoint === epRow.dataset.ep ? null : epRow.dataset.ep; renderFindings(state.findings); return; }
  const fr = ev.target.closest("table.findings tr[data-field]");
  if (fr) { openFinding(fr.dataset.endpoint, fr.dataset.field, fr.dataset.kind); return; }
  const er = ev.target.closest("#ex-table tr[data-id]");
  if (er) { openExchange(er.dataset.id); }
});

// ---- exchanges ---------------------------------------------------------------------------
function exQuery() {
  const f = new FormData($("#ex-filter"));
  const q = new URLSearchParams();
  for (const k of ["method", "status", "host", "q"]) if (f.get(k)) q.set(k, f.get(k));
  q.set("offset", state.exOffset); q.set("limit", state.exLimit);
  return q;
}

async function loadExchanges() {
  const d = await api("/api/exchanges?" + exQuery());
  const tb = $("#ex-table tbody");
  tb.innerHTML = d.rows.map((r) => `<tr class="click" data-id="${esc(r.id)}"><td class=n>${r.seq}</td><td>${new Date(r.time * 1000).toLocaleTimeString()}</td><td>${esc(r.method)}</td><td>${esc(r.host)}</td><td>${esc(r.path)}</td><td class=n>${r.status ?? "-"}</td><td class=n>${fmt(r.latency_ms, 2)}</td><td>${esc(r.protocol)}</td></tr>`).join("");
  $("#ex-info").textContent = !d.sanitised ? "The exchange list is off: this appliance does not sanitise (pipeline.sanitise.enabled: false), and the console only shows sanitised data." :
    `${fmt(d.total, 0)} matching among the ${fmt(d.kept, 0)} most recent (ring of ${fmt(d.ring, 0)}); ${fmt(d.seen, 0)} exchanges logged since start` +
    (d.not_listed ? `, ${fmt(d.not_listed, 0)} of them not listed (beyond the console's parse budget)` : "") + ". Sanitised, as written to the exchange log.";
  $("#ex-page").textContent = d.total ? `${d.offset + 1}–${Math.min(d.offset + d.limit, d.total)} of ${fmt(d.total, 0)}` : "";
}
document.addEventListener("DOMContentLoaded", () => {
  $("#ex-filter").addEventListener("submit", (e) => { e.preventDefault(); state.exOffset = 0; loadExchanges(); });
  $("#ex-prev").addEventListener("click", () => { state.exOffset = Math.max(0, state.exOffset - state.exLimit); loadExchanges(); });
  $("#ex-next").addEventListener("click", () => { state.exOffset += state.exLimit; loadExchanges(); });
  $("#lat-endpoint").addEventListener("change", (e) => { state.latEndpoint = e.target.value; loadLatency(); });
  show((location.hash || "#overview").slice(1).split("/")[0]);
  connect();
});

async function openExchange(id) {
  const d = await api("/api/exchange?id=" + encodeURIComponent(id));
  const pre = $("#ex-detail"); pre.hidden = false;
  pre.textContent = JSON.stringify(d, null, 2);
}

// ---- latency -----------------------------------------------------------------------------
async function loadLatency() {
  const d = await api("/api/latency" + (state.latEndpoint ? "?endpoint=" + encodeURIComponent(state.latEndpoint) : ""));
  const sel = $("#lat-endpoint");
  if (!state.latEndpoint && d.endpoints.length) { state.latEndpoint = d.endpoints[0]; return loadLatency(); }
  sel.innerHTML = d.endpoints.map((e) => `<option ${e === state.latEndpoint ? "selected" : ""}>${esc(e)}</option>`).join("");
  if (d.points && d.points.length) {
    lineChart($("#lat-chart"), d.points, [{key: "production_p50_ms", label: "production p50 ms"},
      {key: "secondary_p50_ms", label: "secondary p50 ms"}, {key: "candidate_p50_ms", label: "candidate p50 ms"}], {});
  } else { $("#lat-chart").textContent = "No latency samples yet (one point per verdict)."; }
  const f = (v) => v === null || v === undefined ? "-" : Number(v).toFixed(1);
  $("#lat-table tbody").innerHTML = d.now.map((r) => `<tr class="${r.regression ? "reg" : ""}"><td>${esc(r.endpoint)}</td><td class=n>${Math.max(r.production_n || 0, r.secondary_n || 0, r.candidate_n || 0)}</td>` +
    ["production", "secondary", "candidate"].map((k) => `<td class=n>${f(r[k + "_p50_ms"])} / ${f(r[k + "_p90_ms"])}</td>`).join("") +
    `<td>${r.regression ? "<b class=down>SLOWER</b>" : "ok"}</td></tr>`).join("");
}

// ---- canary, shadows ---------------------------------------------------------------------
async function loadCanary() {
  const d = await api("/api/canary");
  const s = d.status;
  $("#cn-note").textContent = d.note + (d.error ? " (" + d.error + ")" : "");
  $("#cn-status").textContent = s ? JSON.stringify(s, null, 2) : "No canary status file configured (console.canary_status).";
  $("#cn-actions").hidden = !d.controls;
  if (s && s.state !== undefined) {
    const steps = s.steps || [];
    $("#cn-summary").textContent = `${s.state}${s.paused ? " (paused)" : ""}${s.gate_holding ? " (waiting for confirm-promotion)" : ""}: step ${Number(s.step ?? -1) + 1}/${steps.length}, canary weight ${fmt(s.weight)} %` + ((s.reasons || []).length ? " - " + s.reasons.join("; ") : "");
  } else { $("#cn-summary").textContent = ""; }
  // weight and step over time: the controller's timeline (one point per applied weight, held
  // until the next one, and "now" while it runs)
  const tl = (s && s.timeline) || [];
  if (tl.length) {
    const pts = [];
    tl.forEach((p, i) => { if (i) pts.push({t: p.t - 0.001, weight: tl[i - 1].weight, step: tl[i - 1].step}); pts.push({t: p.t, weight: p.weight, step: p.step}); });
    if (s.state === "running") pts.push({t: Date.now() / 1000, weight: s.weight, step: Number(s.step) + 1});
    lineChart($("#cn-chart"), pts, [{key: "weight", label: "canary weight %"}, {key: "step", label: "step"}], {height: 180});
  } else { $("#cn-chart").innerHTML = ""; }
  // the judge's results over time: one row per judged step (the rollout's history), then the
  // evidence of the step in progress
  const side = (d) => d ? `${fmt(d.requests, 0)} req, ${pct(d.error_rate)} errors, p95 ${fmt(d.p95_ms)} ms` : "-";
  const hist = (s && s.history) || [];
  const cur = s && s.state === "running" && s.current ? [{step: Number(s.step) + 1, weight: s.weight, seconds: s.step_elapsed, decision: "judging…", reasons: [], ...s.current}] : [];
  $("#cn-judge tbody").innerHTML = hist.concat(cur).map((h) => `<tr class="${h.decision === "rollback" ? "reg" : ""}"><td class=n>${esc(h.step)}</td><td class=n>${fmt(h.weight)} %</td><td class=n>${fmt(h.seconds)}</td><td>${side(h.prod)}</td><td>${side(h.canary)}</td><td><b>${esc(h.decision)}</b>${h.judgement ? ` (judge: ${esc(h.judgement.outcome)}${h.judgement.score === null || h.judgement.score === undefined ? "" : ", score " + fmt(h.judgement.score)})` : ""}</td><td>${esc((h.reasons || []).join("; "))}</td></tr>`).join("") ||
    `<tr><td colspan=7 class=muted>no step judged yet</td></tr>`;
}

document.addEventListener("click", async (e) => {
  const b = e.target.closest("#cn-actions button[data-verb]");
  if (!b) return;
  const verb = b.dataset.verb;
  if (verb === "abort" && !window.confirm("Roll the canary back now?")) return;
  const r = await api("/api/canary/" + verb, {method: "POST", headers: {"Content-Type": "application/json"}, body: "{}"});
  $("#cn-result").textContent = r.error ? "refused: " + r.error : `${verb}: ${r.state}, step ${r.step ?? "-"}, weight ${fmt(r.weight)} %`;
  loadCanary();
});

async function loadShadows() {
  const d = await api("/api/shadows");
  $("#sh-live tbody").innerHTML = Object.entries(d.live).map(([n, s]) => `<tr><td>${esc(n)}</td><td>${esc(s.role)}</td><td>${esc(s.url)}</td><td class="${s.up ? "up" : "down"}">${s.up ? "up" : "DOWN"}</td><td class=n>${fmt(s.answered, 0)}</td><td class=n>${fmt(s.failed, 0)}</td><td>${esc((s.transitions || []).slice(-3).map((t) => new Date(t.t * 1000).toLocaleTimeString() + " " + t.state + (t.why ? " (" + t.why + ")" : "")).join("; "))}</td></tr>`).join("") || `<tr><td colspan=7 class=muted>no shadowing</td></tr>`;
  if (Array.isArray(d.pool)) {
    $("#sh-pool tbody").innerHTML = d.pool.map((r) => `<tr><td>${esc(r.name)}</td><td>${esc(r.backend)}</td><td>${esc(r.addr)}</td><td>${esc(r.image)}</td><td>${esc(r.branch)}</td><td>${r.expires ? new Date(r.expires * 1000).toLocaleString() : "-"}</td><td>${esc(r.status)}</td></tr>`).join("") || `<tr><td colspan=7 class=muted>the pool is empty</td></tr>`;
    $("#sh-pool-note").textContent = "";
  } else { $("#sh-pool-note").textContent = "pool: " + (d.pool && d.pool.error); }
  // the image pushes of shadowtap build-hook / image push, and their verdicts (newest first)
  $("#sh-builds tbody").innerHTML = (d.builds || []).map((b) => `<tr class="${b.verdict === "fail" ? "reg" : ""}"><td>${new Date(b.started * 1000).toLocaleString()}</td><td>${esc(b.image)}</td><td><code>${esc(b.snapshot)}</code></td><td>${esc(b.stage)}</td><td class=n>${b.switched}/${b.shadows}</td><td class=n>${fmt(b.push_seconds, 2)}</td><td class=${b.verdict === "pass" ? "up" : "down"}>${esc(b.verdict)}</td><td>${esc((b.failed || []).join(", "))}</td></tr>`).join("") ||
    `<tr><td colspan=8 class=muted>${esc(d.builds_note || "no pushes recorded")}</td></tr>`;
}

// ---- live updates ------------------------------------------------------------------------
let lastRates = 0;
function connect() {
  const es = new EventSource("/api/events");
  const live = $("#live");
  es.onopen = () => { live.textContent = "● live"; live.classList.add("on"); };
  es.onerror = () => { live.textContent = "○ reconnecting"; live.classList.remove("on"); };
  es.addEventListener("overview", (e) => {
    const ov = JSON.parse(e.data);
    renderOverview(ov);
    if (state.page === "overview" && Date.now() - lastRates > 2000) { lastRates = Date.now(); api("/api/rates?points=300").then(drawRates); }
    if (state.page === "exchanges" && $("#ex-filter [name=follow]").checked && state.exOffset === 0) loadExchanges();
    if (state.page === "canary" && Date.now() - lastRates > 2000) { lastRates = Date.now(); loadCanary(); }
  });
  es.addEventListener("verdict", () => {
    if (state.page === "findings") api("/api/findings").then(renderFindings);
    if (state.page === "latency") loadLatency();
    if (state.page === "shadows") loadShadows();
  });
}
