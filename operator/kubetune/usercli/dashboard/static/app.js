// kubetune dashboard: one page, three views (#/ jobs, #/job/NS/NAME, #/compare?jobs=NS/A,NS/B), fed by the
// server's event stream (/api/stream: the state, then every change its watches see). Charts are inline SVG.
"use strict";

const state = { jobs: new Map(), scope: { scopes: [], notes: [], host: "" }, selected: new Set(), live: false };
const COLORS = ["#1f6feb", "#d1242f", "#1a7f37", "#8250df", "#bf8700", "#0a7ea4", "#e16f24", "#57606a"];
const $ = (id) => document.getElementById(id);

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
const keyOf = (job) => `${job.namespace}/${job.name}`;
function fmt(value) {
  if (value === null || value === undefined || value === "") return "–";
  if (typeof value !== "number") return esc(value);
  if (Number.isInteger(value) && Math.abs(value) >= 1000) return String(value);
  if (value !== 0 && (Math.abs(value) < 1e-3 || Math.abs(value) >= 1e5)) return value.toExponential(2);
  return String(Number(value.toPrecision(4)));
}
function age(timestamp) {
  if (!timestamp) return "";
  const s = Math.max(0, (Date.now() - Date.parse(timestamp)) / 1000);
  if (s < 60) return `${Math.round(s)}s`;
  if (s < 3600) return `${Math.round(s / 60)}m`;
  if (s < 172800) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86400)}d`;
}
const phaseBadge = (phase) => `<span class="phase ${esc(phase)}">${esc(phase)}</span>`;
function progressBar(job) {
  const done = job.phase === "Succeeded";
  const percent = done ? 100 : job.percent || 0;
  const text = job.totalSteps ? `${job.step}/${job.totalSteps}` : "";
  return `<span class="bar${done ? " done" : ""}"><span style="width:${percent}%"></span></span>` +
    `<span class="progress-text">${percent}%${text ? " · " + text : ""}</span>`;
}

// ----------------------------------------------------------------------------------------- charts (SVG)

function niceTicks(lo, hi, count) {
  if (hi === lo) { hi = lo + 1; lo = lo - 1; }
  const raw = (hi - lo) / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

function sparkline(points) {
  const w = 120, h = 28;
  if (!points || points.length < 2) return `<svg class="spark" width="${w}" height="${h}"></svg>`;
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const sx = (x) => 2 + ((x - x0) / (x1 - x0 || 1)) * (w - 4), sy = (y) => h - 3 - ((y - y0) / (y1 - y0 || 1)) * (h - 6);
  const line = points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
  const last = points[points.length - 1];
  return `<svg class="spark" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}"><polyline fill="none" stroke="#1f6feb" ` +
    `stroke-width="1.5" points="${line}"/><circle cx="${sx(last[0]).toFixed(1)}" cy="${sy(last[1]).toFixed(1)}" r="2" fill="#1f6feb"/></svg>`;
}

// series: [{label, color, points: [[x, y]], markers}]
function lineChart(series, { title = "", width = 620, height = 300, empty = "no data yet" } = {}) {
  const m = { l: 56, r: 14, t: 46, b: 36 }, pw = width - m.l - m.r, ph = height - m.t - m.b;
  const all = series.flatMap((s) => s.points);
  let svg = `<svg class="chart" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" data-title="${esc(title)}">` +
    `<text x="${m.l}" y="16" style="font-size:13px;font-weight:600">${esc(title)}</text>`;
  if (!all.length) return svg + `<text x="${width / 2}" y="${height / 2}" text-anchor="middle">${esc(empty)}</text></svg>`;
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const pad = (y1 - y0) * 0.06 || Math.abs(y0) * 0.1 || 1;
  y0 -= pad; y1 += pad;
  if (x1 === x0) { x1 = x0 + 1; }
  const sx = (x) => m.l + ((x - x0) / (x1 - x0)) * pw, sy = (y) => m.t + ph - ((y - y0) / (y1 - y0)) * ph;
  for (const t of niceTicks(y0, y1, 5)) {
    if (t < y0 || t > y1) continue;
    svg += `<line class="grid" x1="${m.l}" x2="${m.l + pw}" y1="${sy(t)}" y2="${sy(t)}"/>` +
      `<text x="${m.l - 6}" y="${sy(t) + 4}" text-anchor="end">${fmt(t)}</text>`;
  }
  for (const t of niceTicks(x0, x1, 6)) {
    if (t < x0 || t > x1) continue;
    svg += `<text x="${sx(t)}" y="${m.t + ph + 16}" text-anchor="middle">${fmt(t)}</text>`;
  }
  svg += `<line class="axis" x1="${m.l}" x2="${m.l}" y1="${m.t}" y2="${m.t + ph}"/>` +
    `<line class="axis" x1="${m.l}" x2="${m.l + pw}" y1="${m.t + ph}" y2="${m.t + ph}"/>` +
    `<text x="${m.l + pw / 2}" y="${height - 4}" text-anchor="middle">step</text>`;
  let lx = m.l;
  series.forEach((s) => {
    if (!s.points.length) return;
    const d = s.points.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
    svg += `<path class="series" data-label="${esc(s.label)}" data-points="${s.points.length}" d="${d}" fill="none" ` +
      `stroke="${s.color}" stroke-width="1.8"/>`;
    if (s.markers) svg += s.points.map((p) => `<circle cx="${sx(p[0]).toFixed(1)}" cy="${sy(p[1]).toFixed(1)}" r="3" fill="${s.color}"/>`).join("");
    svg += `<rect x="${lx}" y="26" width="10" height="10" fill="${s.color}"/><text x="${lx + 14}" y="35">${esc(s.label)}</text>`;
    lx += 24 + 7 * s.label.length;
  });
  return svg + "</svg>";
}

