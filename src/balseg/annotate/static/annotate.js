// balseg annotate: one queried pixel at a time, keyboard first. No build step, no CDN.
// The server is the only state that matters: every answer is saved before the next query is
// shown, and a reload asks /api/next, which returns the query this person still holds.
// The token (when the server needs one) arrives once in the link; the server answers that
// visit with an HttpOnly cookie, which then carries it for images and API calls alike, so
// no image URL ever holds the token.
"use strict";

const params = new URLSearchParams(location.search);
const TOKEN = params.get("token");
const REVIEW = params.get("review") === "1";
const NAME_KEY = "balseg.annotator";
const VIEW_KEY = "balseg.view"; // the patches' brightness (gamma) and contrast, kept per browser
const IDLE_MS = 10 * 60 * 1000; // stop renewing a lease after this long without input

const $ = (id) => document.getElementById(id);
const S = {
  info: null, who: null, query: null, busy: false, lastInput: Date.now(),
  images: new Map(), classByKey: new Map(), pollTimer: null,
  flashTimer: null, undoBlocked: false, shownImg: null,
  view: loadView(),
};

function loadView() {
  try {
    const v = JSON.parse(localStorage.getItem(VIEW_KEY) || "{}");
    return { gamma: Number.isFinite(v.gamma) ? v.gamma : 1, stretch: !!v.stretch };
  } catch (e) { return { gamma: 1, stretch: false }; }
}

function setState(state) { document.body.dataset.state = state; }
function status(msg, isError = false) {
  const el = $("status");
  el.textContent = msg || "";
  el.classList.toggle("error", !!isError);
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (TOKEN) headers["X-Balseg-Token"] = TOKEN;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin", cache: "no-store",
  });
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) {
    let detail = data && data.detail;
    if (Array.isArray(detail)) detail = detail.map((d) => d.msg).join("; ");
    const err = new Error(detail || `${resp.status} ${resp.statusText}`);
    err.status = resp.status;
    throw err;
  }
  return data;
}

function loadImage(url) {
  if (!S.images.has(url)) {
    S.images.set(url, new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => { S.images.delete(url); reject(new Error(`cannot load ${url}`)); };
      img.src = url; // same origin: the token cookie goes with it
    }));
  }
  return S.images.get(url);
}

// ---- drawing --------------------------------------------------------------------------------
function drawMain(img, q) {
  const canvas = $("image");
  const view = $("view");
  const maxW = Math.max(200, view.clientWidth);
  const maxH = Math.max(200, window.innerHeight - 130);
  const scale = Math.min(maxW / q.width, maxH / q.height, 8);
  canvas.width = Math.round(q.width * scale);
  canvas.height = Math.round(q.height * scale);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = scale < 1;
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  const cx = (q.x + 0.5) * scale, cy = (q.y + 0.5) * scale;
  const r = Math.max(9, scale * 1.5);
  for (const [color, width] of [["#000", 5], ["#ffd400", 2]]) {
    ctx.strokeStyle = color; ctx.lineWidth = width;
    ctx.beginPath(); ctx.arc(cx, cy, r, 0, 2 * Math.PI); ctx.stroke();
    ctx.beginPath();
    ctx.moveTo(cx - r - 12, cy); ctx.lineTo(cx - r + 3, cy);
    ctx.moveTo(cx + r - 3, cy); ctx.lineTo(cx + r + 12, cy);
    ctx.moveTo(cx, cy - r - 12); ctx.lineTo(cx, cy - r + 3);
    ctx.moveTo(cx, cy + r - 3); ctx.lineTo(cx, cy + r + 12);
    ctx.stroke();
  }
}

function drawPatch(canvas, img, q, window) {
  // window x window source pixels centred on the query, drawn with nearest-neighbour zoom.
  const ctx = canvas.getContext("2d");
  const z = canvas.width / window;
  ctx.imageSmoothingEnabled = false;
  ctx.fillStyle = "#3a3a3a";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const half = Math.floor(window / 2);
  const sx0 = q.x - half, sy0 = q.y - half;
  const sx = Math.max(0, sx0), sy = Math.max(0, sy0);
  const ex = Math.min(q.width, sx0 + window), ey = Math.min(q.height, sy0 + window);
  if (ex > sx && ey > sy) {
    ctx.drawImage(img, sx, sy, ex - sx, ey - sy, (sx - sx0) * z, (sy - sy0) * z,
      (ex - sx) * z, (ey - sy) * z);
    adjust(ctx, (sx - sx0) * z, (sy - sy0) * z, (ex - sx) * z, (ey - sy) * z);
  }
  const px = half * z, py = half * z;
  const pad = Math.max(2, z * 0.25);
  for (const [color, width] of [["#000", 4], ["#ffd400", 2]]) {
    ctx.strokeStyle = color; ctx.lineWidth = width;
    ctx.strokeRect(px - pad, py - pad, z + 2 * pad, z + 2 * pad);
  }
}

