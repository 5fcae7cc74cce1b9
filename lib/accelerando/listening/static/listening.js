// The participant's page: consent, then each trial in the order the server gives; every rating is
// sent the moment it is given and kept in localStorage until the server has it.
"use strict";

const $ = (id) => document.getElementById(id);
const LABELS = [[100, "Excellent"], [80, "Good"], [60, "Fair"], [40, "Poor"], [20, "Bad"]];
let pid = localStorage.getItem("listening.pid");
let state = null;        // GET /api/participants/<pid>
let trial = null;        // the trial on screen
let player = null;       // its Player

// --- saving: a queue of requests that survives reloads and network errors -----------------------
const pending = JSON.parse(localStorage.getItem("listening.pending") || "[]");
function persist() { localStorage.setItem("listening.pending", JSON.stringify(pending)); showSaveStatus(); }
function showSaveStatus() {
  $("save-status").textContent = pending.length ? `${pending.length} answer(s) not yet saved: retrying` : "All answers saved";
  $("save-status").className = pending.length ? "unsaved" : "";
  updateNext();
}
async function flush() {
  while (pending.length) {
    const job = pending[0];
    let r;
    try {
      r = await fetch(job.url, {method: job.method, headers: {"Content-Type": "application/json"}, body: JSON.stringify(job.body)});
    } catch (e) { return; }                  // offline: keep it, retry later
    if (r.status >= 500) return;             // the server is restarting: retry later
    if (!r.ok) console.warn("refused", job, await r.text());   // a 4xx will not get better by retrying
    pending.shift();
    persist();
  }
}
function send(method, url, body) { pending.push({method, url, body}); persist(); return flush(); }
setInterval(flush, 2000);

async function api(path, options) {
  const r = await fetch(path, options);
  if (!r.ok) throw new Error(`${path}: ${r.status} ${await r.text()}`);
  return r.json();
}

// --- playback: every stimulus runs in sync, only the selected one is heard -----------------------
class Player {
  constructor(buffers) {
    this.ctx = new AudioContext();
    this.buffers = buffers;                 // slot -> AudioBuffer
    this.duration = Math.min(...Object.values(buffers).map((b) => b.duration));
    this.loop = [0, this.duration];
    this.sources = null; this.gains = {}; this.selected = null; this.started = 0; this.offset = 0;
  }
  position() {
    if (!this.sources) return this.offset;
    const [a, b] = this.loop, t = this.offset + this.ctx.currentTime - this.started;
    return t < b ? t : a + ((t - a) % (b - a));
  }
  start(at) {
    this.stopSources();
    const when = this.ctx.currentTime + 0.05;
    this.sources = {};
    for (const [slot, buffer] of Object.entries(this.buffers)) {
      const src = this.ctx.createBufferSource(), gain = this.ctx.createGain();
      src.buffer = buffer; src.loop = true; src.loopStart = this.loop[0]; src.loopEnd = this.loop[1];
      gain.gain.value = slot === this.selected ? 1 : 0;
      src.connect(gain).connect(this.ctx.destination);
      src.start(when, at);
      this.sources[slot] = src; this.gains[slot] = gain;
    }
    this.started = when; this.offset = at;
  }
  select(slot) {
    this.ctx.resume();
    const previous = this.selected;
    this.selected = slot;
    if (!this.sources) { this.start(Math.max(this.loop[0], Math.min(this.offset, this.loop[1]))); return; }
    const now = this.ctx.currentTime;   // a 5 ms cross-fade: switching is seamless, at the same position
    if (previous) this.gains[previous].gain.setTargetAtTime(0, now, 0.005);
    this.gains[slot].gain.setTargetAtTime(1, now, 0.005);
  }
  setLoop(a, b) { const at = a; this.loop = [a, b]; if (this.sources) this.start(at); else this.offset = a; }
  stopSources() { if (this.sources) for (const s of Object.values(this.sources)) s.stop(); this.sources = null; }
  stop() { this.offset = this.loop[0]; this.stopSources(); this.selected = null; }
  close() { this.stopSources(); this.ctx.close(); }
}