function curves(points) {
  const series = (key) => points.filter((p) => typeof p[key] === "number").map((p) => [p.step, p[key]]).sort((a, b) => a[0] - b[0]);
  const evalKeys = [...new Set(points.flatMap((p) => Object.keys(p).filter((k) => k.startsWith("eval_") && k.endsWith("loss"))))]
    .sort((a, b) => (a !== "eval_loss") - (b !== "eval_loss") || a.localeCompare(b));
  return { train: series("loss"), evals: evalKeys.map((k) => ({ key: k, points: series(k) })) };
}

// ----------------------------------------------------------------------------------------- views

function renderHeader() {
  $("scope").textContent = `${state.scope.host} · ` +
    (state.scope.scopes.includes("*") ? "all namespaces" : `namespaces: ${state.scope.scopes.join(", ") || "none"}`);
  $("notes").innerHTML = state.scope.notes.map((n) => `<div class="note">${esc(n)}</div>`).join("");
  $("selected-count").textContent = state.selected.size ? `(${state.selected.size})` : "";
  $("connection").textContent = state.live ? "live" : "reconnecting…";
  $("connection").className = "connection" + (state.live ? " live" : "");
  const route = location.hash.split("/")[1] || "";
  $("nav-jobs").className = route === "" || route === "job" ? "active" : "";
  $("nav-compare").className = route.startsWith("compare") ? "active" : "";
}

function renderList() {
  const filter = ($("filter") && $("filter").value.toLowerCase()) || "";
  const jobs = [...state.jobs.values()].filter((j) => !filter || keyOf(j).toLowerCase().includes(filter))
    .sort((a, b) => keyOf(a).localeCompare(keyOf(b)));
  const rows = jobs.map((j) => `<tr class="job-row" data-job="${esc(keyOf(j))}">
      <td><input type="checkbox" class="pick" data-job="${esc(keyOf(j))}" ${state.selected.has(keyOf(j)) ? "checked" : ""}></td>
      <td class="muted">${esc(j.namespace)}</td>
      <td class="cell-name"><a href="#/job/${encodeURIComponent(j.namespace)}/${encodeURIComponent(j.name)}">${esc(j.name)}</a>
        ${j.message && !j.queue ? `<div class="sub" title="${esc(j.message)}">${esc(j.message)}</div>` : ""}</td>
      <td class="cell-phase">${phaseBadge(j.phase)}</td>
      <td class="cell-progress">${progressBar(j)}</td>
      <td class="num cell-loss">${fmt(j.loss)}</td>
      <td class="cell-spark">${sparkline(j.spark)}</td>
      <td class="num">${fmt(j.evalLoss)}</td>
      <td class="num cell-eta">${esc(j.eta || "")}</td>
      <td class="cell-queue">${esc(j.queue)}</td>
      <td class="num">${j.attempts || ""}</td>
      <td class="muted">${age(j.created)}</td>
    </tr>`).join("");
  const table = jobs.length ? `<table id="jobs"><thead><tr><th></th><th>Namespace</th><th>Name</th><th>Phase</th>
      <th>Progress</th><th>Loss</th><th>Loss curve</th><th>Eval loss</th><th>ETA</th><th>Queue</th><th>Attempts</th>
      <th>Age</th></tr></thead><tbody>${rows}</tbody></table>`
    : `<div class="empty">${state.jobs.size ? "no job matches the filter" : "no FineTuneJobs to show yet"}</div>`;
  const focused = document.activeElement && document.activeElement.id === "filter";
  $("view").innerHTML = `<h1>FineTuneJobs <span class="muted" id="job-count">${state.jobs.size}</span></h1>
    <div class="toolbar"><input id="filter" placeholder="filter by namespace/name" value="${esc(filter)}">
    <button id="overlay" ${state.selected.size < 1 ? "disabled" : ""}>Overlay curves of selected (${state.selected.size})</button></div>
    ${table}`;
  const input = $("filter");
  input.oninput = () => renderList();
  if (focused) { input.focus(); input.setSelectionRange(input.value.length, input.value.length); }
  $("overlay").onclick = () => { location.hash = "#/compare?jobs=" + [...state.selected].map(encodeURIComponent).join(","); };
  document.querySelectorAll("input.pick").forEach((box) => {
    box.onchange = () => { box.checked ? state.selected.add(box.dataset.job) : state.selected.delete(box.dataset.job); render(); };
  });
}

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(await response.text());
  return response.json();
}