function adjust(ctx, x, y, w, h) {
  // Dark frames: stretch the patch's range to 0..255 (1st..99th percentile of its values),
  // then gamma (< 1 brightens). Only the patches: the picture keeps its own look.
  const { gamma, stretch } = S.view;
  if (gamma === 1 && !stretch) return;
  x = Math.round(x); y = Math.round(y); w = Math.round(w); h = Math.round(h);
  if (w <= 0 || h <= 0) return;
  const data = ctx.getImageData(x, y, w, h);
  const px = data.data;
  let lo = 0, hi = 255;
  if (stretch) {
    const hist = new Uint32Array(256);
    for (let i = 0; i < px.length; i += 4) { hist[px[i]]++; hist[px[i + 1]]++; hist[px[i + 2]]++; }
    const total = (px.length / 4) * 3;
    let acc = 0;
    for (lo = 0; lo < 255 && (acc += hist[lo]) < total * 0.01; lo++);
    acc = 0;
    for (hi = 255; hi > 0 && (acc += hist[hi]) < total * 0.01; hi--);
    if (hi <= lo) { lo = 0; hi = 255; }
  }
  const lut = new Uint8ClampedArray(256);
  for (let v = 0; v < 256; v++) {
    const t = Math.min(1, Math.max(0, (v - lo) / (hi - lo)));
    lut[v] = Math.round(255 * Math.pow(t, gamma));
  }
  for (let i = 0; i < px.length; i += 4) {
    px[i] = lut[px[i]]; px[i + 1] = lut[px[i + 1]]; px[i + 2] = lut[px[i + 2]];
  }
  ctx.putImageData(data, x, y);
}

function drawPatches() {
  const q = S.query;
  if (!q || !S.shownImg) return;
  drawPatch($("context"), S.shownImg, q, 48);
  drawPatch($("detail"), S.shownImg, q, 15);
  const { gamma, stretch } = S.view;
  const parts = [];
  if (gamma !== 1) parts.push(`brightness γ ${gamma.toFixed(2)}`);
  if (stretch) parts.push("contrast stretched");
  $("view-text").textContent = parts.join(" · ");
}

function setView(change) {
  S.view = { ...S.view, ...change };
  S.view.gamma = Math.min(4, Math.max(0.25, Math.round(S.view.gamma * 100) / 100));
  localStorage.setItem(VIEW_KEY, JSON.stringify(S.view));
  drawPatches();
}

function suggestionOf(q) {
  // The model's guess, shown outside review mode only (a second opinion is independent).
  if (REVIEW || !q || q.suggestion === null || q.suggestion === undefined) return null;
  return S.info.classes[q.suggestion] ? q.suggestion : null;
}

function showSuggestion(q) {
  for (const b of document.querySelectorAll("#classes button.suggested")) b.classList.remove("suggested");
  const guess = suggestionOf(q);
  $("suggestion").hidden = guess === null;
  document.body.dataset.suggestion = guess === null ? "" : String(guess);
  if (guess === null) return;
  $("suggestion-name").textContent = S.info.classes[guess].name;
  const btn = document.querySelector(`#classes button[data-label="${guess}"]`);
  if (btn) btn.classList.add("suggested");
}

// ---- rendering state ------------------------------------------------------------------------
function renderProgress(p) {
  if (!p) return;
  const parts = [];
  if (p.cycle !== null && p.cycle !== undefined) {
    parts.push(`cycle ${p.cycle}: ${p.cycle_answered} / ${p.cycle_total} answered, ${p.cycle_open} open`);
    $("bar-fill").style.width = `${p.cycle_total ? (100 * p.cycle_answered / p.cycle_total) : 100}%`;
  }
  if (p.image) parts.push(`this image: ${p.image.answered} / ${p.image.total}`);
  parts.push(`all cycles: ${p.answered} / ${p.total}`);
  if (p.mine !== undefined) parts.push(`yours: ${p.mine}`);
  if (p.conflicts) parts.push(`conflicts: ${p.conflicts}`);
  $("progress-text").textContent = parts.join(" · ");
  $("done-text").textContent = parts.join(" · ");
  const c = p.continue || {};
  const cont = {
    off: "", idle: "balseg run will continue the run when this cycle is complete.",
    running: `balseg run is continuing the run (cycle ${c.cycle} done, started ${c.started_at}); log: ${c.log}`,
    finished: `balseg run finished (log: ${c.log}); new queries appear here when there are any.`,
    failed: `balseg run failed with exit code ${c.returncode}: see ${c.log} in the run directory.`,
  }[c.state] || "";
  $("continue-text").textContent = cont || (p.open === 0 && !REVIEW
    ? `The run can continue: ${S.info.continue_command} picks the answers up.` : "");
}

