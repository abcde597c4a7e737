// The eventledger console's only script (Content-Security-Policy: script-src 'self').
// Two pages update live: the audit log's tail and the projections table. Everything
// received is put into the page with textContent, never as HTML.
"use strict";

function utc(rfc3339) {
  const time = new Date(rfc3339);
  if (Number.isNaN(time.getTime())) return rfc3339;
  return time.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC (+00:00)");
}

function link(href, text) {
  const anchor = document.createElement("a");
  anchor.href = href;
  anchor.textContent = text;
  return anchor;
}

// The live tail: Server-Sent Events from the query API. EventSource reconnects by itself
// and sends Last-Event-ID, so a dropped connection resumes after the last event shown.
function startLiveTail(section) {
  const list = document.getElementById("live-events");
  const state = document.getElementById("live-state");
  const source = new EventSource(section.dataset.src);
  source.onopen = () => { state.textContent = "live"; };
  source.onerror = () => { state.textContent = "reconnecting…"; };
  source.onmessage = (message) => {
    let envelope;
    try { envelope = JSON.parse(message.data); } catch (_) { return; }
    const item = document.createElement("li");
    item.className = "live-event";
    item.dataset.position = String(envelope.position);
    const title = document.createElement("strong");
    title.textContent = "#" + envelope.position + " " + envelope.event_type;
    item.append(title, " ");
    item.append(link("/console/audit?" + new URLSearchParams({ stream_id: envelope.stream_id }), envelope.stream_id));
    item.append(" by ");
    const metadata = envelope.metadata || {};
    item.append(link("/console/audit?" + new URLSearchParams({ actor: metadata.actor || "" }), metadata.actor || ""));
    item.append(" · correlation ");
    item.append(link("/console/audit?" + new URLSearchParams({ correlation_id: metadata.correlation_id || "" }), metadata.correlation_id || ""));
    item.append(" · " + utc(envelope.recorded_at));
    list.prepend(item);
  };
}

// The projections table: read again every two seconds.
function refreshProjections(table) {
  const state = document.getElementById("projections-state");
  const refresh = async () => {
    try {
      const response = await fetch(table.dataset.src, { credentials: "same-origin", cache: "no-store" });
      if (!response.ok) { state.textContent = "could not refresh (" + response.status + ")"; return; }
      const body = await response.json();
      for (const projection of body.items) {
        const row = Array.from(table.querySelectorAll("tr[data-name]")).find((candidate) => candidate.dataset.name === projection.name);
        if (!row) continue;
        const set = (field, value) => {
          const cell = row.querySelector('[data-field="' + field + '"]');
          if (cell) cell.textContent = value;
        };
        set("position", String(projection.position));
        set("head", String(projection.head));
        set("lag", String(projection.lag));
        set("status", projection.error ? projection.status + ": " + projection.error : projection.status);
        set("holder", projection.holder || "none");
        set("updated_at", utc(projection.updated_at));
      }
      state.textContent = "updated " + utc(new Date().toISOString());
    } catch (_) {
      state.textContent = "could not refresh";
    }
  };
  setInterval(refresh, 2000);
}

document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live");
  if (live) startLiveTail(live);
  const projections = document.getElementById("projections");
  if (projections && projections.dataset.src) refreshProjections(projections);
});
