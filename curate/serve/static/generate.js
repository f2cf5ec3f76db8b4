// The generate page: choose a run and snapshot, tags, directions, truncation, seed and count; the grid
// of the result; two images clicked are mixed; the history re-shows entries and reloads their parameters.
// Every text from the server goes in through textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {info: null, entry: null, selected: [], pending: 0};

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function element(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

function option(value, text, selected = false) {
  return element("option", {value, text, selected});
}

// Booru and Illustration2Vec spellings match alike: "blue eyes" finds blue_eyes
const searchable = (text) => text.toLowerCase().replace(/[_\s]+/g, " ").trim();

async function loadRuns() {
  const runs = await api("/api/runs");
  const select = $("run");
  select.replaceChildren();
  if (!runs.default) select.append(option("", runs.runs.length ? "choose a run" : "no runs in this workspace"));
  for (const run of runs.runs) select.append(option(run.name, run.name, run.name === runs.default));
  $("count").max = runs.max_n;
  if (select.value) await loadInfo();
}

async function loadInfo(snapshot) {
  const run = $("run").value;
  if (!run) return;
  setStatus(`loading ${run}…`);
  const query = snapshot ? `?snapshot=${encodeURIComponent(snapshot)}` : "";
  const info = await api(`/api/runs/${encodeURIComponent(run)}/info${query}`);
  state.info = info;
  $("snapshot").replaceChildren(...info.snapshots.map(
    (s) => option(s.name, `${s.name} (${s.kimg} kimg)`, s.name === info.snapshot)));
  const checked = new Set(checkedTags());
  $("tags").replaceChildren(...info.labels.map((name) => element("label", {dataset: {tag: searchable(name)}}, [
    element("input", {type: "checkbox", value: name, checked: checked.has(name)}), element("span", {text: name}),
  ])));
  if (!info.labels.length) $("tags").append(element("p", {text: "this generator is unconditional: no tags"}));
  filterTags();
  $("directions").replaceChildren(...info.directions.map((d) => {
    const value = element("output", {text: "0"});
    const slider = element("input", {type: "range", min: -3, max: 3, step: 0.1, value: 0, name: d.name});
    slider.addEventListener("input", () => { value.textContent = slider.value; });
    return element("label", {title: `held-out accuracy ${d.accuracy}`}, [element("span", {text: d.name}), slider, value]);
  }));
  $("directions-box").hidden = !info.directions.length;
  setStatus(`${run}: ${info.snapshot}, ${info.resolution}², ${info.labels.length} tags on ${info.device}`);
  await loadHistory();
}

function checkedTags() {
  return [...$("tags").querySelectorAll("input:checked")].map((box) => box.value);
}

function filterTags() {
  const wanted = searchable($("tag-search").value);
  for (const label of $("tags").querySelectorAll("label")) {
    label.hidden = Boolean(wanted) && !label.dataset.tag.includes(wanted);
  }
}

function edits() {
  const found = {};
  for (const slider of $("directions").querySelectorAll("input[type=range]")) {
    if (Number(slider.value) !== 0) found[slider.name] = Number(slider.value);
  }
  return found;
}

function requestBody() {
  const tags = checkedTags();
  const body = {
    run: $("run").value, snapshot: $("snapshot").value, mode: $("mode").value,
    seed: Number($("seed").value), count: Number($("count").value), truncation: Number($("truncation").value),
    noise_mode: $("noise-mode").value, edits: edits(), labels: tags,
  };
  if (body.mode === "tags") {
    if (!tags.length) throw new Error("fixed noise, varied tags: check the tags to make a row each");
    body.labels = [];
    body.rows = tags.map((tag) => [tag]);
  }
  return body;
}

async function generate(event) {
  event.preventDefault();
  let body;
  try { body = requestBody(); } catch (error) { setStatus(error.message, true); return; }
  state.pending += 1;
  setStatus(`generating… (${state.pending} waiting)`);
  try {
    const entry = await api("/api/generate", {method: "POST", body: JSON.stringify(body)});
    showEntry(entry);
    setStatus(`${entry.images.length} images in ${entry.seconds} s`);
    await loadHistory();
  } catch (error) {
    setStatus(error.message, true);
  } finally {
    state.pending -= 1;
  }
}

function showEntry(entry) {
  state.entry = entry;
  state.selected = [];
  const tile = Math.max(128, entry.resolution);
  $("grid").style.gridTemplateColumns = `repeat(${entry.columns}, auto)`;
  $("grid").replaceChildren(...entry.images.map((image) => {
    const img = element("img", {src: withToken(image.url), alt: image.caption, width: tile, height: tile});
    img.style.setProperty("--tile", `${tile}px`);
    img.addEventListener("click", () => select(image.k));
    const labels = image.sample.labels.join(", ") || "(no tags)";
    const download = element("a", {href: withToken(`${image.url}?download=1`), text: "PNG", download: ""});
    return element("figure", {className: "tile", dataset: {k: image.k}, title: labels}, [
      img, element("figcaption", {}, [element("span", {text: `${image.caption} `}), download]),
    ]);
  }));
  const what = entry.kind === "mix" ? `mix of ${entry.request.a} and ${entry.request.b}` : entry.request.mode;
  $("result-title").textContent = `${entry.entry} · ${entry.run} · ${entry.snapshot.name} · ${what}`;
  $("download-grid").href = withToken(`${entry.grid}?download=1`);
  $("download-grid").hidden = false;
  $("load-params").hidden = entry.kind !== "generate";
  updateMix();
  for (const button of $("history").querySelectorAll("button")) {
    button.classList.toggle("current", button.dataset.entry === entry.entry);
  }
}

function select(k) {
  const at = state.selected.indexOf(k);
  if (at >= 0) state.selected.splice(at, 1);
  else state.selected = [...state.selected, k].slice(-2);
  for (const figure of $("grid").querySelectorAll("figure")) {
    figure.classList.toggle("selected", state.selected.includes(Number(figure.dataset.k)));
  }
  updateMix();
}

function updateMix() {
  const images = state.entry ? state.entry.images : [];
  const plain = state.selected.every((k) => images[k] && !images[k].sample.mix);
  $("mix-button").disabled = state.selected.length !== 2 || !plain;
}

async function mix() {
  const [a, b] = state.selected;
  setStatus("mixing…");
  try {
    const entry = await api("/api/mix", {method: "POST", body: JSON.stringify({entry: state.entry.entry, a, b})});
    showEntry(entry);
    setStatus(`A (${a}) with the styles of B (${b})`);
    await loadHistory();
  } catch (error) {
    setStatus(error.message, true);
  }
}

async function loadHistory() {
  const run = $("run").value;
  if (!run) return;
  const listed = await api(`/api/playground?run=${encodeURIComponent(run)}`);
  $("history").replaceChildren(...listed.entries.map((e) => {
    const time = (e.created_at || "").slice(11, 19);
    const what = e.kind === "mix" ? "mix" : `${e.mode} · ${(e.labels || []).join(", ") || "no tags"}`;
    const button = element("button", {type: "button", text: `${time} · ${e.images} images · ${what}`,
                                      dataset: {entry: e.entry}});
    button.classList.toggle("current", Boolean(state.entry) && state.entry.entry === e.entry);
    button.addEventListener("click", () => openEntry(e.entry));
    return element("li", {}, [button]);
  }));
}

async function openEntry(id) {
  try {
    showEntry(await api(`/api/playground/${encodeURIComponent(id)}`));
  } catch (error) {
    setStatus(error.message, true);
  }
}

// The form takes an entry's parameters back: generating then makes the same images again.
async function loadParams() {
  const request = state.entry.request;
  if ($("run").value !== request.run || $("snapshot").value !== request.snapshot) {
    $("run").value = request.run;
    await loadInfo(request.snapshot);
  }
  const wanted = new Set(request.mode === "tags" ? request.rows.flat().concat(request.labels) : request.labels);
  for (const box of $("tags").querySelectorAll("input")) box.checked = wanted.has(box.value);
  for (const slider of $("directions").querySelectorAll("input[type=range]")) {
    slider.value = request.edits[slider.name] || 0;
    slider.dispatchEvent(new Event("input"));
  }
  $("mode").value = request.mode;
  $("noise-mode").value = request.noise_mode;
  $("truncation").value = request.truncation;
  $("truncation-value").textContent = request.truncation;
  $("seed").value = request.seeds[0];
  $("count").value = request.seeds.length;
  setStatus(`parameters of ${state.entry.entry} loaded`);
}

function guarded(action) {
  return (...args) => action(...args).catch((error) => setStatus(error.message, true));
}

$("controls").addEventListener("submit", generate);
$("run").addEventListener("change", guarded(() => loadInfo()));
$("snapshot").addEventListener("change", guarded(() => loadInfo($("snapshot").value)));
$("tag-search").addEventListener("input", filterTags);
$("clear-tags").addEventListener("click", () => {
  for (const box of $("tags").querySelectorAll("input")) box.checked = false;
});
$("reset-directions").addEventListener("click", () => {
  for (const slider of $("directions").querySelectorAll("input[type=range]")) {
    slider.value = 0;
    slider.dispatchEvent(new Event("input"));
  }
});
$("truncation").addEventListener("input", () => { $("truncation-value").textContent = $("truncation").value; });
$("random-seed").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 2 ** 31); });
$("mix-button").addEventListener("click", mix);
$("load-params").addEventListener("click", guarded(loadParams));
guarded(loadRuns)();
