// orderflow dashboard: confirmations for actions, and the live overview (Server-Sent Events).
// No framework, no external assets: the page works with no network but the dashboard's own.
(function () {
  "use strict";

  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) event.preventDefault();
  });

  if (document.body.getAttribute("data-page") !== "overview") return;

  var NAMES = ["received", "stored", "released", "delivered"];
  var KEEP = 900;     // seconds of history kept (the server's window)
  var shown = 900;    // seconds drawn: 15 min, or zoomed to 2 min
  var WIDTH = 900, HEIGHT = 200;
  var series = {};   // second -> {received, stored, released, delivered}
  var newest = 0;
  var updates = 0;

  function byId(id) { return document.getElementById(id); }
  function setText(id, text) { var el = byId(id); if (el && el.textContent !== text) el.textContent = text; }
  function int(n) { return Number(n || 0).toLocaleString("en-US"); }
  function rate(n) { return Number(n || 0).toLocaleString("en-US", { minimumFractionDigits: 1, maximumFractionDigits: 1 }); }
  function ago(s) {
    if (s === null || s === undefined) return "–";
    s = Math.floor(s);
    if (s < 120) return s + " s";
    if (s < 7200) return Math.floor(s / 60) + " min";
    if (s < 172800) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d";
  }
  function capped(n) { return n >= 1000 ? int(n) + "+" : int(n); }
  function secs(v) {
    if (v === null || v === undefined) return "–";
    return v < 10 ? Math.round(v * 1000).toLocaleString("en-US") + " ms" : v.toFixed(1) + " s";
  }

  function merge(payload) {
    payload.seconds.forEach(function (s, i) {
      var row = {};
      NAMES.forEach(function (n) { row[n] = payload[n][i]; });
      series[s] = row;
      if (s > newest) newest = s;
    });
    Object.keys(series).forEach(function (s) { if (Number(s) <= newest - KEEP) delete series[s]; });
  }

  function label(seconds) { return "−" + (seconds % 60 === 0 ? seconds / 60 + " min" : seconds + " s"); }

  function drawChart() {
    var first = newest - shown + 1, top = 1, total = 0, step = WIDTH / (shown - 1);
    for (var s = first; s <= newest; s++) {
      var row = series[s];
      if (!row) continue;
      NAMES.forEach(function (n) { if (row[n] > top) top = row[n]; });
      total += row.received;
    }
    NAMES.forEach(function (n) {
      var points = [];
      for (var s = first; s <= newest; s++) {
        var v = series[s] ? series[s][n] : 0;
        points.push(((s - first) * step).toFixed(1) + "," + (HEIGHT - (v / top) * HEIGHT).toFixed(1));
      }
      byId("line-" + n).setAttribute("points", points.join(" "));
    });
    var chart = byId("chart");
    chart.setAttribute("data-points", String(shown));
    for (var i = 0; i < 3; i++) setText("axis-" + i, label(shown - (shown / 3) * i));
    setText("chart-window", shown === KEEP ? "15 minutes" : label(shown).slice(1));
    chart.setAttribute("data-received-total", String(total));
    setText("chart-max", int(top) + "/s");
  }

  function table(containerId, headers, rows, empty) {
    var box = byId(containerId);
    box.textContent = "";
    if (!rows.length) {
      var p = document.createElement("p");
      p.className = "empty";
      p.textContent = empty;
      box.appendChild(p);
      return;
    }
    var t = document.createElement("table"), head = t.createTHead().insertRow(), body = t.createTBody();
    headers.forEach(function (h) { var th = document.createElement("th"); th.textContent = h; head.appendChild(th); });
    rows.forEach(function (cells) {
      var tr = body.insertRow();
      cells.forEach(function (c) { tr.insertCell().textContent = String(c); });
    });
    box.appendChild(t);
  }

  function showPaused(since) {
    var paused = since !== null && since !== undefined;
    byId("paused-banner").hidden = !paused;
    byId("pause-control").hidden = paused;
    byId("resume-control").hidden = !paused;
    var state = byId("ingest-state");
    state.textContent = paused ? "PAUSED" : "running";
    state.className = paused ? "bad" : "ok";
    document.body.setAttribute("data-status", paused ? "paused" : "running");
  }

  function render(snap) {
    merge(snap.tail);
    NAMES.forEach(function (n) {
      setText("rate-" + n, rate(snap.rates[n]));
      setText("total-" + n, int(snap.window_totals[n]));
    });
    drawChart();
    var b = snap.backlog;
    setText("backlog-high", int(b.bands.high));
    setText("backlog-normal", int(b.bands.normal));
    setText("backlog-low", int(b.bands.low));
    setText("backlog-leased", int(b.leased));
    setText("backlog-oldest", ago(b.oldest_age_s));
    setText("lag-p50", secs(snap.lag.p50));
    setText("lag-p99", secs(snap.lag.p99));
    setText("lag-n", String(snap.lag.n));
    setText("failures-rejected", capped(snap.failures.rejected));
    setText("failures-deliveries", capped(snap.failures.deliveries));
    table("levels", ["priority", "waiting", "oldest waits"], b.levels.map(function (l) {
      return [l.priority, int(l.count), ago(l.oldest_age_s)];
    }), "No order is waiting.");
    table("workers", ["worker", "pid", "holds", "stored since start", "last heartbeat"], snap.workers.map(function (w) {
      return [w.worker_id, w.pid, w.held, int(w.stored_total), ago(w.age_s) + " ago"];
    }), "No worker has sent a heartbeat in the last 30 s.");
    showPaused(snap.paused_since);
    updates += 1;
    document.body.setAttribute("data-updates", String(updates));
  }

  document.querySelectorAll("button[data-window]").forEach(function (button) {
    button.addEventListener("click", function () {
      shown = Number(button.getAttribute("data-window"));
      document.querySelectorAll("button[data-window]").forEach(function (b) { b.classList.toggle("active", b === button); });
      drawChart();
    });
  });

  var source = new EventSource("/dashboard/events");
  source.addEventListener("open", function () { setText("live-state", "live"); });
  source.addEventListener("error", function () {
    setText("live-state", "reconnecting…");
    // EventSource gives up after a non-200 answer (database down, session expired): reload
    // the page a little later, which retries and, if the session is gone, shows the login
    if (source.readyState === EventSource.CLOSED) { setTimeout(function () { window.location.reload(); }, 5000); }
  });
  source.addEventListener("history", function (e) { merge(JSON.parse(e.data)); });
  source.addEventListener("overview", function (e) { render(JSON.parse(e.data)); });
  source.addEventListener("logout", function () { source.close(); window.location.assign("/dashboard/login"); });
  window.addEventListener("pagehide", function () { source.close(); });
})();
