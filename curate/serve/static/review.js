// The review page: faces in a grid, good/bad/skip by click or key, the filter run again with progress.
// Every piece of data reaches the page through textContent or an attribute, never as markup.
"use strict";

const PAGE = 60;
const KEYS = {g: "good", b: "bad", " ": "skip"};
const state = {faces: [], offset: 0, total: 0, current: 0, undo: [], polling: null, chain: Promise.resolve(), pending: 0};
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else if (value !== null && value !== undefined) node.setAttribute(name, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function number(value, digits = 3) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function status(text, bad = false) {
  const line = $("status");
  line.textContent = text;
  line.classList.toggle("bad", bad);
}

function listingQuery(offset) {
  const query = new URLSearchParams({sort: $("sort").value, offset: String(offset), limit: String(PAGE)});
  const tags = $("query").value.trim();
  if (tags) query.set("q", tags);
  if ($("reason").value) query.set("reason", $("reason").value);
  if ($("todo").checked) query.set("todo", "true");
  return "/api/faces?" + query.toString();
}

async function loadFaces(append = false) {
  const offset = append ? state.offset : 0;
  let page;
  try {
    page = await api(listingQuery(offset));
  } catch (error) {
    status(error.message, true);
    return;
  }
  if (!append) {
    state.faces = [];
    state.current = 0;
    state.undo = [];  // faces shown: a new listing starts a new stack
    $("grid").replaceChildren();
  }
  for (const face of page.faces) {
    state.faces.push(face);
    $("grid").append(card(face, state.faces.length - 1));
  }
  state.offset = offset + page.faces.length;
  state.total = page.total;
  $("more").hidden = state.offset >= state.total;
  $("shown").textContent = `${state.faces.length} of ${state.total} faces`;
  if (!append && state.faces.length) focusFace(0, false);
  if (!state.faces.length) status("No faces match.");
}

function card(face, index) {
  const image = el("img", {src: withToken(face.crop), alt: face.face_id, loading: "lazy", width: 128, height: 128});
  const labels = el("ul", {class: "labels"});
  for (const label of face.labels) {
    const item = el("li", {text: label, title: "show faces with this tag"});
    item.addEventListener("click", (event) => {
      event.stopPropagation();
      $("query").value = label;
      loadFaces();
    });
    labels.append(item);
  }
  const post = face.post_url
    ? el("a", {href: face.post_url, target: "_blank", rel: "noopener noreferrer", text: face.post_id})
    : el("span", {text: face.post_id || "no post"});
  const buttons = el("div", {class: "buttons"});
  for (const [key, decision] of [["g", "good"], ["b", "bad"], ["space", "skip"]]) {
    const button = el("button", {type: "button", class: decision, title: `${decision} (${key})`, text: decision});
    button.addEventListener("click", (event) => {
      event.stopPropagation();
      focusFace(index, false);
      decide(decision);
    });
    buttons.append(button);
  }
  const original = el("button", {type: "button", class: "original", title: "the original around the crop (o)", text: "original"});
  original.disabled = !face.context;
  original.addEventListener("click", (event) => {
    event.stopPropagation();
    toggleOriginal(index);
  });
  buttons.append(original);
  const node = el(
    "article",
    {class: "face", tabindex: "0", "data-face": face.face_id, "data-reason": face.reason},
    image,
    el("div", {class: "line"},
      el("span", {class: "score", text: number(face.score)}),
      el("span", {class: "reason", text: reasonText(face)}),
      el("span", {class: "decision", text: face.decision || ""})),
    labels,
    el("div", {class: "line post"}, post),
    buttons,
  );
  node.addEventListener("click", () => focusFace(index, false));
  node.addEventListener("dblclick", () => showDetails(index));
  paintDecision(node, face.decision);
  return node;
}

function reasonText(face) {
  const parts = [face.reason.replace("_", " ")];
  if (face.seed) parts.push(`${face.seed} seed`);
  else if (face.mined) parts.push(`mined ${face.mined}`);
  if (face.dup_of) parts.push(`copy of ${face.dup_of}`);
  else if (face.dup_group) parts.push("keeps its group");
  return parts.join(" · ");
}

function paintDecision(node, decision) {
  for (const name of ["good", "bad", "skip"]) node.classList.toggle(`is-${name}`, decision === name);
  const label = node.querySelector(".decision");
  if (label) label.textContent = decision || "";
}

function cards() {
  return $("grid").children;
}

function focusFace(index, scroll = true) {
  if (!state.faces.length) return;
  state.current = Math.max(0, Math.min(index, state.faces.length - 1));
  for (const node of cards()) node.classList.remove("current");
  const node = cards()[state.current];
  node.classList.add("current");
  if (document.activeElement !== node && !node.contains(document.activeElement)) node.focus({preventScroll: !scroll});
  if (scroll) node.scrollIntoView({block: "nearest"});
}

// Decisions and undos go to the server one after another, in the order the keys were pressed; the
// grid moves on at once, so fast typing never decides the same face twice.
function enqueue(work) {
  state.pending += 1;
  document.body.dataset.pending = String(state.pending);
  state.chain = state.chain.then(work).then(refreshCounts).finally(() => {
    state.pending -= 1;
    document.body.dataset.pending = String(state.pending);
  });
}

function decide(decision) {
  const index = state.current;
  const face = state.faces[index];
  if (!face) return;
  focusFace(index + 1);
  enqueue(async () => {
    try {
      const made = await api("/api/review", {method: "POST", body: JSON.stringify({face_id: face.face_id, decision})});
      face.decision = made.decision;
      state.undo.push(face);
      paintDecision(cardOf(face), face.decision);
      status(`${face.face_id}: ${decision}`);
    } catch (error) {
      status(`${face.face_id}: ${error.message}`, true);
    }
  });
}

function undo() {
  enqueue(async () => {
    // the newest decision made on this page; with none, the current face's own newest decision
    const face = state.undo.length ? state.undo.pop() : state.faces[state.current];
    if (!face || !face.decision) {
      status("Nothing to undo.");
      return;
    }
    try {
      const made = await api("/api/review/undo", {method: "POST", body: JSON.stringify({face_id: face.face_id})});
      face.decision = made.decision;
      paintDecision(cardOf(face), face.decision);
      status(`${face.face_id}: undone${made.decision ? `, ${made.decision} again` : ""}`);
      const index = state.faces.indexOf(face);
      if (index >= 0) focusFace(index);
    } catch (error) {
      status(error.message, true);
    }
  });
}

function cardOf(face) {
  return cards()[state.faces.indexOf(face)] || document.createElement("article");
}

function toggleOriginal(index) {
  const face = state.faces[index];
  if (!face || !face.context) return;
  const node = cards()[index];
  const image = node.querySelector("img");
  const showing = node.classList.toggle("showing-original");
  image.src = withToken(showing ? face.context : face.crop);
  image.alt = showing ? `the original around ${face.face_id}` : face.face_id;
}

async function showDetails(index) {
  const face = state.faces[index];
  if (!face) return;
  const panel = $("details");
  let info;
  try {
    info = await api(`/api/faces/${encodeURIComponent(face.face_id)}`);
  } catch (error) {
    status(error.message, true);
    return;
  }
  const close = el("button", {type: "button", text: "close"});
  close.addEventListener("click", () => { panel.hidden = true; });
  const rows = [
    ["face", info.face_id], ["score", number(info.score)], ["outcome", reasonText(info)],
    ["why", info.message || "–"], ["nearest seeds", info.nearest_seeds.join(", ") || "–"],
    ["decisions", info.history.join(" → ") || "none"], ["labels", info.labels.join(", ") || "–"],
    ["detector", `${info.detector || "?"} ${number(info.detector_score, 2)}`],
    ["original", info.image_size.join(" × ")],
  ];
  const list = el("dl");
  for (const [name, value] of rows) list.append(el("dt", {text: name}), el("dd", {text: String(value)}));
  const posts = el("ul");
  for (const post of info.posts) {
    posts.append(el("li", {}, post.url
      ? el("a", {href: post.url, target: "_blank", rel: "noopener noreferrer", text: post.post_id})
      : el("span", {text: post.post_id})));
  }
  panel.replaceChildren(close, list, el("h3", {text: "posts"}), posts);
  panel.hidden = false;
}

async function refreshCounts() {
  let counts;
  try {
    counts = await api("/api/counts");
  } catch (error) {
    status(error.message, true);
    return null;
  }
  const values = {
    faces: counts.faces, kept: counts.kept, dropped: counts.dropped, duplicates: counts.duplicates,
    threshold: number(counts.threshold), precision: number(counts.estimated_precision, 2),
    good: counts.decisions.good, bad: counts.decisions.bad, skip: counts.decisions.skip,
  };
  for (const [name, value] of Object.entries(values)) {
    document.querySelector(`[data-count="${name}"]`).textContent = String(value);
  }
  return counts;
}

async function runFilter() {
  $("run-filter").disabled = true;
  try {
    showJob(await api("/api/filter/run", {method: "POST", body: "{}"}));
  } catch (error) {
    status(error.message, true);
  }
  pollJob();
}

function pollJob() {
  clearTimeout(state.polling);
  state.polling = setTimeout(async () => {
    let job;
    try {
      job = await api("/api/filter/job");
    } catch (error) {
      status(error.message, true);
      $("run-filter").disabled = false;
      return;
    }
    showJob(job);
    if (job.state === "running") {
      pollJob();
      return;
    }
    $("run-filter").disabled = false;
    if (job.state === "failed") status(`The filter failed: ${job.message}`, true);
    if (job.state === "done") {
      status(`Filter done: ${job.report.kept} of ${job.report.faces} faces kept.`);
      await refreshCounts();
      await loadFaces();
    }
  }, 250);
}

function showJob(job) {
  const bar = $("filter-progress");
  bar.hidden = job.state !== "running";
  bar.value = job.fraction;
  $("filter-step").textContent = job.state === "running" ? job.step || "" : "";
  document.body.dataset.job = job.state;
}

function onKey(event) {
  const target = event.target;
  if (target.matches("input, select, textarea")) return;
  if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") {
    event.preventDefault();
    undo();
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  if (key in KEYS) {
    event.preventDefault();  // space would scroll or press the focused button
    decide(KEYS[key]);
  } else if (key === "u") {
    undo();
  } else if (key === "ArrowRight" || key === "j") {
    event.preventDefault();
    focusFace(state.current + 1);
  } else if (key === "ArrowLeft" || key === "k") {
    event.preventDefault();
    focusFace(state.current - 1);
  } else if (key === "o") {
    toggleOriginal(state.current);
  } else if (key === "i") {
    showDetails(state.current);
  } else if (key === "Escape") {
    $("details").hidden = true;
  }
}

function start() {
  document.addEventListener("keydown", onKey);
  for (const id of ["sort", "reason", "todo"]) $(id).addEventListener("change", () => loadFaces());
  let typing = null;
  $("query").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => loadFaces(), 300);
  });
  $("more").addEventListener("click", () => loadFaces(true));
  $("run-filter").addEventListener("click", runFilter);
  refreshCounts().then((counts) => {
    if (counts && counts.job.state === "running") {
      $("run-filter").disabled = true;
      pollJob();
    }
  });
  loadFaces();
}

start();
