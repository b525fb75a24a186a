// Quarry web console: the live part of a live query's page. The page is complete
// without this script (server-rendered at load); with it, host states and rows arrive
// as the API's Server-Sent Events report them. Text is only ever set as textContent,
// never as HTML, so nothing a host answers can run in the page.
"use strict";

(function () {
  function cell(row, text, mono) {
    const td = document.createElement("td");
    td.textContent = text == null ? "" : String(text);
    if (mono) td.className = "mono";
    row.appendChild(td);
    return td;
  }

  function badge(td, state) {
    td.textContent = "";
    const span = document.createElement("span");
    span.className = "badge " + state;
    span.textContent = state;
    td.appendChild(span);
  }

  function follow(live) {
    const hostsBody = live.querySelector("#query-hosts tbody");
    const rowsTable = live.querySelector("#rows");
    const headRow = rowsTable.querySelector("thead tr");
    const rowsBody = rowsTable.querySelector("tbody");
    const columns = Array.from(headRow.children).slice(1).map((th) => th.textContent);
    const seen = new Set(Array.from(rowsBody.children).map((tr) => tr.dataset.key));

    function counts(data) {
      for (const [state, n] of Object.entries(data.counts || {})) {
        const b = live.querySelector('#counts b[data-state="' + state + '"]');
        if (b) b.textContent = String(n);
      }
      live.querySelector("#done-state").textContent = data.done ? "done" : "waiting for answers";
    }

    function host(h) {
      let tr = Array.from(hostsBody.children).find((r) => r.dataset.node === h.node_id);
      if (!tr) {
        tr = document.createElement("tr");
        tr.dataset.node = h.node_id;
        cell(tr, h.host_identifier || h.node_id, true);
        cell(tr, "");
        cell(tr, "");
        cell(tr, "");
        hostsBody.appendChild(tr);
      }
      badge(tr.children[1], h.state);
      tr.children[2].textContent = String(h.row_count);
      tr.children[3].textContent = h.message || "";
    }

    function addRow(row) {
      const key = row.host_identifier + "/" + row.row_index;
      if (seen.has(key)) return;
      seen.add(key);
      for (const name of Object.keys(row.columns)) {
        if (!columns.includes(name)) {
          columns.push(name);
          const th = document.createElement("th");
          th.textContent = name;
          headRow.appendChild(th);
          for (const tr of rowsBody.children) cell(tr, "");
        }
      }
      const tr = document.createElement("tr");
      tr.dataset.key = key;
      cell(tr, row.host_identifier, true);
      for (const name of columns) cell(tr, row.columns[name]);
      rowsBody.appendChild(tr);
    }

    const source = new EventSource(live.dataset.events);
    source.addEventListener("progress", (e) => {
      const data = JSON.parse(e.data);
      counts(data);
      (data.hosts || []).forEach(host);
    });
    source.addEventListener("rows", (e) => JSON.parse(e.data).rows.forEach(addRow));
    source.addEventListener("done", (e) => {
      counts(JSON.parse(e.data));
      live.dataset.state = "done";
      source.close();
    });
    source.addEventListener("error", (e) => {
      if (e.data) live.querySelector("#done-state").textContent = JSON.parse(e.data).message;
      source.close();
    });
    live.dataset.state = "following";
  }

  document.addEventListener("DOMContentLoaded", () => {
    const live = document.getElementById("live");
    if (live && live.dataset.events) follow(live);
  });
})();
