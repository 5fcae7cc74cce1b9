// The admin page: the summary behind the token, as tables and a box plot (every value shown as text).
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

function table(el, rows, columns) {
  el.replaceChildren();
  const head = el.insertRow();
  for (const c of columns) { const th = document.createElement("th"); th.textContent = c; head.append(th); }
  for (const r of rows) {
    const tr = el.insertRow();
    for (const c of columns) {
      const v = r[c];
      tr.insertCell().textContent = typeof v === "number" ? (Number.isInteger(v) ? v : v.toFixed(3)) : (v ?? "");
    }
  }
}

function boxes(rows) {
  const svg = $("boxes"), w = 900, h = 320, pad = 40, y = (v) => h - pad - (v / 100) * (h - 2 * pad);
  svg.replaceChildren();
  const band = (w - pad) / Math.max(1, rows.length);
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e); return e;
  };
  for (const v of [0, 20, 40, 60, 80, 100]) {
    add("line", {x1: pad, x2: w, y1: y(v), y2: y(v), stroke: "#ddd"});
    add("text", {x: 4, y: y(v) + 4, "font-size": 11}, String(v));
  }
  rows.forEach((r, i) => {
    const x = pad + i * band + band / 2, bw = Math.min(50, band * 0.5);
    add("rect", {x: x - bw / 2, y: y(r.q3), width: bw, height: Math.max(1, y(r.q1) - y(r.q3)), fill: "#cde", stroke: "#346"});
    add("line", {x1: x - bw / 2, x2: x + bw / 2, y1: y(r.median), y2: y(r.median), stroke: "#123", "stroke-width": 2});
    if (r.ci_low !== null) add("line", {x1: x + bw / 2 + 6, x2: x + bw / 2 + 6, y1: y(r.ci_low), y2: y(r.ci_high), stroke: "#c22"});
    add("circle", {cx: x + bw / 2 + 6, cy: y(r.mean), r: 3, fill: "#c22"});
    add("text", {x, y: h - 10, "text-anchor": "middle", "font-size": 11}, r.condition);
  });
}

async function load() {
  const token = $("token").value;
  const r = await fetch("/admin/summary.json", {headers: {Authorization: `Bearer ${token}`}});
  if (!r.ok) { $("status").textContent = (await r.json()).error; return; }
  const s = await r.json();
  $("status").textContent = "";
  $("results").hidden = false;
  const finished = s.sessions.filter((x) => x.finished).length;
  $("sessions").textContent = `${s.sessions.length} participants, ${finished} finished; ${s.counts.ratings} ratings, ${s.counts.choices} ABX and remix answers, ${s.counts.comments} comments.`;
  const excluded = Object.keys(s.excluded_assessors);
  $("screening").textContent = excluded.length
    ? `${excluded.length} assessor(s) excluded: they rated the hidden reference below 90 in more than 15% of their trials.`
    : "No assessor excluded (BS.1534-3: hidden reference below 90 in more than 15% of trials).";
  table($("mushra"), s.mushra, ["condition", "n", "median", "q1", "q3", "mean", "ci_low", "ci_high"]);
  boxes(s.mushra);
  table($("choices"), s.choices, ["kind", "trial_id", "n", "correct", "share_correct", "chance", "p_value"]);
  for (const [id, path] of [["csv", "/admin/export.csv"], ["json", "/admin/export.json"]]) {
    $(id).onclick = async (e) => {
      e.preventDefault();
      const blob = await (await fetch(path, {headers: {Authorization: `Bearer ${token}`}})).blob();
      const a = Object.assign(document.createElement("a"), {href: URL.createObjectURL(blob), download: path.split("/").pop()});
      a.click();
    };
  }
}
$("load").onclick = load;
