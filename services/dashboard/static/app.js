// tradeflow dashboard: reads /v1/stream (server-sent events over fetch, so the token goes in a header),
// renders the snapshot it sends each second and the live tail, and posts controls to /v1/control.
"use strict";

const STAGES = ["data", "strategy", "quant", "risk", "execution", "audit"];
const token = new URLSearchParams(location.hash.slice(1)).get("token") || sessionStorage.getItem("tradeflow-token") || "";
if (token) sessionStorage.setItem("tradeflow-token", token);
const headers = token ? { Authorization: `Bearer ${token}` } : {};
const $ = (sel) => document.querySelector(sel);
let filter = { symbol: "", subject: "" };
let stream = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? "–"));
  return node;
}

function fmt(v, digits = 1) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") return v.toLocaleString(undefined, { maximumFractionDigits: digits });
  return String(v);
}

function rows(tbody, items, cells) {
  tbody.replaceChildren(...items.map((item) => el("tr", {}, ...cells(item).map((c) => c instanceof Node ? el("td", {}, c) : el("td", {}, fmt(c))))));
}

function say(text, ok) {
  const m = $("#message");
  m.textContent = text;
  m.className = ok ? "ok" : "error";
}

async function control(body) {
  try {
    const r = await fetch("/v1/control", { method: "POST", headers: { ...headers, "Content-Type": "application/json" },
                                            body: JSON.stringify(body) });
    const answer = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
    say(r.ok ? answer.message : `${r.status}: ${answer.error}`, r.ok);
  } catch (e) {
    say(`request failed: ${e}`, false);
  }
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const body = { action: button.dataset.action };
  if (button.dataset.target) body.target = button.dataset.target;
  if (button.dataset.seq) body.seq = Number(button.dataset.seq);
  control(body);
});

function renderFlow(state) {
  const flow = $("#flow");
  const parts = [];
  for (const stage of state.stages || []) {
    const status = stage.overdue ? "overdue" : stage.paused ? "paused" : "flowing";
    const card = el("div", { class: "stage" + (stage.paused ? " paused" : "") + (stage.overdue ? " overdue" : ""),
                             "data-stage": stage.name },
      el("h3", {}, stage.name, el("span", { class: "pill " + (stage.overdue ? "bad" : stage.paused ? "warn" : "good"),
                                            "data-field": "status" }, status)),
      el("div", { class: "num", "data-field": "rate" }, fmt(stage.name === "data" ? stage.published_per_s : stage.processed_per_s)),
      el("div", { class: "muted" }, stage.name === "data" ? "bars published/s" : "events processed/s"),
      el("dl", {},
        el("dt", {}, "published/s"), el("dd", { "data-field": "published" }, fmt(stage.published_per_s)),
        el("dt", {}, "pending"), el("dd", { "data-field": "pending" }, fmt(stage.pending, 0)),
        el("dt", {}, "in flight"), el("dd", { "data-field": "in_flight" }, fmt(stage.in_flight, 0)),
        el("dt", {}, "oldest waiting"), el("dd", { "data-field": "oldest_waiting" },
                                           stage.oldest_waiting_s == null ? "–" : `${fmt(stage.oldest_waiting_s, 0)} s`),
        el("dt", {}, "latency p50"), el("dd", {}, stage.latency_p50_ms == null ? "–" : `${fmt(stage.latency_p50_ms, 1)} ms`),
        el("dt", {}, "latency p99"), el("dd", {}, stage.latency_p99_ms == null ? "–" : `${fmt(stage.latency_p99_ms, 1)} ms`)),
      stage.consumers.length ? el("div", {},
        el("button", { "data-action": "pause", "data-target": stage.name }, "Pause"), " ",
        el("button", { "data-action": "resume", "data-target": stage.name }, "Resume")) : el("div", { class: "muted" }, "producer"));
    if (parts.length) parts.push(el("div", { class: "arrow" }, "→"));
    parts.push(card);
  }
  flow.replaceChildren(...parts);
}

function hitRate(cache) {
  if (!cache || !cache.kinds) return null;
  let hit = 0, miss = 0;
  for (const k of Object.values(cache.kinds)) { hit += k.hit || 0; miss += k.miss || 0; }
  return hit + miss ? `${fmt(100 * hit / (hit + miss), 1)} %` : null;
}

function renderServices(state) {
  rows($("#services tbody"), state.services || [], (s) => [
    s.name + (s.instances > 1 ? ` ×${s.instances}` : ""),
    el("span", { class: s.up ? "up" : "down", "data-service": s.name }, s.up ? "up" : "down"),
    s.ready === null ? "–" : s.ready ? "yes" : "no", s.restarts,
    s.loop_lag_p99_ms == null ? null : `${fmt(s.loop_lag_p99_ms, 2)} ms`,
    s.cpu_percent == null ? null : `${fmt(s.cpu_percent)} %`, s.rss_mb == null ? null : `${fmt(s.rss_mb)} MB`,
    hitRate(s.cache),
    s.up ? el("button", { "data-action": "restart", "data-target": s.name }, "Restart") : "",
  ]);
  const tasks = [];
  for (const s of state.services || []) for (const t of s.tasks || []) tasks.push({ service: s.name, ...t });
  rows($("#tasks tbody"), tasks, (t) => [t.service, t.name, t.priority, t.state, t.runs, t.failures, t.restarts,
    t.next_run ? t.next_run.slice(11, 19) : null, el("span", { class: "err" }, t.last_error || "")]);
  const m = state.market;
  $("#market").textContent = !m ? "market: ?" : m.phase ? `${m.calendar}: ${m.phase.replace("_", " ")} (${m.reason})` : `${m.calendar}`;
}