function drawWave() {
  const canvas = $("wave"), g = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
  g.clearRect(0, 0, w, h);
  if (!player) return;
  const data = Object.values(player.buffers)[0].getChannelData(0), step = Math.max(1, Math.floor(data.length / w));
  const x = (t) => (t / player.duration) * w;
  g.fillStyle = "#dde8ff"; g.fillRect(x(player.loop[0]), 0, x(player.loop[1]) - x(player.loop[0]), h);
  g.strokeStyle = "#557"; g.beginPath();
  for (let i = 0; i < w; i++) {
    let lo = 1, hi = -1;
    for (let j = i * step; j < Math.min(data.length, (i + 1) * step); j++) { lo = Math.min(lo, data[j]); hi = Math.max(hi, data[j]); }
    g.moveTo(i, (1 - hi) * h / 2); g.lineTo(i, (1 - lo) * h / 2);
  }
  g.stroke();
  if (player.sources) { g.strokeStyle = "#c22"; g.beginPath(); g.moveTo(x(player.position()), 0); g.lineTo(x(player.position()), h); g.stroke(); }
  requestAnimationFrame(drawWave);
}

function wireLoopSelection() {
  const canvas = $("wave");
  let down = null;
  const time = (e) => Math.max(0, Math.min(1, (e.offsetX / canvas.clientWidth))) * player.duration;
  canvas.onmousedown = (e) => { down = time(e); };
  canvas.onmouseup = (e) => {
    if (down === null || !player) return;
    let [a, b] = [down, time(e)].sort((p, q) => p - q);
    if (b - a < 0.2) { a = 0; b = player.duration; }        // a click clears the loop
    player.setLoop(a, b);
    $("loop-label").textContent = b - a < player.duration ? `Loop: ${a.toFixed(1)}-${b.toFixed(1)} s` : "Loop: whole excerpt";
    down = null;
  };
}

// --- trials -------------------------------------------------------------------------------------
function updateNext() {
  if (!trial) return;
  let ready;
  if (trial.training) ready = true;
  else if (trial.type !== "mushra") ready = trial.answered;
  else ready = trial.slots.filter((s) => s !== "reference").every((s) => s in trial.ratings);
  $("next").disabled = !(ready && pending.length === 0);
}

function heading() {
  const rated = state.trials.filter((t) => !t.training).length;
  const k = state.trials.filter((t) => !t.training).indexOf(trial) + 1;
  return trial.training ? "Training: listen to every stimulus" : `Trial ${k} of ${rated}`;
}

async function showTrial() {
  if (player) { player.close(); player = null; }
  trial = state.trials[state.position];
  delete $("trial").dataset.ready;       // set again once the trial's audio is decoded and shown
  if (!trial) { $("trial").hidden = true; $("finished").hidden = false; $("progress").textContent = "Done"; return; }
  $("trial").hidden = false; $("finished").hidden = true;
  $("trial-heading").textContent = heading();
  $("progress").textContent = `${state.position + 1} / ${state.trials.length}`;
  $("instructions").textContent = trial.type === "abx"
    ? "A and B differ or not; X is one of them. Listen as often as you like, then say which one X is."
    : trial.type === "remix"
    ? "One stem of this mix was generated by a model, the others were played. Listen to the mix and to each stem, then say which one was generated."
    : trial.training
      ? "This trial is not rated: listen to the reference and every stimulus to learn the range of quality you will hear."
      : "Rate each stimulus against the reference from 0 (bad) to 100 (excellent). One of them is the reference itself.";
  const base = `/api/participants/${pid}/trials/${encodeURIComponent(trial.id)}/audio/`;
  const ctx = new AudioContext();
  const buffers = {};
  await Promise.all(trial.slots.map(async (slot) => {
    const bytes = await (await fetch(base + slot)).arrayBuffer();
    buffers[slot] = await ctx.decodeAudioData(bytes);
  }));
  ctx.close();
  player = new Player(buffers);
  renderStimuli();
  renderChoice();
  $("comment").value = ""; $("comment-status").textContent = "";
  drawWave();
  updateNext();
  $("trial").dataset.ready = trial.id;
}

