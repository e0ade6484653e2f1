// The admin dashboard: one self-contained page (no external files, so it
// works on machines without internet) that polls /status and /metrics.
#include "dispatcher/admin/admin_server.h"

namespace tandem::dispatcher {

std::string_view DashboardHtml() {
  static constexpr std::string_view kPage = R"HTML(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tandem</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:10px 18px;display:flex;gap:18px;align-items:center}
header h1{font-size:18px;margin:0}
main{padding:14px 18px}
.cluster{background:#fff;border:1px solid #d9dce3;border-radius:6px;margin-bottom:16px;padding:10px 14px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eceef2;font-variant-numeric:tabular-nums;vertical-align:middle}
.state{font-weight:600;padding:1px 6px;border-radius:4px}
.up{background:#d6f5df;color:#135d2a}.down,.ejected{background:#fbdada;color:#8a1616}
.unknown{background:#eceef2;color:#4b5263}.draining,.slow-start{background:#fff1c9;color:#7a5a00}
.disabled{background:#e3e3e3;color:#555}
.panic{color:#8a1616;font-weight:700}
.timeline li{margin:2px 0}.muted{color:#6b7280}
input{font:inherit;padding:2px 6px}button{font:inherit;margin-right:4px}
.charts{display:flex;flex-wrap:wrap;gap:10px;margin:4px 0 12px}
.charts .window{align-self:flex-end;font-size:12px}
.panel{border:1px solid #eceef2;border-radius:4px;padding:4px 8px 2px}
.panel .title{font-size:12px;color:#4b5263;white-space:nowrap}
.panel .title b{color:#1d2330;font-weight:600}
svg.chart{display:block;background:#fafbfc}
svg.chart path{fill:none;stroke-width:1.5;stroke-linejoin:round;stroke-linecap:round}
svg.chart .axis{stroke:#d9dce3;stroke-width:1}
svg.chart .peak{font-size:10px;fill:#6b7280}
.s-inflight{stroke:#2563eb}.s-limit{stroke:#6b7280;stroke-dasharray:4 3}
.s-queue{stroke:#7c3aed}.s-503{stroke:#dc2626}.s-429{stroke:#ea8a00}
.s-p99{stroke:#0d9488}.s-rps{stroke:#2563eb}.s-errors{stroke:#dc2626}
.k-inflight{color:#2563eb}.k-limit{color:#6b7280}.k-503{color:#dc2626}.k-429{color:#ea8a00}
td.spark,td.actions{white-space:nowrap}td.spark svg{display:inline-block;vertical-align:middle;margin-right:6px}
</style></head><body>
<header><h1>tandem</h1><span id="meta" class="muted"></span>
<span style="margin-left:auto">token <input id="token" type="password" size="12"></span></header>
<main><div id="clusters">loading…</div>
<div class="cluster"><h3>Recent transitions</h3><ul id="timeline" class="timeline"></ul></div></main>
<script>
"use strict";
// Charts cover the last five minutes: one point per poll, kept while the page
// is open (docs/dashboard.md says what each one shows and where it comes from).
const POLL_MS = 2000, POINTS = 150, WINDOW_MS = POLL_MS * POINTS;
const rings = new Map();  // "cluster|NAME" or "backend|NAME|ADDRESS" -> samples, oldest first
let prev = null, prevAt = 0;  // the previous poll's counters and when it ran

function esc(s){return String(s).replace(/[&<>"']/g,c=>({"&":"&amp;","<":"&lt;",">":"&gt;","\"":"&quot;","'":"&#39;"}[c]));}

// The Prometheus text format: name -> [{labels, value}].
function parseMetrics(text){
  const families = new Map();
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?[ \t]+(\S+)/);
    if (!m) continue;
    const labels = {};
    (m[2] || "").replace(/([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"/g, (_, k, v) => {
      labels[k] = v.replace(/\\(.)/g, (_, c) => c === "n" ? "\n" : c);
    });
    const value = m[3] === "+Inf" ? Infinity : m[3] === "-Inf" ? -Infinity : Number(m[3]);
    if (!families.has(m[1])) families.set(m[1], []);
    families.get(m[1]).push({labels, value});
  }
  return families;
}
function matches(labels, want){return Object.keys(want).every(k => labels[k] === want[k]);}
function total(families, name, want){
  let sum = 0;
  for (const s of families.get(name) || []) if (matches(s.labels, want)) sum += s.value;
  return sum;
}
// A histogram's cumulative buckets [{le, count}] by upper bound, or null.
function buckets(families, name, want){
  const byLe = new Map();
  for (const s of families.get(name + "_bucket") || []) {
    if (!matches(s.labels, want)) continue;
    const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
    byLe.set(le, (byLe.get(le) || 0) + s.value);
  }
  if (!byLe.size) return null;
  return [...byLe].map(([le, count]) => ({le, count})).sort((a, b) => a.le - b.le);
}
// What the buckets counted since `before`; null after a reset or a change of bounds.
function bucketDelta(now, before){
  if (!now || !before || now.length !== before.length) return null;
  const out = [];
  for (let i = 0; i < now.length; i++) {
    const count = now[i].count - before[i].count;
    if (now[i].le !== before[i].le || count < 0) return null;
    out.push({le: now[i].le, count});
  }
  return out;
}
// Quantile q of cumulative buckets, as Prometheus' histogram_quantile computes
// it: linear interpolation inside the bucket holding the rank; in the +Inf
// bucket, the highest finite bound. null when the buckets counted nothing.
function histogramQuantile(q, list){
  if (!list || list.length < 2 || list[list.length - 1].le !== Infinity) return null;
  const b = list.map(x => ({le: x.le, count: x.count}));
  for (let i = 1; i < b.length; i++) if (b[i].count < b[i - 1].count) b[i].count = b[i - 1].count;
  const observations = b[b.length - 1].count;
  if (!(observations > 0)) return null;
  let rank = q * observations;
  const i = b.findIndex(x => x.count >= rank);
  if (i === b.length - 1) return b[b.length - 2].le;
  if (i === 0 && b[0].le <= 0) return b[0].le;
  let start = 0, count = b[i].count;
  if (i > 0) { start = b[i - 1].le; count -= b[i - 1].count; rank -= b[i - 1].count; }
  return start + (b[i].le - start) * (rank / count);
}

// The counters this poll read, keyed by what they count.
function readCounters(status, families){
  const out = {};
  for (const c of status.clusters) {
    const cluster = {cluster: c.name};
    const listeners = status.listeners.filter(l => l.cluster === c.name).map(l => l.name);
    out["503|" + c.name] = total(families, "tandem_no_backend_total", cluster);
    out["429|" + c.name] = total(families, "tandem_rate_limit_requests_total", {...cluster, result: "limited"}) +
      listeners.reduce((sum, l) => sum + total(families, "tandem_rate_limit_requests_total", {listener: l, result: "limited"}), 0);
    out["hist|" + c.name] = buckets(families, "tandem_request_duration_seconds", cluster);
    for (const b of c.backends) {
      const backend = {cluster: c.name, backend: b.address}, key = c.name + "|" + b.address;
      out["responses|" + key] = total(families, "tandem_backend_responses_total", backend);
      out["5xx|" + key] = total(families, "tandem_backend_responses_total", {...backend, code_class: "5xx"});
      out["hist|" + key] = buckets(families, "tandem_backend_request_duration_seconds", backend);
    }
  }
  return out;
}
function record(key, sample, seen){
  seen.add(key);
  if (!rings.has(key)) rings.set(key, []);
  const ring = rings.get(key);
  ring.push(sample);
  while (ring.length > POINTS) ring.shift();
  return ring;
}

// ---- charts: inline SVG, drawn here from the samples ---------------------------------
function fmt(v, unit){
  if (v === null || v === undefined || !isFinite(v)) return "–";
  if (unit === "s") return v < 1 ? (v * 1000).toPrecision(3).replace(/\.?0+$/, "") + " ms" : v.toPrecision(3) + " s";
  if (unit === "%") return (v * 100).toFixed(v < 0.1 ? 1 : 0) + " %";
  if (unit === "/s") return (v < 10 ? v.toFixed(1) : v.toFixed(0)) + "/s";
  return String(Math.round(v * 10) / 10);
}
// One SVG: `lines` are [{field, cls}] of `samples`; x is time over the window
// ending now, y starts at 0. A null value leaves a gap.
// The taller ones name their highest value in the window, in `unit`.
function chart(name, samples, lines, width, height, now, floor, unit){
  let peak = null;
  for (const s of samples) for (const l of lines) {
    const v = s[l.field];
    if (v !== null && v !== undefined && isFinite(v) && now - s.t <= WINDOW_MS) peak = Math.max(peak ?? v, v);
  }
  const top = Math.max(floor || 1, peak ?? 0) * 1.1;
  const x = t => (width - (now - t) / WINDOW_MS * width).toFixed(1);
  const y = v => (height - 1 - v / top * (height - 3)).toFixed(1);
  let paths = "", points = 0;
  for (const l of lines) {
    let d = "", open = false;
    for (const s of samples) {
      const v = s[l.field];
      if (v === null || v === undefined || !isFinite(v) || now - s.t > WINDOW_MS) { open = false; continue; }
      d += (open ? "L" : (d ? " M" : "M")) + x(s.t) + " " + y(v) + (open ? " " : "l0 0 ");
      open = true;
      points++;
    }
    paths += `<path class="s-${l.cls}" data-series="${l.cls}" d="${d.trim()}"/>`;
  }
  const label = height >= 40 && peak !== null ? `<text class="peak" x="3" y="10">peak ${fmt(peak, unit)}</text>` : "";
  return `<svg class="chart" data-chart="${name}" data-points="${points}" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">` +
    `<line class="axis" x1="0" y1="${height - 0.5}" x2="${width}" y2="${height - 0.5}"/>${label}${paths}</svg>`;
}
function panel(title, svg){return `<div class="panel"><div class="title">${title}</div>${svg}</div>`;}

function clusterCharts(c, ring, now){
  const last = ring[ring.length - 1];
  const limit = c.concurrency_limit === null || c.concurrency_limit === undefined
    ? "unlimited" : `${esc(c.concurrency_limit)} <span class="muted">(${esc(c.concurrency_limit_from)})</span>`;
  const W = 260, H = 64;
  return `<div class="charts">` +
    panel(`<span class="k-inflight">in flight</span> <b>${fmt(last.inflight)}</b> · <span class="k-limit">limit</span> <b>${limit}</b>`,
          chart("concurrency", ring, [{field: "inflight", cls: "inflight"}, {field: "limit", cls: "limit"}], W, H, now)) +
    panel(`queue length <b>${fmt(last.queue)}</b>`, chart("queue", ring, [{field: "queue", cls: "queue"}], W, H, now)) +
    panel(`rejected <b>${fmt(last.rejected, "/s")}</b> · <span class="k-503">503</span> ${fmt(last.r503, "/s")} · <span class="k-429">429</span> ${fmt(last.r429, "/s")}`,
          chart("rejections", ring, [{field: "r503", cls: "503"}, {field: "r429", cls: "429"}], W, H, now, 1, "/s")) +
    panel(`p99 latency <b>${fmt(last.p99, "s")}</b>`, chart("p99", ring, [{field: "p99", cls: "p99"}], W, H, now, 0.001, "s")) +
    `<div class="muted window">last 5 minutes, every ${POLL_MS / 1000} s</div></div>`;
}
function sparkline(name, ring, field, now, floor, unit){
  const last = ring[ring.length - 1][field];
  return chart(name, ring, [{field, cls: name}], 110, 24, now, floor, unit) + `<span>${fmt(last, unit)}</span>`;
}

async function act(cluster, address, action){
  const token = document.getElementById("token").value;
  const r = await fetch(`/admin/clusters/${encodeURIComponent(cluster)}/backends/${encodeURIComponent(address)}/${action}`,
    {method:"POST", headers:{"Authorization":"Bearer "+token}});
  alert(action + ": " + r.status + " " + (await r.text()));
}
document.addEventListener("click", e => {
  const button = e.target.closest("button[data-action]");
  if (!button) return;
  const row = button.closest("tr[data-backend]"), cluster = button.closest("div[data-cluster]");
  act(cluster.dataset.cluster, row.dataset.backend, button.dataset.action);
});

async function refresh(){
  try {
    const [status, metrics] = await Promise.all([
      fetch("/status").then(r=>r.json()), fetch("/metrics").then(r=>r.text())]);
    const families = parseMetrics(metrics), counters = readCounters(status, families), now = Date.now();
    const dt = prev ? (now - prevAt) / 1000 : 0;
    const rate = key => dt > 0 && prev[key] !== undefined && counters[key] >= prev[key] ? (counters[key] - prev[key]) / dt : null;
    const p99 = key => prev ? histogramQuantile(0.99, bucketDelta(counters[key], prev[key])) : null;
    const seen = new Set();
    document.getElementById("meta").textContent =
      `v${status.version} · config ${status.config.path} · last reload ${status.config.last_reload.ok ? "ok" : "FAILED"} at ${status.config.last_reload.at}`;
    const events = [];
    let html = "";
    for (const c of status.clusters) {
      const r503 = rate("503|" + c.name), r429 = rate("429|" + c.name);
      const ring = record("cluster|" + c.name, {
        t: now, limit: c.concurrency_limit ?? null,
        inflight: c.backends.reduce((sum, b) => sum + Number(b.inflight || 0), 0),
        queue: total(families, "tandem_queue_length", {cluster: c.name}),
        r503, r429, rejected: r503 === null || r429 === null ? null : r503 + r429,
        p99: p99("hist|" + c.name)}, seen);
      html += `<div class="cluster" data-cluster="${esc(c.name)}"><h2>${esc(c.name)} <small class="muted">${esc(c.policy)} · ${esc(c.algorithm)}</small>
        ${c.panic ? '<span class="panic">PANIC: routing over all backends</span>' : ""}</h2>
        ${clusterCharts(c, ring, now)}
        <table><tr><th>backend</th><th>role</th><th>standby</th><th>state</th><th>active</th><th>weight</th><th>in flight</th><th>req/s</th><th>5xx</th><th>p99</th><th>last reason</th><th></th></tr>`;
      for (const b of c.backends) {
        const key = c.name + "|" + b.address, responses = rate("responses|" + key), errors = rate("5xx|" + key);
        const spark = record("backend|" + key, {t: now, rps: responses,
          errors: responses ? errors / responses : null, p99: p99("hist|" + key)}, seen);
        const latency = counters["hist|" + key]
          ? sparkline("p99", spark, "p99", now, 0.001, "s")
          : `<span class="muted" title="tandem exports no request duration histogram per backend">n/a</span>`;
        const last = b.transitions.length ? b.transitions[b.transitions.length - 1] : null;
        for (const t of b.transitions) events.push({...t, cluster: c.name, address: b.address});
        const source = b.source && b.source !== "config" ? `<br><small class="muted">${esc(b.source)}</small>` : "";
        html += `<tr data-backend="${esc(b.address)}"><td>${esc(b.address)}${source}</td><td>${esc(b.role)}</td><td>${esc(b.standby ?? "–")}</td>
          <td><span class="state ${esc(b.state)}">${esc(b.state)}</span></td><td>${b.active ? "yes" : "no"}</td>
          <td>${esc(b.effective_weight)}/${esc(b.weight)}</td><td>${esc(b.inflight)}</td>
          <td class="spark rps">${sparkline("rps", spark, "rps", now, 1, "/s")}</td>
          <td class="spark errors">${sparkline("errors", spark, "errors", now, 0.01, "%")}</td>
          <td class="spark p99">${latency}</td>
          <td class="reason">${last ? esc(last.reason) : ""}</td>
          <td class="actions"><button data-action="drain">drain</button><button data-action="enable">enable</button></td></tr>`;
      }
      html += "</table></div>";
    }
    for (const key of [...rings.keys()]) if (!seen.has(key)) rings.delete(key);
    document.getElementById("clusters").innerHTML = html;
    events.sort((a, b) => a.at < b.at ? 1 : -1);
    document.getElementById("timeline").innerHTML = events.slice(0, 50).map(e =>
      `<li><span class="muted">${esc(e.at)}</span> ${esc(e.cluster)}/${esc(e.address)}: ${esc(e.from)} → <b>${esc(e.to)}</b> — ${esc(e.reason)}</li>`).join("") || "<li class='muted'>none yet</li>";
    prev = counters; prevAt = now;
  } catch (e) {
    document.getElementById("meta").textContent = "cannot reach tandem: " + e;
  }
}
refresh(); setInterval(refresh, POLL_MS);
</script></body></html>
)HTML";
  return kPage;
}

}  // namespace tandem::dispatcher