function clearFlash() {
  clearTimeout(S.flashTimer);
  for (const b of document.querySelectorAll(".flash")) b.classList.remove("flash");
}

function flash(btn) {
  clearFlash();
  if (!btn) return;
  btn.classList.add("flash");
  S.flashTimer = setTimeout(clearFlash, 150);
}

async function show(q, progress, note) {
  S.query = q;
  clearFlash(); // the class clicked for the previous pixel is not this pixel's answer
  if (!q) {
    renderProgress(progress);
    document.body.dataset.queryId = "";
    $("work").hidden = true;
    $("done").hidden = false;
    setState("done");
    if (note) status(note);
    schedulePoll(5000);
    return;
  }
  // The picture, the query line and the counts change together, once the image is loaded:
  // "this image" always counts the image on screen.
  let img = null, problem = null;
  if (q.image_error || !q.width) {
    problem = q.image_error || "image unavailable";
  } else {
    try { img = await loadImage(q.image_url); } catch (e) { problem = e.message; }
  }
  if (S.query !== q) return; // a newer query arrived meanwhile
  $("done").hidden = true;
  $("work").hidden = false;
  $("query-info").textContent =
    `query ${q.id} · image ${q.image_id} · pixel (y ${q.y}, x ${q.x}) · cycle ${q.cycle}`;
  document.body.dataset.queryId = String(q.id);
  S.shownImg = img;
  if (img) {
    drawMain(img, q);
    drawPatches();
  }
  showSuggestion(q);
  renderProgress(progress);
  if (problem) status(`${problem}: press s to skip`, true);
  if (note) status(note);
  setState("ready");
  schedulePoll(Math.max(5000, (S.info.lease_ttl_s * 1000) / 3));
}

// ---- actions --------------------------------------------------------------------------------
async function fetchNext(note) {
  if (REVIEW) {
    const r = await api("GET", `/api/review/next?annotator=${encodeURIComponent(S.who)}&after=${S.reviewAfter || 0}`);
    return show(r.query, r.progress, note || (r.query ? "" : "nothing left to review"));
  }
  const r = await api("POST", "/api/next", { annotator: S.who });
  return show(r.query, r.progress, [note, r.note].filter(Boolean).join(" · "));
}

async function act(fn) {
  if (S.busy) return;
  S.busy = true;
  S.lastInput = Date.now();
  setState("busy");
  try {
    await fn();
  } catch (e) {
    status(e.message, true);
    if (e.status === 409 || e.status === 404) {
      try { await fetchNext(e.message); } catch (e2) { status(e2.message, true); }
    } else if (S.query) {
      setState("ready");
    }
  } finally {
    S.busy = false;
    if (document.body.dataset.state === "busy") setState(S.query ? "ready" : "done");
  }
}

function className(label) {
  return label === null ? "unknown" : S.info.classes[label].name;
}

function answer(label, accepted = false) {
  const q = S.query;
  if (!q) return;
  if (document.activeElement instanceof HTMLButtonElement) document.activeElement.blur();
  act(async () => {
    flash(label === null ? $("unknown") : document.querySelector(`#classes button[data-label="${label}"]`));
    const body = { annotator: S.who, query_id: q.id, label, review: REVIEW };
    if (accepted) body.accepted = true;
    const r = await api("POST", "/api/answer", body);
    S.undoBlocked = false;
    renderProgress(r.progress); // the answered pixel's image, still on screen
    let msg = `saved: query ${q.id} is ${className(label)}`;
    if (r.conflict) msg += " (disagrees with another answer: flagged as a conflict)";
    if (REVIEW) S.reviewAfter = q.id;
    await fetchNext(msg + " · ⌫ undoes");
  });
}

function skip() {
  const q = S.query;
  if (!q) return;
  act(async () => {
    // undo reaches back to the skip, not past it (the server keeps the same floor)
    S.undoBlocked = true;
    if (REVIEW) { S.reviewAfter = q.id; return fetchNext(`skipped query ${q.id}`); }
    const r = await api("POST", "/api/skip", { annotator: S.who, query_id: q.id });
    await show(r.query, r.progress, [`skipped query ${q.id}`, r.note].filter(Boolean).join(" · "));
  });
}