function renderStimuli() {
  const box = $("stimuli");
  box.replaceChildren();
  const rated = trial.type === "mushra" && !trial.training;
  if (rated) {
    const scale = document.createElement("div");
    scale.className = "scale";
    for (const [, label] of LABELS) { const s = document.createElement("span"); s.textContent = label; scale.append(s); }
    box.append(scale);
  }
  for (const slot of trial.slots) {
    const col = document.createElement("div");
    col.className = "stimulus"; col.dataset.slot = slot;
    if (rated && slot !== "reference") {
      const score = document.createElement("span"), slider = document.createElement("input");
      score.className = "score"; score.textContent = slot in trial.ratings ? trial.ratings[slot] : "";
      Object.assign(slider, {type: "range", min: 0, max: 100, step: 1, value: trial.ratings[slot] ?? 50});
      slider.setAttribute("aria-label", `rating of stimulus ${slot}`);
      slider.oninput = () => { score.textContent = slider.value; };
      slider.onchange = () => {
        trial.ratings[slot] = Number(slider.value); score.textContent = slider.value;
        send("PUT", `/api/participants/${pid}/trials/${encodeURIComponent(trial.id)}/ratings/${slot}`, {score: Number(slider.value)});
        updateNext();
      };
      col.append(score, slider);
    }
    const play = document.createElement("button");
    play.className = "play"; play.textContent = slot === "reference" ? "Reference" : slot;
    play.onclick = () => {
      player.select(slot);
      for (const c of box.querySelectorAll(".stimulus")) c.classList.toggle("playing", c.dataset.slot === slot);
    };
    col.append(play);
    box.append(col);
  }
}

// ABX: which one X is; remix: which stem was generated. One answer, sent at once.
function renderChoice() {
  const box = $("choice");
  box.replaceChildren();
  box.hidden = trial.type === "mushra";
  if (box.hidden) return;
  const options = trial.type === "abx" ? [["A", "X is A"], ["B", "X is B"]]
    : trial.slots.filter((s) => s !== "mix").map((s) => [s, `${s} was generated`]);
  for (const [answer, label] of options) {
    const b = Object.assign(document.createElement("button"), {className: "answer", textContent: label, disabled: trial.answered});
    b.dataset.answer = answer;
    b.onclick = async () => {
      if (trial.answered) return;
      trial.answered = true;
      for (const x of box.querySelectorAll("button")) x.disabled = true;
      await send("POST", `/api/participants/${pid}/trials/${encodeURIComponent(trial.id)}/choice`, {answer});
      updateNext();
    };
    box.append(b);
  }
}

async function next() {
  $("next").disabled = true;
  await flush();
  const url = `/api/participants/${pid}/trials/${encodeURIComponent(trial.id)}/done`;
  const r = await fetch(url, {method: "POST"});
  if (!r.ok) { $("save-status").textContent = (await r.json()).error; updateNext(); return; }
  state = await api(`/api/participants/${pid}`);
  await showTrial();
}

async function main() {
  const about = await api("/api/experiment");
  if (!about.loaded) { $("nothing").hidden = false; $("how").textContent = about.how; return; }
  $("title").textContent = about.title;
  if (pid) {
    const r = await fetch(`/api/participants/${pid}`);
    if (r.ok) state = await r.json(); else { pid = null; localStorage.removeItem("listening.pid"); }
  }
  if (!state) {
    $("consent").hidden = false;
    $("agree").onchange = () => { $("start").disabled = !$("agree").checked; };
    await new Promise((resolve) => { $("start").onclick = resolve; });
    pid = (await api("/api/participants", {method: "POST", headers: {"Content-Type": "application/json"},
                                           body: JSON.stringify({consent: true})})).participant_id;
    localStorage.setItem("listening.pid", pid);
    localStorage.setItem("listening.started", String(Date.now()));
    state = await api(`/api/participants/${pid}`);
    $("consent").hidden = true;
  }
  const started = Number(localStorage.getItem("listening.started") || Date.now());
  setInterval(() => { const s = Math.floor((Date.now() - started) / 1000); $("elapsed").textContent = `${Math.floor(s / 60)} min ${s % 60} s`; }, 1000);
  $("next").onclick = next;
  $("stop").onclick = () => { if (player) player.stop(); for (const c of document.querySelectorAll(".stimulus")) c.classList.remove("playing"); };
  $("send-comment").onclick = async () => {
    const text = $("comment").value.trim();
    if (!text) return;
    await send("POST", `/api/participants/${pid}/comments`, {trial_id: trial.id, text});
    $("comment-status").textContent = "Sent";
  };
  wireLoopSelection();
  showSaveStatus();
  await showTrial();
}

main().catch((e) => { document.body.prepend(Object.assign(document.createElement("pre"), {textContent: String(e)})); });
