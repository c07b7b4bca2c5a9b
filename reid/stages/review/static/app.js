// comic-reid review app: a small single-page client of the JSON API (no framework, nothing from the internet).
"use strict";

const view = document.getElementById("view");
const selection = new Set();  // member ids selected in the identity view, or identity ids in the book view

function esc(text) {
  return String(text).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

async function api(path, body) {
  const options = body === undefined ? {} : {method: "POST", headers: {"Content-Type": "application/json"},
                                              body: JSON.stringify(body)};
  const response = await fetch(path, {credentials: "same-origin", ...options});
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function showError(error) {
  const box = document.getElementById("error");
  box.textContent = error ? String(error.message || error) : "";
  box.hidden = !error;
}

async function act(kind, payload) {
  try {
    showError(null);
    const out = await api("/api/actions", {kind, payload});
    await route();
    return out;
  } catch (error) { showError(error); }
}

function thumb(instance, extra = "") {
  if (!instance) return "";
  return `<img class="thumb" loading="lazy" src="/api/thumb/${encodeURIComponent(instance)}"
    data-instance="${esc(instance)}" alt="${esc(instance)}" ${extra}>`;
}

function identityLabel(row) {
  const name = row.name ? ` “${esc(row.name)}”` : "";
  const flags = (row.not_character ? ' <span class="extra">not a character</span>' : "") +
                (row.reviewed ? ' <span class="reviewed">reviewed</span>' : "");
  return `#${row.identity}${name}${flags}`;
}

async function showPanel(instance) {
  const box = await api(`/api/box/${encodeURIComponent(instance)}`);
  const img = document.getElementById("panel-img");
  const frame = document.getElementById("panel-box");
  img.onload = () => {
    const [x0, y0, x1, y1] = box.box;
    const sx = 100 / img.naturalWidth, sy = 100 / img.naturalHeight;
    Object.assign(frame.style, {left: `${x0 * sx}%`, top: `${y0 * sy}%`, width: `${(x1 - x0) * sx}%`,
                                height: `${(y1 - y0) * sy}%`});
  };
  img.onerror = () => { document.getElementById("panel-caption").textContent = `no panel image for ${box.panel_id}`; };
  img.src = `/api/panel/${encodeURIComponent(box.panel_id)}`;
  document.getElementById("panel-caption").textContent = `${instance} in panel ${box.panel_id}`;
  document.getElementById("panel").hidden = false;
}
document.getElementById("panel-close").onclick = () => { document.getElementById("panel").hidden = true; };

async function renderCorpus() {
  const data = await api("/api/books");
  view.innerHTML = `<h2>Corpus</h2><p>${data.books.length} books · ${data.actions} actions ·
    labels ${esc(data.labels)}</p>
    <table data-testid="books"><tr><th>book</th><th>identities</th><th>instances</th><th>reviewed</th><th>named</th></tr>
    ${data.books.map(b => `<tr data-testid="book-${b.series}"><td><a href="#/book/${b.series}">series ${b.series}</a></td>
      <td>${b.identities}</td><td>${b.instances}</td>
      <td>${Math.round(100 * b.reviewed / Math.max(1, b.instances))} %</td><td>${b.named}</td></tr>`).join("")}
    </table>`;
}

async function renderBook(series) {
  const data = await api(`/api/books/${series}`);
  selection.clear();
  view.innerHTML = `<h2>Book ${series}</h2>
    <div class="toolbar">
      <button data-testid="merge" id="merge">Merge selected</button>
      <input id="name" data-testid="name-input" placeholder="name"><button id="set-name" data-testid="set-name">Name selected</button>
      <button id="extra" data-testid="extra">Not a character</button>
      <span id="count">0 selected</span></div>
    <table data-testid="identities">${data.identities.map(row => `
      <tr data-testid="identity-row" data-identity="${row.identity}">
        <td><input type="checkbox" data-testid="select-identity-${row.identity}" data-identity="${row.identity}"></td>
        <td><a href="#/identity/${series}/${row.identity}" data-testid="open-identity-${row.identity}">${identityLabel(row)}</a></td>
        <td data-testid="size-${row.identity}">${row.size}</td>
        <td>${row.faces.map(i => thumb(i)).join("")}</td><td>${row.bodies.map(i => thumb(i)).join("")}</td>
        <td><a href="#/similar/${series}/${row.identity}">more like this</a></td></tr>`).join("")}
    </table>`;
  view.querySelectorAll("input[type=checkbox]").forEach(box => box.onchange = () => {
    const id = Number(box.dataset.identity);
    box.checked ? selection.add(id) : selection.delete(id);
    document.getElementById("count").textContent = `${selection.size} selected`;
  });
  const chosen = () => [...selection];
  document.getElementById("merge").onclick = () => act("merge", {series, identities: chosen()});
  document.getElementById("set-name").onclick = () => act("name", {
    targets: chosen().map(i => [series, i]), name: document.getElementById("name").value});
  document.getElementById("extra").onclick = () => Promise.all(chosen().map(identity =>
    api("/api/actions", {kind: "extra", payload: {series, identity, value: true}}))).then(route, showError);
  bindThumbs();
}

async function renderIdentity(series, identity) {
  const data = await api(`/api/books/${series}/identities/${identity}`);
  selection.clear();
  const options = data.others.map(o => `<option value="${o.identity}">#${o.identity} ${esc(o.name)}</option>`).join("");
  view.innerHTML = `<h2>Book ${series} · identity ${identityLabel(data)}</h2>
    <p>${data.size} instances in ${data.units} window identities, most typical first. Click a crop for its panel;
    click a window tag to select its window identity.</p>
    <div class="toolbar">
      <button id="split" data-testid="split">Split selected into a new identity</button>
      <select id="onto" data-testid="onto">${options}</select><button id="move" data-testid="move">Move selected onto</button>
      <button id="extra-sel" data-testid="extra-selected">Not a character (selected)</button>
      <input id="name" data-testid="name-input" value="${esc(data.name)}" placeholder="name">
      <button id="set-name" data-testid="set-name">Name</button>
      <a href="#/book/${series}">back to the book</a><span id="count">0 selected</span></div>
    <div class="members" data-testid="members">${data.members.map(m => `
      <div class="member" data-member="${esc(m.id)}" data-unit="${esc(m.unit)}" data-testid="member">
        <label><input type="checkbox" data-member="${esc(m.id)}"> ${m.distance}</label><br>
        ${thumb(m.face)}${thumb(m.body)}<br>
        <span class="unit" data-unit="${esc(m.unit)}">${esc(m.unit)}</span><br>
        <a href="#/similar?member=${encodeURIComponent(m.id)}">more like this</a></div>`).join("")}</div>`;
  const refresh = () => {
    view.querySelectorAll(".member").forEach(card => {
      const on = selection.has(card.dataset.member);
      card.classList.toggle("selected", on);
      card.querySelector("input").checked = on;
    });
    document.getElementById("count").textContent = `${selection.size} selected`;
  };
  view.querySelectorAll(".member input").forEach(box => box.onchange = () => {
    box.checked ? selection.add(box.dataset.member) : selection.delete(box.dataset.member); refresh();
  });
  view.querySelectorAll(".unit").forEach(tag => tag.onclick = () => {
    view.querySelectorAll(`.member[data-unit="${CSS.escape(tag.dataset.unit)}"]`).forEach(c => selection.add(c.dataset.member));
    refresh();
  });
  const members = () => [...selection];
  document.getElementById("split").onclick = () => act("move", {series, members: members(), to: null});
  document.getElementById("move").onclick = () => act("move", {series, members: members(),
    to: Number(document.getElementById("onto").value)});
  document.getElementById("extra-sel").onclick = () => act("extra", {series, members: members(), value: true});
  document.getElementById("set-name").onclick = () => act("name", {targets: [[series, identity]],
    name: document.getElementById("name").value});
  bindThumbs();
}

function questionHtml(q, index) {
  if (q.type === "same") {
    return `<div class="question" data-testid="question" data-index="${index}">
      <b>Book ${q.series}: are these two identities the same character?</b> (distance ${q.distance})<br>
      <div class="side"><a href="#/identity/${q.series}/${q.a}">#${q.a} ${esc(q.a_name)}</a><br>${q.a_thumbs.map(i => thumb(i)).join("")}</div>
      <div class="side"><a href="#/identity/${q.series}/${q.b}">#${q.b} ${esc(q.b_name)}</a><br>${q.b_thumbs.map(i => thumb(i)).join("")}</div><br>
      <button data-testid="answer-yes" data-answer="yes" data-index="${index}">Yes, the same</button>
      <button data-testid="answer-no" data-answer="no" data-index="${index}">No, two characters</button></div>`;
  }
  return `<div class="question" data-testid="question" data-index="${index}">
    <b>Book ${q.series}: does this window identity belong to #${q.identity}?</b>
    (${q.distance} from it, ${q.other_distance} from #${q.other})<br>
    <div class="side">this: ${q.unit_thumbs.map(i => thumb(i)).join("")}</div><br>
    <div class="side">#${q.identity}: ${q.identity_thumbs.map(i => thumb(i)).join("")}</div>
    <div class="side">#${q.other}: ${q.other_thumbs.map(i => thumb(i)).join("")}</div><br>
    <button data-testid="answer-yes" data-answer="yes" data-index="${index}">Yes, it belongs</button>
    <button data-testid="answer-other" data-answer="other" data-index="${index}">No, it is #${q.other}</button>
    <button data-testid="answer-no" data-answer="no" data-index="${index}">No, neither</button></div>`;
}

async function renderQueue() {
  const data = await api("/api/queue?limit=20");
  view.innerHTML = `<h2>Review queue</h2><p>${data.items.length} most doubtful decisions, most doubtful first.</p>
    <div data-testid="queue">${data.items.map(questionHtml).join("") || "<p>Nothing left to ask.</p>"}</div>`;
  view.querySelectorAll("button[data-answer]").forEach(button => button.onclick = () => {
    const q = data.items[Number(button.dataset.index)], answer = button.dataset.answer;
    if (q.type === "same") act("same", {series: q.series, a: q.a, b: q.b, answer});
    else act("belongs", {series: q.series, unit: q.unit, identity: q.identity,
                         answer: answer === "yes" ? "yes" : "no", other: answer === "other" ? q.other : null});
  });
  bindThumbs();
}

async function renderSimilar(params) {
  const query = params.member ? `member=${encodeURIComponent(params.member)}`
                              : `series=${params.series}&identity=${params.identity}`;
  const data = await api(`/api/similar?${query}&k=24`);
  view.innerHTML = `<h2>More like ${esc(data.query)}</h2>
    <div class="toolbar"><input id="name" data-testid="name-input" placeholder="name">
      <button id="set-name" data-testid="set-name">Name the chosen identities (any book)</button></div>
    <div class="members" data-testid="similar">${data.members.map(m => `
    <div class="member"><label><input type="checkbox" data-target="${m.series}/${m.identity}"></label>
      <a href="#/identity/${m.series}/${m.identity}">book ${m.series} #${m.identity}</a> ${m.distance}<br>
      ${thumb(m.face)}${thumb(m.body)}</div>`).join("")}</div>`;
  document.getElementById("set-name").onclick = () => {
    const targets = [...new Set([...view.querySelectorAll("input[data-target]:checked")].map(b => b.dataset.target))]
      .map(t => t.split("/").map(Number));
    act("name", {targets, name: document.getElementById("name").value});
  };
  bindThumbs();
}

function bindThumbs() {
  view.querySelectorAll("img.thumb").forEach(img => img.onclick = () => showPanel(img.dataset.instance).catch(showError));
}

async function refreshStatus() {
  const data = await api("/api/books");
  document.getElementById("status").textContent =
    `${data.actions} actions · model ${data.model_version || "?"}`;
}

async function route() {
  const hash = location.hash.slice(1) || "/";
  const [path, search] = hash.split("?");
  const parts = path.split("/").filter(Boolean);
  try {
    if (parts[0] === "book") await renderBook(Number(parts[1]));
    else if (parts[0] === "identity") await renderIdentity(Number(parts[1]), Number(parts[2]));
    else if (parts[0] === "queue") await renderQueue();
    else if (parts[0] === "similar") {
      await renderSimilar(parts.length > 2 ? {series: parts[1], identity: parts[2]}
                                           : Object.fromEntries(new URLSearchParams(search || "")));
    } else await renderCorpus();
    await refreshStatus();
    document.body.dataset.ready = String(Date.now());
  } catch (error) { showError(error); }
}

document.getElementById("undo").onclick = async () => {
  try { showError(null); await api("/api/undo", {}); await route(); } catch (error) { showError(error); }
};
window.addEventListener("hashchange", route);
if (new URLSearchParams(location.search).has("token")) {
  history.replaceState(null, "", location.pathname + location.hash);  // the cookie carries the token from here
}
route();