async function renderJob(namespace, name) {
  let detail, metrics;
  try {
    [detail, metrics] = await Promise.all([getJSON(`/api/jobs/${namespace}/${name}`), getJSON(`/api/jobs/${namespace}/${name}/metrics`)]);
  } catch (err) {
    $("view").innerHTML = `<div class="empty">${esc(err.message)}</div>`;
    return;
  }
  const s = detail.summary, c = curves(metrics.points);
  const card = (label, value) => `<div class="card"><div class="label">${esc(label)}</div><div class="value">${value || "–"}</div></div>`;
  const evalSeries = c.evals.map((e, i) => ({ label: e.key.replace(/^eval_/, "eval "), color: COLORS[(i + 1) % COLORS.length], points: e.points, markers: true }));
  const lossChart = lineChart([{ label: "train loss", color: COLORS[0], points: c.train }, ...evalSeries],
    { title: "loss", width: 900, empty: metrics.error || (metrics.reading ? "reading metrics…" : "no metrics yet") });
  const checkpoints = [...s.checkpoints].sort((a, b) => a.step - b.step).map((ck) =>
    `<tr><td class="num">${ck.step}</td><td class="num">${fmt(ck.evalLoss)}</td><td>${esc(ck.time || "")}</td><td class="uri">${esc(ck.uri)}</td></tr>`).join("");
  const events = detail.events.slice().reverse().map((e) =>
    `<tr><td>${esc(e.type)}</td><td>${esc(e.reason)}</td><td>${esc(e.message)}</td><td class="num">${e.count}</td><td class="muted">${age(e.time)}</td></tr>`).join("");
  const conditions = detail.conditions.map((c2) =>
    `<tr><td>${esc(c2.type)}</td><td>${esc(c2.status)}</td><td>${esc(c2.reason)}</td><td>${esc(c2.message)}</td></tr>`).join("");
  const outputs = Object.entries(detail.outputs).filter(([, v]) => v).map(([k, v]) => `<tr><td>${esc(k)}</td><td class="uri">${esc(v)}</td></tr>`).join("");
  $("view").innerHTML = `<h1 id="job-title">${esc(s.namespace)}/${esc(s.name)} ${phaseBadge(s.phase)}</h1>
    ${s.message ? `<div class="message ${esc(s.phase)}">${esc(s.message)}</div>` : ""}
    <div class="cards">
      ${card("technique / objective", `${esc(s.technique)} / ${esc(s.objective)}`)}
      ${card("progress", progressBar(s))}
      ${card("ETA", esc(s.eta))}
      ${card("loss / eval loss", `${fmt(s.loss)} / ${fmt(s.evalLoss)}`)}
      ${card("attempts", s.attempts)}
      ${card("queue", esc(s.queue))}
      ${card("reason", esc(s.reason))}
      ${card("started / completed", `${esc(s.startTime)}${s.completionTime ? "<br>" + esc(s.completionTime) : ""}`)}
    </div>
    <h2>Curves <button id="compare-this">add to overlay</button></h2>
    <div class="charts"><div class="chart-box" id="loss-chart">${lossChart}</div></div>
    <h2>Checkpoints</h2>${checkpoints ? `<table id="checkpoints"><thead><tr><th>Step</th><th>Eval loss</th><th>Time</th><th>URI</th></tr></thead><tbody>${checkpoints}</tbody></table>` : `<div class="empty">no checkpoint yet</div>`}
    <h2>Outputs</h2>${outputs ? `<table><tbody>${outputs}</tbody></table>` : `<div class="empty">not known yet</div>`}
    <h2>Events</h2>${events ? `<table id="events"><thead><tr><th>Type</th><th>Reason</th><th>Message</th><th>Count</th><th>Age</th></tr></thead><tbody>${events}</tbody></table>` : `<div class="empty">no events</div>`}
    <h2>Conditions</h2><table><thead><tr><th>Type</th><th>Status</th><th>Reason</th><th>Message</th></tr></thead><tbody>${conditions}</tbody></table>
    <h2>Spec</h2><pre class="spec" id="spec">${esc(detail.spec)}</pre>`;
  $("compare-this").onclick = () => { state.selected.add(keyOf(s)); renderHeader(); };
}

