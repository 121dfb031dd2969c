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

function live(main) {
  const status = document.getElementById("live");
  const events = new EventSource("/dashboard/m/" + encodeURIComponent(main.dataset.mesh) + "/events");
  events.addEventListener("open", () => { status.textContent = "live"; status.className = ""; });
  events.addEventListener("error", () => { status.textContent = "reconnecting…"; status.className = "down"; });
  events.addEventListener("view", (e) => {
    const s = JSON.parse(e.data);
    swap("peers", s.peers);
    swap("traffic", s.traffic);
    swap("members", s.members);
    swap("invites", s.invites);
    document.getElementById("peer-count").textContent = String(s.peerCount);
  });
  events.addEventListener("end", (e) => {
    events.close();
    status.textContent = "signed out: " + e.data;
    status.className = "down";
    document.body.classList.add("ended");
  });
}

// The operators' page: its figures, charts and meshes, re-rendered every second.
function operator() {
  const status = document.getElementById("live");
  const events = new EventSource("/dashboard/operator/events");
  events.addEventListener("open", () => { status.textContent = "live"; status.className = ""; });
  events.addEventListener("error", () => { status.textContent = "reconnecting…"; status.className = "down"; });
  events.addEventListener("view", (e) => {
    const s = JSON.parse(e.data);
    swap("figures", s.figures);
    swap("meshes", s.meshes);
    const charts = document.getElementById("charts");
    if (charts && s.charts != null) charts.innerHTML = s.charts;
  });
  events.addEventListener("end", (e) => {
    events.close();
    status.textContent = "signed out: " + e.data;
    status.className = "down";
    document.body.classList.add("ended");
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const main = document.getElementById("mesh");
  if (main) live(main);
  if (document.getElementById("operator")) operator();
  // Forms that change something say what they will do first.
  document.addEventListener("submit", (e) => {
    const question = e.target.dataset && e.target.dataset.confirm;
    if (question && !window.confirm(question)) e.preventDefault();
  });
});
