// claudemesh dashboard: keeps a mesh page live from its event stream. The stream carries
// the page's changing sections as HTML the server rendered (and escaped) exactly as it
// rendered the page itself; this script swaps them in, keeps open message details open,
// and asks before a kick or revoke is posted.
"use strict";

function swap(id, html) {
  const tbody = document.querySelector("#" + id + " tbody");
  if (!tbody || html == null) return;
  const open = new Set([...tbody.querySelectorAll("details[open]")].map((d) => d.dataset.message));
  tbody.innerHTML = html;
  for (const d of tbody.querySelectorAll("details")) {
    if (open.has(d.dataset.message)) d.open = true;
  }
}

// Follow an event stream: "view" events carry the page's sections as JSON, one "end"
// says why the page stopped; the #live line says how the stream is doing.
function follow(path, onView) {
  const status = document.getElementById("live");
  const events = new EventSource(path);
  events.addEventListener("open", () => { status.textContent = "live"; status.className = ""; });
  events.addEventListener("error", () => { status.textContent = "reconnecting…"; status.className = "down"; });
  events.addEventListener("view", (e) => onView(JSON.parse(e.data)));
  events.addEventListener("end", (e) => {
    events.close();
    status.textContent = "signed out: " + e.data;
    status.className = "down";
    document.body.classList.add("ended");
  });
}

// A mesh page (the broker's): presence, traffic, members, invites.
function live(main) {
  follow("/dashboard/m/" + encodeURIComponent(main.dataset.mesh) + "/events", (s) => {
    swap("peers", s.peers);
    swap("traffic", s.traffic);
    swap("members", s.members);
    swap("invites", s.invites);
    document.getElementById("peer-count").textContent = String(s.peerCount);
  });
}

// The operators' page: its figures, charts, nodes and meshes, re-rendered every second.
function operator() {
  follow("/dashboard/operator/events", (s) => {
    swap("figures", s.figures);
    swap("meshes", s.meshes);
    swap("nodes", s.nodes);
    const charts = document.getElementById("charts");
    if (charts && s.charts != null) charts.innerHTML = s.charts;
  });
}

// The local view (claudemesh dashboard --local): the decrypted history, re-sent when it changes.
function local() {
  follow("/events", (s) => swap("history", s.history));
}

document.addEventListener("DOMContentLoaded", () => {
  const main = document.getElementById("mesh");
  if (main) live(main);
  if (document.getElementById("operator")) operator();
  if (document.getElementById("local")) local();
  // Forms that change something say what they will do first.
  document.addEventListener("submit", (e) => {
    const question = e.target.dataset && e.target.dataset.confirm;
    if (question && !window.confirm(question)) e.preventDefault();
  });
});
