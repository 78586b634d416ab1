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
const IDLE_MS = 10 * 60 * 1000; // stop renewing a lease after this long without input

const $ = (id) => document.getElementById(id);
const S = {
  info: null, who: null, query: null, busy: false, lastInput: Date.now(),
  images: new Map(), classByKey: new Map(), pollTimer: null,
  flashTimer: null, undoBlocked: false,
};

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
  }
  const px = half * z, py = half * z;
  const pad = Math.max(2, z * 0.25);
  for (const [color, width] of [["#000", 4], ["#ffd400", 2]]) {
    ctx.strokeStyle = color; ctx.lineWidth = width;
    ctx.strokeRect(px - pad, py - pad, z + 2 * pad, z + 2 * pad);
  }
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
    ? "The run can continue: `balseg run RUN_DIR` picks the answers up." : "");
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
  if (img) {
    drawMain(img, q);
    drawPatch($("context"), img, q, 48);
    drawPatch($("detail"), img, q, 15);
  }
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

function answer(label) {
  const q = S.query;
  if (!q) return;
  act(async () => {
    flash(label === null ? $("unknown") : document.querySelector(`#classes button[data-label="${label}"]`));
    const r = await api("POST", "/api/answer",
      { annotator: S.who, query_id: q.id, label, review: REVIEW });
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