async function renderCompare(keys) {
  if (!keys.length) {
    $("view").innerHTML = `<h1>Compare</h1><div class="empty">select jobs on the Jobs page, then “Overlay curves of selected”</div>`;
    return;
  }
  const results = await Promise.all(keys.map(async (key) => {
    try { return [key, await getJSON(`/api/jobs/${key}/metrics`)]; } catch (err) { return [key, { points: [], error: err.message }]; }
  }));
  const train = [], evals = [], notes = [];
  results.forEach(([key, metrics], i) => {
    const c = curves(metrics.points), color = COLORS[i % COLORS.length];
    train.push({ label: key, color, points: c.train });
    const main = c.evals.find((e) => e.key === "eval_loss") || c.evals[0];
    evals.push({ label: key, color, points: main ? main.points : [], markers: true });
    if (metrics.error) notes.push(`${key}: ${metrics.error}`);
  });
  $("view").innerHTML = `<h1>Compare <span class="muted">${keys.map(esc).join(" · ")}</span></h1>
    ${notes.map((n) => `<div class="note">${esc(n)}</div>`).join("")}
    <div class="charts"><div class="chart-box" id="compare-train">${lineChart(train, { title: "training loss" })}</div>
    <div class="chart-box" id="compare-eval">${lineChart(evals, { title: "evaluation loss", empty: "no evaluation yet" })}</div></div>`;
}

function route() {
  const hash = location.hash || "#/";
  const [path, query] = hash.slice(1).split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "job" && parts.length === 3) return { view: "job", namespace: parts[1], name: parts[2] };
  if (parts[0] === "compare") {
    const jobs = new URLSearchParams(query || "").get("jobs");
    return { view: "compare", keys: jobs ? jobs.split(",").filter(Boolean) : [...state.selected] };
  }
  return { view: "list" };
}

let pending = false;
function render() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => {
    pending = false;
    renderHeader();
    const r = route();
    if (r.view === "job") renderJob(encodeURIComponent(r.namespace), encodeURIComponent(r.name));
    else if (r.view === "compare") renderCompare(r.keys);
    else renderList();
  });
}

// ----------------------------------------------------------------------------------------- the stream

function shows(namespace, name) {
  const r = route(), key = `${namespace}/${name}`;
  return (r.view === "job" && r.namespace === namespace && r.name === name) || (r.view === "compare" && r.keys.includes(key));
}

function connect() {
  const source = new EventSource("/api/stream");
  source.addEventListener("state", (e) => {
    const data = JSON.parse(e.data);
    state.jobs = new Map(data.jobs.map((j) => [keyOf(j), j]));
    state.scope = data;
    state.live = true;
    render();
  });
  source.addEventListener("job", (e) => {
    const job = JSON.parse(e.data);
    state.jobs.set(keyOf(job), job);
    if (route().view === "list" || shows(job.namespace, job.name)) render(); else renderHeader();
  });
  source.addEventListener("deleted", (e) => {
    const d = JSON.parse(e.data);
    state.jobs.delete(`${d.namespace}/${d.name}`);
    state.selected.delete(`${d.namespace}/${d.name}`);
    render();
  });
  for (const kind of ["event", "metrics"]) {
    source.addEventListener(kind, (e) => { const d = JSON.parse(e.data); if (shows(d.namespace, d.name)) render(); });
  }
  source.addEventListener("scope", (e) => { Object.assign(state.scope, JSON.parse(e.data)); renderHeader(); });
  source.onerror = () => { state.live = false; renderHeader(); };
}

window.addEventListener("hashchange", render);
connect();
render();
