// claudemesh dashboard: keeps a mesh page live from its event stream. Everything a peer
// wrote is set with textContent, never parsed as HTML.
"use strict";

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
}

function fill(tbody, items, columns) {
  const rows = items.map((item) => {
    const tr = document.createElement("tr");
    tr.dataset.key = item.pubkey;
    for (const [get, cls] of columns) cell(tr, get(item), cls);
    return tr;
  });
  tbody.replaceChildren(...rows);
}

const peerColumns = [
  [(p) => p.displayName, "name"],
  [(p) => p.status, "status"],
  [(p) => p.summary || "", "summary"],
  [(p) => p.peerRole],
  [(p) => p.hostname || ""],
  [(p) => p.reach || "live"],
];
const memberColumns = [
  [(m) => m.displayName, "name"],
  [(m) => m.kind],
  [(m) => m.role],
  [(m) => (m.online ? "online" : "offline")],
  [(m) => m.lastSeen || "never"],
];

function live(main) {
  const status = document.getElementById("live");
  const events = new EventSource("/dashboard/m/" + encodeURIComponent(main.dataset.mesh) + "/events");
  events.addEventListener("open", () => { status.textContent = "live"; status.className = ""; });
  events.addEventListener("error", () => { status.textContent = "reconnecting…"; status.className = "down"; });
  events.addEventListener("view", (e) => {
    const view = JSON.parse(e.data);
    fill(document.querySelector("#peers tbody"), view.peers, peerColumns);
    fill(document.querySelector("#members tbody"), view.members, memberColumns);
    document.getElementById("peer-count").textContent = String(view.peers.length);
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
});