function renderPortfolio(state) {
  const p = state.portfolio;
  const kv = [];
  if (p) {
    for (const [k, label] of [["equity", "equity"], ["cash", "cash"], ["pnl", "PnL"], ["realized_pnl", "realised"],
                              ["unrealized_pnl", "unrealised"], ["return_pct", "return %"], ["max_drawdown_pct", "max DD %"],
                              ["fills", "fills"]]) {
      kv.push(el("span", { class: "muted" }, label), el("span", { "data-field": k }, fmt(p[k], 2)));
    }
  }
  $("#pnl").replaceChildren(...kv);
  const positions = p && p.positions ? Object.entries(p.positions) : [];
  rows($("#positions tbody"), positions, ([sym, q]) => [sym, q.quantity, q.avg_price, q.last_price,
    q.last_price == null ? null : (q.last_price - q.avg_price) * q.quantity]);
  renderEquity(state.equity || []);
  rows($("#fills tbody"), state.fills || [], (f) => {
    const b = f.body || {};
    const ts = b.ts ? eventTime(b.ts, !utc(b.ts).endsWith("T00:00:00.000Z")) : null;
    return [el("span", { "data-ts": b.ts || "", title: `arrived ${f.time.slice(0, 23).replace("T", " ")} UTC` }, ts),
            b.symbol, b.side, b.quantity, b.price, b.commission, b.order_id];
  });
}

// event times (a bar's, a fill's) are shown in UTC: the date, and the time unless daily
function utc(iso) {
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toISOString();
}
function eventTime(iso, withTime) {
  const s = utc(iso);
  return withTime ? `${s.slice(0, 10)} ${s.slice(11, 19)}` : s.slice(0, 10);
}

// audit's equity curve, [[event time, equity], ...]: x is event time, labelled with dates when it spans days
function renderEquity(curve) {
  const svg = $("#equity"), axis = $("#equity-axis");
  if (curve.length < 2) {
    svg.replaceChildren();
    axis.replaceChildren();
    return;
  }
  const times = curve.map((p) => Date.parse(p[0])), values = curve.map((p) => p[1]);
  const t0 = times[0], tspan = times[times.length - 1] - t0 || 1;
  const lo = Math.min(...values), hi = Math.max(...values), span = hi - lo || 1;
  const points = values.map((v, i) => `${((times[i] - t0) / tspan) * 600},${150 - ((v - lo) / span) * 140}`).join(" ");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points);
  svg.replaceChildren(line);
  svg.setAttribute("aria-label", `equity curve, ${fmt(lo, 2)} to ${fmt(hi, 2)}`);
  const withTime = tspan < 3 * 86400e3;
  axis.replaceChildren(...[0, 0.25, 0.5, 0.75, 1].map((f) => {
    const iso = new Date(t0 + f * tspan).toISOString();
    return el("span", { "data-ts": iso }, eventTime(iso, withTime));
  }));
}

function renderDeadLetters(state) {
  const d = state.dead_letters || { total: 0, by: [], latest: [] };
  $("#dlq-total").textContent = fmt(d.total, 0);
  rows($("#dlq-by tbody"), d.by, (r) => [r.service, r.reason, r.count]);
  rows($("#dlq-latest tbody"), d.latest, (x) => [x.seq, x.time.slice(11, 19), x.service, x.subject, x.reason,
    el("span", { class: "err" }, x.error), el("button", { "data-action": "redrive", "data-seq": String(x.seq) }, "Redrive")]);
}

function render(state) {
  if (!state || !state.ready) return;
  renderFlow(state);
  renderServices(state);
  renderPortfolio(state);
  renderDeadLetters(state);
  const errors = Object.entries(state.errors || {});
  $("#updated").textContent = `updated ${state.time.slice(11, 19)} UTC` + (errors.length ? ` · ${errors.map(([k, v]) => `${k}: ${v}`).join("; ")}` : "");
}

function addTail(batch) {
  const list = $("#tail");
  for (const e of batch.events) {
    const body = e.body && typeof e.body === "object" ? JSON.stringify(e.body) : String(e.body ?? "");
    list.prepend(el("li", { title: body }, `${e.time.slice(11, 23)}  ${e.subject}  ${body}`));
  }
  while (list.children.length > 200) list.lastChild.remove();
  $("#tail-dropped").textContent = batch.dropped ? `${batch.dropped} not shown (rate limit)` : "";
}

async function connect() {
  if (stream) stream.abort();
  const controller = new AbortController();
  stream = controller;
  const query = new URLSearchParams(Object.entries(filter).filter(([, v]) => v));
  try {
    const response = await fetch(`/v1/stream?${query}`, { headers, signal: controller.signal });
    if (!response.ok) {
      const answer = await response.json().catch(() => ({}));
      $("#connection").textContent = `error ${response.status}: ${answer.error || ""}`;
      $("#connection").className = "pill bad";
      if (response.status === 400) return;
      throw new Error(`HTTP ${response.status}`);
    }
    $("#connection").textContent = "live";
    $("#connection").className = "pill good";
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const kind = (frame.match(/^event: (.*)$/m) || [])[1];
        const data = (frame.match(/^data: (.*)$/m) || [])[1];
        if (!data) continue;
        if (kind === "state") render(JSON.parse(data));
        else if (kind === "tail") addTail(JSON.parse(data));
      }
    }
  } catch (e) {
    if (controller.signal.aborted) return;
  }
  if (stream !== controller) return;
  $("#connection").textContent = "reconnecting…";
  $("#connection").className = "pill bad";
  setTimeout(connect, 2000);
}

$("#tail-filter").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  filter = { symbol: (form.get("symbol") || "").trim().toUpperCase(), subject: (form.get("subject") || "").trim() };
  $("#tail").replaceChildren();
  connect();
});

connect();
