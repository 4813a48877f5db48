// The operator's page: GET hearth/status every POLL_MS (hearth/server/status.py: the numbers of /metrics, the
// server's ring buffer of samples, the cost ledger), drawn as tiles, tables and a canvas chart. Polling pauses while
// the tab is hidden.

import { ApiError, getJson } from "./api.js";

const POLL_MS = 2000;
const $ = (id) => document.getElementById(id);
let last = null;

const int = (n) => Math.round(n).toLocaleString("en-US");
const num = (n, digits = 1) => (n == null ? "–" : n.toLocaleString("en-US", { maximumFractionDigits: digits }));

function seconds(s) {
  if (s == null) return "–";
  if (s < 1) return `${(s * 1000).toFixed(s < 0.01 ? 2 : s < 0.1 ? 1 : 0)} ms`;
  return `${s.toFixed(2)} s`;
}

function energy(joules) {
  if (joules < 3600) return `${num(joules, 1)} J`;
  return joules < 3.6e6 ? `${num(joules / 3600, 2)} Wh` : `${num(joules / 3.6e6, 3)} kWh`;
}

function duration(s) {
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  if (h || m) return h ? `${h} h ${m} min` : `${m} min ${Math.floor(s % 60)} s`;
  return s < 10 ? `${s.toFixed(1)} s` : `${Math.floor(s)} s`;
}

function set(id, text, value) {
  const node = $(id);
  node.textContent = text;
  if (value !== undefined) node.dataset.value = String(value);
}

function row(cells, header = false) {
  const tr = document.createElement("tr");
  cells.forEach((c, i) => {
    const cell = document.createElement(header && i === 0 ? "th" : "td");
    if (header && i === 0) cell.scope = "row";
    cell.textContent = c;
    tr.append(cell);
  });
  return tr;
}

function draw(status) {
  const e = status.engine;
  set("running", int(e.running), e.running);
  set("waiting", int(e.waiting), e.waiting);
  const usage = e.kv_cache_usage;
  set("kv", `${(usage * 100).toFixed(1)} %`, usage);
  $("kv-bar").style.width = `${Math.min(100, usage * 100)}%`;
  set("kv-blocks", `${int(e.kv_blocks_used)} of ${int(e.kv_blocks_total)} blocks`);
  const rates = status.history.generation_tokens_per_s;
  const now = rates.length ? rates[rates.length - 1] : 0;
  set("rate", num(now), now);
  set("gen-tokens", int(status.tokens.generation), status.tokens.generation);
  set("prompt-tokens", int(status.tokens.prompt), status.tokens.prompt);
  set("requests", int(status.requests.total), status.requests.total);
  const failed = Object.entries(status.requests.by_status).filter(([code]) => code >= "400")
    .reduce((n, [, v]) => n + v, 0);
  set("errors", `${int(failed)} answered 4xx/5xx`);

  const lat = status.latency;
  const recent = lat.recent;
  const minutes = Math.max(1, Math.round(recent.window_s / 60));
  $("latency").replaceChildren(
    latencyRow("TTFT", lat.ttft_s, "ttft"),
    latencyRow("ITL", lat.itl_s, "itl"),
    latencyRow(`TTFT, ${minutes} min`, recent.ttft_s, "ttft-recent"),
    latencyRow(`ITL, ${minutes} min`, recent.itl_s, "itl-recent"));
  $("latency-note").textContent = "TTFT: time to first token; ITL: inter-token latency; since start, and over the " +
    `last ${minutes} min. From the histograms of /metrics, as Prometheus' histogram_quantile computes them.`;

  set("model-name", status.model.name + (status.model.aliases.length ? ` (also ${status.model.aliases.join(", ")})` : ""));
  set("adapters", status.model.adapters.length ? status.model.adapters.join(", ") : "none");
  set("context", `${int(status.model.max_model_len)} tokens`);
  set("capture", status.capture ? "on: completions sent with store: true are kept" : "off");
  const g = status.guard;
  set("guard", g ? `${g.adapter || g.model} (checks ${[g.input && "prompts", g.output && "answers"].filter(Boolean).join(" and ")})` : "off");
  set("uptime", duration(status.uptime_s));

  const decisions = $("guard-decisions");
  decisions.replaceChildren(...status.guard_decisions.map((d) => row([d.category, d.action, int(d.count)], true)));
  if (!status.guard_decisions.length) decisions.append(row([g ? "no decisions yet" : "no guard runs", "", ""]));

  drawCost(status.cost);
  chart(status.history);
  set("updated", `updated ${new Date(status.time * 1000).toLocaleTimeString()}`);
}

function latencyRow(label, h, key) {
  const tr = row([label, seconds(h.p50), seconds(h.p90), seconds(h.p99), int(h.count)], true);
  tr.dataset.key = key;
  tr.dataset.p50 = h.p50 ?? "";
  tr.dataset.p90 = h.p90 ?? "";
  tr.dataset.p99 = h.p99 ?? "";
  tr.dataset.count = h.count;
  return tr;
}

