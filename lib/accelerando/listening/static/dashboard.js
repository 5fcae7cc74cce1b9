// The dashboard: run records as cards, Vega-Lite charts and a sortable log; live over a WebSocket.
"use strict";

const $ = (id) => document.getElementById(id);
let data = {log: [], latency: [], quality: []};
let sortKey = "started", sortDown = true;

function bytes(n) { return n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : `${(n / 2 ** 20).toFixed(1)} MiB`; }

function selected(rows) {
  const chapter = $("chapter").value, method = $("method").value.toLowerCase();
  const from = $("from").value, to = $("to").value;
  return rows.filter((r) => (!chapter || r.chapter === chapter)
    && (!method || (r.method || "").toLowerCase().includes(method))
    && (!from || (r.started || "") >= from) && (!to || (r.started || "").slice(0, 10) <= to));
}

function cards(log, latency, quality) {
  $("card-runs").textContent = `${log.length} run(s) on ${new Set(log.map((r) => r.cpu)).size} CPU model(s)`;
  const fast = latency.reduce((a, r) => (!a || r.latency_per_10s < a.latency_per_10s ? r : a), null);
  $("card-latency").textContent = fast ? `${fast.latency_per_10s.toPrecision(3)} s: ${fast.method} (${fast.chapter}, ${fast.cpu})` : "none measured";
  const mem = latency.filter((r) => r.peak_memory_bytes).reduce((a, r) => (!a || r.peak_memory_bytes > a.peak_memory_bytes ? r : a), null);
  $("card-memory").textContent = mem ? `${bytes(mem.peak_memory_bytes)}: ${mem.method} (${mem.chapter})` : "none measured";
  const best = quality.reduce((a, r) => (!a || r.value < a.value ? r : a), null);
  $("card-quality").textContent = best ? `MR-STFT ${best.value.toFixed(3)}: ${best.method} ${best.bits} (${best.chapter})` : "none measured";
}

function charts(latency, quality) {
  const opts = {actions: false, renderer: "svg"};
  vegaEmbed("#chart-latency", {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json", width: 700, height: 280, data: {values: latency},
    mark: {type: "point", filled: true, tooltip: true},
    encoding: {x: {field: "audio_seconds", type: "quantitative", scale: {type: "log"}, title: "audio (s)"},
               y: {field: "latency_per_10s", type: "quantitative", scale: {type: "log"}, title: "s per 10 s of audio"},
               color: {field: "method", type: "nominal"}, shape: {field: "chapter", type: "nominal"},
               tooltip: [{field: "chapter"}, {field: "component"}, {field: "method"}, {field: "cpu"},
                         {field: "latency_s", format: ".3g"}, {field: "audio_seconds"}]}}, opts);
  vegaEmbed("#chart-memory", {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json", width: 700, height: 200,
    data: {values: latency.filter((r) => r.peak_memory_bytes)},
    mark: {type: "bar", tooltip: true},
    encoding: {y: {field: "method", type: "nominal", sort: "-x"},
               x: {aggregate: "max", field: "peak_memory_bytes", type: "quantitative", title: "peak memory (bytes)"}}}, opts);
  vegaEmbed("#chart-heatmap", {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json", width: 400, height: 200,
    data: {values: quality.filter((r) => r.bits)},
    mark: {type: "rect", tooltip: true},
    encoding: {x: {field: "bits", type: "nominal"}, y: {field: "method", type: "nominal"},
               color: {aggregate: "mean", field: "value", type: "quantitative", title: "MR-STFT"}}}, opts);
}

function table(log) {
  const columns = ["started", "chapter", "param_set", "cpu", "threads", "measurements", "commit"];
  const query = $("search").value.toLowerCase();
  const rows = log.filter((r) => !query || JSON.stringify(r).toLowerCase().includes(query))
    .sort((a, b) => (String(a[sortKey]) < String(b[sortKey]) ? -1 : 1) * (sortDown ? -1 : 1));
  const el = $("log");
  el.replaceChildren();
  const head = el.insertRow();
  for (const c of columns) {
    const th = document.createElement("th");
    th.textContent = c + (c === sortKey ? (sortDown ? " ▼" : " ▲") : "");
    th.onclick = () => { sortDown = c === sortKey ? !sortDown : true; sortKey = c; table(log); };
    head.append(th);
  }
  for (const r of rows) {
    const tr = el.insertRow();
    tr.dataset.name = r.name;
    for (const c of columns) tr.insertCell().textContent = c === "commit" ? (r[c] || "").slice(0, 7) : (r[c] ?? "");
    tr.onclick = async () => {
      const record = await (await fetch(`/api/records/${r.name}`)).json();
      $("record").hidden = false;
      $("record").textContent = JSON.stringify(record, null, 1);
    };
  }
}

function render() {
  const log = selected(data.log), latency = selected(data.latency), quality = selected(data.quality);
  cards(log, latency, quality);
  charts(latency, quality);
  table(log);
  document.body.dataset.rendered = String(log.length);
}

async function load() {
  const [log, eff] = await Promise.all([fetch("/api/records").then((r) => r.json()), fetch("/api/efficiency").then((r) => r.json())]);
  data = {log, latency: eff.latency, quality: eff.quality};
  const chapters = [...new Set(log.map((r) => r.chapter))].sort();
  const sel = $("chapter"), keep = sel.value;
  sel.replaceChildren(Object.assign(document.createElement("option"), {value: "", textContent: "all"}));
  for (const c of chapters) sel.append(Object.assign(document.createElement("option"), {value: c, textContent: c}));
  sel.value = keep;
  render();
}

function live() {
  const socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/records`);
  socket.onmessage = async (e) => {
    const event = JSON.parse(e.data);
    $("notice").textContent = `New record: ${event.name}`;
    await load();
  };
  socket.onclose = () => setTimeout(live, 2000);
}

for (const id of ["chapter", "method", "from", "to"]) $(id).oninput = render;
$("search").oninput = () => table(selected(data.log));
load().then(live);
