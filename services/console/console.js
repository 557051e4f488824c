// The console: what is served (/console/models), live figures (/console/figures, turned into rates here) and a
// form per family route. Every value is written with textContent: nothing from the server or a user is markup.
"use strict";

const KEY = "modelroad.key"; // sessionStorage: this tab only
const REFRESH_MS = 3000;
const WINDOW_S = 15; // figures over about this many seconds
const readings = []; // [{at, versions: Map("model@version" -> entry)}], oldest first

function node(tag, text, attrs = {}) {
  const element = document.createElement(tag);
  if (text !== undefined && text !== null) element.textContent = String(text);
  for (const [name, value] of Object.entries(attrs)) element.setAttribute(name, value);
  return element;
}

function authorization() {
  const key = sessionStorage.getItem(KEY);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// The answer's JSON and status (status 0: no answer at all); a 401 opens the key form.
async function call(url, init = {}) {
  let response;
  try {
    response = await fetch(url, { ...init, headers: { ...authorization(), ...(init.headers || {}) } });
  } catch (_) {
    return { status: 0, ok: false, body: { error: "the server did not answer" }, headers: new Headers() };
  }
  let body;
  try {
    body = await response.json();
  } catch (_) {
    body = { error: `${response.status} ${response.statusText} (not JSON)` };
  }
  if (response.status === 401) askForKey(body.error);
  return { status: response.status, ok: response.ok, body, headers: response.headers };
}

function askForKey(why) {
  document.getElementById("key").hidden = false;
  document.getElementById("key-status").textContent = why || "";
}

function format(value, digits) {
  return value === null || value === undefined || Number.isNaN(value) ? "–" : value.toFixed(digits);
}

function milliseconds(seconds) {
  return seconds === null ? "–" : `${(seconds * 1000).toFixed(1)} ms`;
}

function percent(part, whole) {
  return whole > 0 ? `${format((100 * part) / whole, 1)}%` : "–";
}

function sum(counts) {
  return Object.values(counts || {}).reduce((a, b) => a + b, 0);
}

// Like Prometheus' histogram_quantile: linear within the bucket that holds the rank.
function quantile(q, buckets, observed) {
  if (observed <= 0) return null;
  const rank = q * observed;
  let lower = 0;
  let below = 0;
  for (const [bound, count] of buckets) {
    if (count >= rank) return lower + ((bound - lower) * (rank - below)) / Math.max(count - below, 1e-9);
    lower = bound;
    below = count;
  }
  return lower; // in the +Inf bucket: at least the last bound
}

// What happened between an earlier entry and a later one of the same version.
function change(later, earlier, seconds) {
  const requests = {};
  for (const outcome of ["ok", "invalid", "error"]) {
    requests[outcome] = (later.requests[outcome] || 0) - ((earlier && earlier.requests[outcome]) || 0);
  }
  const buckets = later.buckets.map(([bound, count], i) => [bound, count - (earlier ? earlier.buckets[i][1] : 0)]);
  const observed = later.observed - (earlier ? earlier.observed : 0);
  const shadow = {};
  for (const outcome of ["agree", "disagree", "error"]) {
    shadow[outcome] = (later.shadow[outcome] || 0) - ((earlier && earlier.shadow[outcome]) || 0);
  }
  const total = sum(requests);
  return {
    total: sum(later.requests),
    rate: seconds > 0 ? total / seconds : null,
    p50: quantile(0.5, buckets, observed),
    p99: quantile(0.99, buckets, observed),
    errors: percent(requests.error, total),
    ood: percent(later.ood - (earlier ? earlier.ood : 0), later.answers - (earlier ? earlier.answers : 0)),
    agrees: sum(later.shadow) > 0 ? percent(shadow.agree, sum(shadow)) : "–",
  };
}

function figuresOf(id) {
  const latest = readings[readings.length - 1];
  const entry = latest && latest.versions.get(id);
  if (!entry) return null;
  const earlier = readings.find((r) => latest.at - r.at <= WINDOW_S + 1 && r !== latest) || null;
  return change(entry, earlier && earlier.versions.get(id), earlier ? latest.at - earlier.at : 0);
}

function policyText(policy) {
  if (!policy) return "latest takes all";
  const split = Object.entries(policy.split).map(([v, w]) => `${v}: ${w}%`).join(", ");
  return policy.shadow ? `${split}; shadow ${policy.shadow.version} (${policy.shadow.percent}%)` : split;
}

const FIGURES = ["requests", "rate", "p50", "p99", "errors", "ood", "agrees"]; // the columns' classes
let served = { models: [], routes: [], awaited: {}, keys: false };

function renderModels() {
  const body = document.querySelector("#models tbody");
  body.replaceChildren();
  for (const model of served.models) {
    for (const v of model.versions) {
      const f = figuresOf(`${model.name}@${v.version}`);
      const row = node("tr", undefined, { "data-model": model.name, "data-version": v.version });
      for (const cell of [model.name, v.version, policyText(model.policy)]) row.append(node("td", cell));
      const figures = f
        ? [f.total, format(f.rate, 1), milliseconds(f.p50), milliseconds(f.p99), f.errors, f.ood, f.agrees]
        : [0, "–", "–", "–", "–", "–", "–"];
      FIGURES.forEach((name, i) => row.append(node("td", figures[i], { class: `figure ${name}` })));
      const card = [
        v.task, v.score === null ? "" : `${v.metric} ${v.score.toFixed(4)}`, v.baselines, v.parent, v.created,
        v.parity === null ? "" : v.parity.toExponential(1), v.digest,
      ];
      for (const cell of card) row.append(node("td", cell, { class: "card" }));
      body.append(row);
    }
  }
  const awaited = Object.entries(served.awaited);
  const section = document.getElementById("awaited");
  section.hidden = awaited.length === 0;
  section.querySelector("ul").replaceChildren(...awaited.map(([name, why]) => node("li", `${name}: ${why}`)));
}

async function refreshModels() {
  const answer = await call("/console/models");
  if (!answer.ok) {
    document.getElementById("status").textContent = `/console/models: ${answer.body.error}`;
    return;
  }
  served = answer.body;
  document.getElementById("key").hidden = !served.keys && !sessionStorage.getItem(KEY);
  let any = false;
  for (const form of document.querySelectorAll("#forms form")) {
    form.hidden = !served.routes.includes(form.dataset.route);
    any = any || !form.hidden;
  }
  document.getElementById("no-forms").hidden = any;
  const example = served.models.flatMap((m) => m.versions).find((v) => v.example && v.example.history);
  const pick = document.querySelector("#forecast-form .pick");
  pick.hidden = !example;
  if (example) pick.onclick = () => { document.querySelector("#forecast-form textarea").value = example.example.history.join(", "); };
  const text = served.models.flatMap((m) => m.versions).find((v) => v.example && v.example.text);
  if (text) document.querySelector("#text-form textarea").placeholder = text.example.text;
  const generators = served.models.filter((m) => m.versions.some((v) => v.task === "image-generation" && !v.companion));
  const classes = document.querySelector("#generate-form select[name=label]");
  if (generators.length && classes.options.length === 1) {
    for (const label of generators[0].versions[0].labels) classes.append(node("option", label, { value: label }));
  }
  const drawers = document.querySelector("#generate-form select[name=model]");
  if (drawers.options.length !== generators.length) {
    drawers.replaceChildren(...generators.map((m) => node("option", m.name, { value: m.name })));
  }
  renderModels();
}

async function refreshFigures() {
  const answer = await call("/console/figures");
  if (!answer.ok) {
    document.getElementById("status").textContent = `/console/figures: ${answer.body.error}`;
    return;
  }
  document.getElementById("status").textContent = "";
  const versions = new Map(answer.body.versions.map((e) => [`${e.model}@${e.version}`, e]));
  readings.push({ at: answer.body.at, versions });
  while (readings.length > 1 && answer.body.at - readings[0].at > WINDOW_S + 1) readings.shift();
  document.getElementById("window").textContent = format(answer.body.at - readings[0].at, 0);
  renderModels();
}

// --- the forms ---------------------------------------------------------------------------------------------------

function showVerdict(answer, box, headers) {
  const version = headers.get("X-Model-Version");
  if (answer.in_distribution !== null && answer.in_distribution !== undefined) {
    const verdict = answer.in_distribution ? "looks like the training data" : "out of distribution";
    box.append(node("p", `OOD score ${format(answer.ood_score, 2)}: ${verdict}`, { class: "verdict" }));
  }
  if (version) box.append(node("p", `answered by ${version}`, { class: "version" }));
}

function showClasses(answer, box) {
  box.append(node("p", answer.label, { class: "label" }));
  const top = Object.entries(answer.probabilities).sort((a, b) => b[1] - a[1]).slice(0, 5);
  for (const [label, p] of top) {
    const bar = node("div", undefined, { class: "bar" });
    bar.append(node("span", label), node("span", undefined, { class: "fill", style: `width:${(p * 12).toFixed(2)}rem` }),
      node("span", p.toFixed(3)));
    box.append(bar);
  }
}

function showForecast(history, answer, box) {
  const ns = "http://www.w3.org/2000/svg";
  const values = [...history, ...answer.forecast];
  const low = Math.min(...values);
  const high = Math.max(...values);
  const width = 480;
  const height = 160;
  const x = (i) => (i * (width - 10)) / Math.max(values.length - 1, 1) + 5;
  const y = (v) => height - 5 - ((v - low) * (height - 10)) / Math.max(high - low, 1e-9);
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "forecast");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  const line = (from, points, cls) => {
    const path = document.createElementNS(ns, "polyline");
    path.setAttribute("class", cls);
    path.setAttribute("points", points.map((v, i) => `${x(from + i).toFixed(1)},${y(v).toFixed(1)}`).join(" "));
    svg.append(path);
  };
  line(0, history, "history");
  line(history.length - 1, [history[history.length - 1], ...answer.forecast], "ahead");
  box.append(svg, node("p", answer.forecast.map((v) => v.toFixed(2)).join(", "), { class: "values" }));
}

