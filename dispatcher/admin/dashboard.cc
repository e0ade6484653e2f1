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
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eceef2;font-variant-numeric:tabular-nums}
.state{font-weight:600;padding:1px 6px;border-radius:4px}
.up{background:#d6f5df;color:#135d2a}.down,.ejected{background:#fbdada;color:#8a1616}
.unknown{background:#eceef2;color:#4b5263}.draining,.slow-start{background:#fff1c9;color:#7a5a00}
.disabled{background:#e3e3e3;color:#555}
.panic{color:#8a1616;font-weight:700}
.timeline li{margin:2px 0}.muted{color:#6b7280}
input{font:inherit;padding:2px 6px}button{font:inherit;margin-right:4px}
</style></head><body>
<header><h1>tandem</h1><span id="meta" class="muted"></span>
<span style="margin-left:auto">token <input id="token" type="password" size="12"></span></header>
<main><div id="clusters">loading…</div>
<div class="cluster"><h3>Recent transitions</h3><ul id="timeline" class="timeline"></ul></div></main>
<script>
"use strict";
let prev = {}, prevAt = 0;
function esc(s){return String(s).replace(/[&<>"']/g,c=>({"&":"&amp;","<":"&lt;",">":"&gt;","\"":"&quot;","'":"&#39;"}[c]));}
function parseMetrics(text){
  const out = {};
  for (const line of text.split("\n")) {
    const m = line.match(/^tandem_backend_responses_total\{([^}]*)\} ([0-9.e+]+)/);
    if (!m) continue;
    const labels = {}; m[1].replace(/(\w+)="([^"]*)"/g,(_,k,v)=>{labels[k]=v;});
    const key = labels.cluster + "|" + labels.backend;
    out[key] = (out[key] || 0) + Number(m[2]);
  }
  return out;
}
async function act(cluster, address, action){
  const token = document.getElementById("token").value;
  const r = await fetch(`/admin/clusters/${encodeURIComponent(cluster)}/backends/${encodeURIComponent(address)}/${action}`,
    {method:"POST", headers:{"Authorization":"Bearer "+token}});
  alert(action + ": " + r.status + " " + (await r.text()));
}
async function refresh(){
  try {
    const [status, metrics] = await Promise.all([
      fetch("/status").then(r=>r.json()), fetch("/metrics").then(r=>r.text())]);
    const counts = parseMetrics(metrics), now = Date.now();
    const dt = prevAt ? (now - prevAt) / 1000 : 0;
    document.getElementById("meta").textContent =
      `v${status.version} · config ${status.config.path} · last reload ${status.config.last_reload.ok ? "ok" : "FAILED"} at ${status.config.last_reload.at}`;
    const events = [];
    let html = "";
    for (const c of status.clusters) {
      html += `<div class="cluster" data-cluster="${esc(c.name)}"><h2>${esc(c.name)} <small class="muted">${esc(c.policy)} · ${esc(c.algorithm)}</small>
        ${c.panic ? '<span class="panic">PANIC: routing over all backends</span>' : ""}</h2>
        <table><tr><th>backend</th><th>role</th><th>standby</th><th>state</th><th>active</th><th>weight</th><th>in flight</th><th>req/s</th><th>last reason</th><th></th></tr>`;
      for (const b of c.backends) {
        const key = c.name + "|" + b.address;
        const rate = dt && prev[key] !== undefined ? ((counts[key] - prev[key]) / dt).toFixed(1) : "–";
        const last = b.transitions.length ? b.transitions[b.transitions.length - 1] : null;
        for (const t of b.transitions) events.push({...t, cluster: c.name, address: b.address});
        const source = b.source && b.source !== "config" ? `<br><small class="muted">${esc(b.source)}</small>` : "";
        html += `<tr data-backend="${esc(b.address)}"><td>${esc(b.address)}${source}</td><td>${esc(b.role)}</td><td>${esc(b.standby ?? "–")}</td>
          <td><span class="state ${esc(b.state)}">${esc(b.state)}</span></td><td>${b.active ? "yes" : "no"}</td>
          <td>${esc(b.effective_weight)}/${esc(b.weight)}</td><td>${esc(b.inflight)}</td><td>${rate}</td>
          <td class="reason">${last ? esc(last.reason) : ""}</td>
          <td><button onclick='act(${JSON.stringify(c.name)},${JSON.stringify(b.address)},"drain")'>drain</button><button onclick='act(${JSON.stringify(c.name)},${JSON.stringify(b.address)},"enable")'>enable</button></td></tr>`;
      }
      html += "</table></div>";
    }
    document.getElementById("clusters").innerHTML = html;
    events.sort((a, b) => a.at < b.at ? 1 : -1);
    document.getElementById("timeline").innerHTML = events.slice(0, 50).map(e =>
      `<li><span class="muted">${esc(e.at)}</span> ${esc(e.cluster)}/${esc(e.address)}: ${esc(e.from)} → <b>${esc(e.to)}</b> — ${esc(e.reason)}</li>`).join("") || "<li class='muted'>none yet</li>";
    prev = counts; prevAt = now;
  } catch (e) {
    document.getElementById("meta").textContent = "cannot reach tandem: " + e;
  }
}
refresh(); setInterval(refresh, 2000);
</script></body></html>
)HTML";
  return kPage;
}

}  // namespace tandem::dispatcher