function undo() {
  if (REVIEW && S.undoBlocked) {
    status("nothing to undo since the last skip (answers given before a skip stay)", true);
    return;
  }
  act(async () => {
    const r = await api("POST", "/api/undo",
      { annotator: S.who, current_query_id: S.query && !REVIEW ? S.query.id : null });
    if (REVIEW) S.reviewAfter = Math.max(0, r.query.id - 1);
    await show(r.query, r.progress,
      `undone: your answer '${className(r.retracted.label)}' to query ${r.retracted.query_id} was removed`);
  });
}

// ---- polling: lease renewal while working, new queries while done ---------------------------
function schedulePoll(ms) {
  clearTimeout(S.pollTimer);
  S.pollTimer = setTimeout(poll, ms);
}

async function poll() {
  if (S.busy || !S.who) return schedulePoll(2000);
  const idle = Date.now() - S.lastInput > IDLE_MS;
  if (S.query && (REVIEW || idle || document.visibilityState !== "visible")) {
    return schedulePoll(5000);
  }
  try {
    if (S.query) {
      const r = await api("POST", "/api/next", { annotator: S.who });  // renews the lease
      if (!S.busy && (!r.query || r.query.id !== S.query.id)) {
        await show(r.query, r.progress, "your lease on the previous query expired");
      } else {
        renderProgress(r.progress);
        schedulePoll(Math.max(5000, (S.info.lease_ttl_s * 1000) / 3));
      }
    } else if (!S.busy) {
      await fetchNext();
    }
  } catch (e) {
    status(e.message, true);
    schedulePoll(10000);
  }
}

// ---- start-up -------------------------------------------------------------------------------
function buildClasses() {
  const list = $("classes");
  list.textContent = "";
  for (const c of S.info.classes) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.label = String(c.id);
    const k = document.createElement("kbd");
    k.textContent = c.key || "·";
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = c.color;
    const name = document.createElement("span");
    name.textContent = c.name;
    b.append(k, sw, name);
    b.addEventListener("click", () => answer(c.id));
    li.append(b);
    list.append(li);
    if (c.key) S.classByKey.set(c.key, c.id);
  }
}

function onKey(ev) {
  if (ev.target instanceof HTMLInputElement || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (!S.who) return;
  const key = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
  if (key === "Backspace" || key === "z") { ev.preventDefault(); undo(); return; }
  if (key === "[" || key === "]" || key === "\\") {
    ev.preventDefault();
    if (key === "\\") setView({ stretch: !S.view.stretch });
    else setView({ gamma: S.view.gamma * (key === "]" ? 0.8 : 1.25) });
    return;
  }
  if (key === "Enter" || key === " ") {
    ev.preventDefault(); // never the focused button's click as well
    // a held key repeats: accepting must be one deliberate press per pixel
    if (ev.repeat || !S.query || S.busy) return;
    const guess = suggestionOf(S.query);
    if (guess !== null) answer(guess, true);
    return;
  }
  if (!S.query || S.busy) return;
  if (S.classByKey.has(key)) { ev.preventDefault(); answer(S.classByKey.get(key)); }
  else if (key === "u") { ev.preventDefault(); answer(null); }
  else if (key === "s") { ev.preventDefault(); skip(); }
}

function askName() {
  setState("login");
  $("work").hidden = true;
  $("done").hidden = true;
  $("who").hidden = true;
  $("login").hidden = false;
  $("name").value = S.who || "";
  $("name").focus();
}

async function start(name) {
  S.who = name;
  localStorage.setItem(NAME_KEY, name);
  $("who-name").textContent = name;
  $("who").hidden = false;
  $("login").hidden = true;
  status("");
  await act(() => fetchNext());
}

async function main() {
  try {
    S.info = await api("GET", "/api/info");
  } catch (e) {
    setState("error");
    status(`cannot reach the server: ${e.message}`, true);
    return;
  }
  $("run").textContent = `run: ${S.info.run}`;
  $("mode").hidden = !REVIEW;
  buildClasses();
  $("unknown").addEventListener("click", () => answer(null));
  $("skip").addEventListener("click", skip);
  $("undo").addEventListener("click", undo);
  $("darker").addEventListener("click", () => setView({ gamma: S.view.gamma * 1.25 }));
  $("brighter").addEventListener("click", () => setView({ gamma: S.view.gamma * 0.8 }));
  $("stretch").addEventListener("click", () => setView({ stretch: !S.view.stretch }));
  $("change-name").addEventListener("click", askName);
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = $("name").value.trim();
    if (name) start(name);
  });
  document.addEventListener("keydown", onKey);
  window.addEventListener("resize", () => { if (S.query) show(S.query); });
  const saved = localStorage.getItem(NAME_KEY);
  if (saved) await start(saved); else askName();
}

main();