// A number where the token reads as one, else the token itself: the API says what is wrong with it.
function parseHistory(text) {
  return text.split(/[\s,;]+/).filter((t) => t !== "").map((t) => (Number.isFinite(Number(t)) ? Number(t) : t));
}

const SENDERS = {
  "image-form": (form) => {
    const data = new FormData();
    const file = form.querySelector("input[type=file]").files[0];
    if (file) data.append("image", file);
    return [{ method: "POST", body: data }, (answer, box) => showClasses(answer, box)];
  },
  "text-form": (form) => {
    const text = form.querySelector("textarea").value;
    const init = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ text }) };
    return [init, (answer, box) => { box.append(node("q", text, { class: "input" })); showClasses(answer, box); }];
  },
  "forecast-form": (form) => {
    const history = parseHistory(form.querySelector("textarea").value);
    const horizon = Number(form.querySelector("input[name=horizon]").value);
    const init = {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ history, horizon }),
    };
    return [init, (answer, box) => showForecast(history, answer, box)];
  },
  "generate-form": (form) => {
    const label = form.querySelector("select[name=label]").value;
    const model = form.querySelector("select[name=model]").value;
    const seed = form.querySelector("input[name=seed]").value;
    const body = {
      ...(model ? { model } : {}),
      n: Number(form.querySelector("input[name=n]").value),
      ...(seed === "" ? {} : { seed: Number(seed) }),
      ...(label ? { label } : {}),
    };
    const init = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
    return [init, (answer, box) => {
      for (const [i, image] of answer.images.entries()) {
        box.append(node("img", undefined, {
          src: `data:image/png;base64,${image}`, class: "drawn", alt: `seed ${answer.seeds[i]}`, title: `seed ${answer.seeds[i]}`,
        }));
      }
    }];
  },
};

async function submit(event) {
  event.preventDefault();
  const form = event.target;
  const error = form.querySelector(".error");
  const box = form.querySelector(".answer");
  error.textContent = "";
  box.replaceChildren(node("p", "…", { class: "note" }));
  const [init, show] = SENDERS[form.id](form);
  const answer = await call(form.dataset.route, init);
  box.replaceChildren();
  if (!answer.ok) {
    error.textContent = `${answer.status}: ${answer.body.error}`;
    return;
  }
  show(answer.body, box);
  showVerdict(answer.body, box, answer.headers);
}

function useKey(event) {
  event.preventDefault();
  const key = document.getElementById("key-input").value.trim();
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
  document.getElementById("key-status").textContent = key ? "key set for this tab" : "key removed";
  refreshModels().then(refreshFigures);
}

document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("#forms form")) form.addEventListener("submit", submit);
  document.getElementById("key-form").addEventListener("submit", useKey);
  refreshModels().then(refreshFigures);
  setInterval(refreshFigures, REFRESH_MS);
  setInterval(refreshModels, 5 * REFRESH_MS); // versions come and go with rollouts
});