function drawCost(cost) {
  const dl = $("cost");
  dl.replaceChildren();
  const add = (term, text) => {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = text;
    dl.append(dt, dd);
  };
  if (!cost) {
    add("Ledger", "off (hearth serve --ledger)");
    $("api-prices").replaceChildren();
    return;
  }
  const t = cost.totals;
  const price = Number($("price-kwh").value) || 0;
  if (!t) add("Ledger", "no requests recorded yet");
  else {
    add("Tokens", `${int(t.tokens)} in ${int(t.requests)} requests`);
    add("Energy", `${energy(t.joules)}${t.estimated ? " (estimated from CPU time)" : ` (${t.energy_source})`}`);
    add("Busy", duration(t.busy_seconds));
    add("Per token", t.joules_per_token == null ? "–" : `${num(t.joules_per_token, 3)} J`);
    add("$ / 1M tokens", t.kwh_per_m_tokens == null ? "–" : `$${num(t.kwh_per_m_tokens * price, 4)} (energy only)`);
  }
  const api = cost.api;
  const models = [...api.models].sort((a, b) => (a.blended_per_m ?? 0) - (b.blended_per_m ?? 0));
  $("api-prices").replaceChildren(...models.map((m) => row(
    [`${m.provider} ${m.model}`, m.blended_per_m == null ? "–" : `$${num(m.blended_per_m, 3)}`], true)));
  $("prices-note").textContent = `List prices of ${api.date} (${api.source}) at this server's mix of prompt and ` +
    "completion tokens; hearth counts energy only (hearth cost adds hardware).";
}

// a trailing mean over SMOOTH samples: requests come in bursts, a 2-second rate is mostly noise
const SMOOTH = 5;
function smooth(values) {
  return values.map((_, i) => {
    const part = values.slice(Math.max(0, i - SMOOTH + 1), i + 1);
    return part.reduce((a, b) => a + b, 0) / part.length;
  });
}

function color(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#1d5bbf";
}

function chart(history) {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = Math.round(w * ratio);
  canvas.height = Math.round(h * ratio);
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, w, h);
  const { t } = history;
  const gen = smooth(history.generation_tokens_per_s), prompt = smooth(history.prompt_tokens_per_s);
  const pad = { l: 48, r: 8, t: 8, b: 22 };
  const top = Math.max(1, ...gen, ...prompt) * 1.1;
  const span = 600; // seconds shown: the server keeps ten minutes
  const end = t.length ? t[t.length - 1] : Date.now() / 1000;
  const x = (s) => pad.l + (w - pad.l - pad.r) * (1 - (end - s) / span);
  const y = (v) => h - pad.b - (h - pad.t - pad.b) * (v / top);
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillStyle = color("--muted");
  ctx.strokeStyle = color("--soft2");
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = (top / 4) * i;
    ctx.beginPath();
    ctx.moveTo(pad.l, y(v));
    ctx.lineTo(w - pad.r, y(v));
    ctx.stroke();
    ctx.fillText(num(v, v < 10 ? 1 : 0), 4, y(v) + 4);
  }
  for (let m = 0; m <= 10; m += 2) ctx.fillText(m ? `-${m} min` : "now", x(end - m * 60) - (m ? 18 : 22), h - 6);
  const line = (values, stroke, dash) => {
    ctx.strokeStyle = stroke;
    ctx.lineWidth = 2;
    ctx.setLineDash(dash);
    ctx.beginPath();
    values.forEach((v, i) => (i ? ctx.lineTo(x(t[i]), y(v)) : ctx.moveTo(x(t[i]), y(v))));
    ctx.stroke();
    ctx.setLineDash([]);
  };
  line(prompt, color("--ok"), [5, 4]);
  line(gen, color("--accent"), []);
  const peak = gen.length ? Math.max(...gen) : 0;
  canvas.setAttribute("aria-label", gen.length
    ? `Generated tokens per second over the last ${Math.round((end - t[0]) / 60)} minutes: now ${num(gen[gen.length - 1])}, peak ${num(peak)}`
    : "No data yet");
}

async function poll() {
  if (!document.hidden) {
    try {
      last = await getJson("hearth/status");
      $("problem").hidden = true;
      draw(last);
    } catch (e) {
      $("problem").textContent = e instanceof ApiError ? `The server answered: ${e.message}` : `No answer: ${e.message}`;
      $("problem").hidden = false;
    }
  }
  setTimeout(poll, POLL_MS);
}

$("price-kwh").addEventListener("input", () => last && drawCost(last.cost));
window.addEventListener("resize", () => last && chart(last.history));
document.addEventListener("visibilitychange", () => { if (!document.hidden && last) chart(last.history); });
await poll();
performance.mark("hearth-ready");
document.documentElement.dataset.ready = "true";
