/* Kindling console: live inbox, queue and conversation over /console/ws, SLA timers, replies without a reload,
 * dates in the operator's language.
 * Plain JavaScript, no build step. The pages work without it (forms post and redirect); this only
 * keeps them current. Everything from the server goes into the page with textContent, never as HTML. */
(function () {
  "use strict";
  var script = document.currentScript;
  var queueTable = document.querySelector("[data-queue]");
  var rowTemplate = document.getElementById("queue-row");
  var messages = document.querySelector("[data-messages]");
  var status = document.querySelector("p.status[data-handoff-id]");
  var liveNote = document.querySelector("[data-live-note]");
  var watchQueue = script && script.hasAttribute("data-watch-queue");
  var inboxTable = document.querySelector("[data-inbox]");
  var inboxRow = document.getElementById("inbox-row");
  var handoff = messages && messages.getAttribute("data-handoff");

  // --- SLA timers: seconds left as the server counted them, ticking on from when they arrived -----
  function clockText(seconds) {  // as bot/console/pages.py's countdown: "2 h 38 min", "4 min 5 s", "late by 1 min"
    var whole = Math.abs(Math.trunc(seconds)), hours = Math.floor(whole / 3600);
    var minutes = Math.floor(whole / 60) % 60, rest = whole % 60;
    var parts = hours ? [hours + " h", minutes ? minutes + " min" : ""]
      : [minutes ? minutes + " min" : "", rest || !minutes ? rest + " s" : ""];
    var text = parts.filter(Boolean).join(" ");
    return seconds >= 0 ? text + " left" : "late by " + text;
  }
  function startTimer(el, secondsLeft) {
    el.setAttribute("data-left", String(secondsLeft));
    el.kindlingDeadline = Date.now() + secondsLeft * 1000;
  }
  function tick() {
    document.querySelectorAll(".sla[data-left]").forEach(function (el) {
      if (el.kindlingDeadline === undefined) startTimer(el, parseFloat(el.getAttribute("data-left")) || 0);
      var left = (el.kindlingDeadline - Date.now()) / 1000;
      el.textContent = clockText(left);
      el.classList.toggle("late", left < 0);
    });
  }

  // --- Dates in the operator's language and time zone: the page has ISO times in <time datetime> ------
  var dates = new Intl.DateTimeFormat(navigator.languages, { dateStyle: "medium", timeStyle: "short" });
  function dateText(iso) {
    var moment = new Date(iso);
    return isNaN(moment.getTime()) ? String(iso) : dates.format(moment);
  }
  function timeElement(iso) {
    var el = document.createElement("time");
    el.setAttribute("datetime", String(iso));
    el.textContent = dateText(iso);
    el.title = String(iso);
    return el;
  }
  document.querySelectorAll("time[datetime]").forEach(function (el) {
    el.title = el.getAttribute("datetime");
    el.textContent = dateText(el.getAttribute("datetime"));
  });

  // --- The queue: rows drawn from the row template, most urgent first ----------------------------
  var RANK = { waiting: 0, claimed: 1 };
  function field(row, name) { return row.querySelector('[data-field="' + name + '"]'); }
  function fill(row, h) {
    row.setAttribute("data-id", String(h.id));
    row.setAttribute("data-status", h.status);
    row.setAttribute("data-due", h.sla_due_at);
    row.setAttribute("data-score", String(h.score || 0));
    row.setAttribute("data-likelihood", h.likelihood == null ? "" : String(h.likelihood));
    row.classList.toggle("late", !!h.breached || (h.status === "waiting" && h.sla_seconds_left < 0));
    var name = field(row, "name");
    name.textContent = h.label || h.name || "Visitor";
    name.setAttribute("href", "/console/handoffs/" + encodeURIComponent(h.id));
    field(row, "lead_id").textContent = String(h.lead_id);
    field(row, "reason").textContent = h.reason || "";
    field(row, "trigger").textContent = h.trigger || "";
    field(row, "score").textContent = String(Math.round(h.score || 0));
    field(row, "channel").textContent = h.channel || "-";
    field(row, "holder").textContent = h.claimed_by ? "taken by " + h.claimed_by : "waiting";
    var sla = field(row, "sla");
    if (h.status === "waiting") startTimer(sla, h.sla_seconds_left);
    else { sla.removeAttribute("data-left"); sla.textContent = ""; }
    var take = row.querySelector("form.take");
    if (take) {
      take.setAttribute("action", "/console/handoffs/" + encodeURIComponent(h.id) + "/take");
      take.hidden = h.status !== "waiting";
    }
  }
  function rowOf(id) { return queueTable.querySelector('tbody tr[data-id="' + String(id) + '"]'); }
  function upsert(h) {
    var row = rowOf(h.id);
    if (!row) {
      row = rowTemplate.content.firstElementChild.cloneNode(true);
      queueTable.tBodies[0].appendChild(row);
    }
    fill(row, h);
  }
  function remove(id) { var row = rowOf(id); if (row) row.remove(); }
  function urgency(row) {  // as bot/console/queue.py's urgent_first: the likeliest leads, then the SLA
    var status = row.getAttribute("data-status"), likelihood = row.getAttribute("data-likelihood") || "";
    return [status in RANK ? RANK[status] : 2, likelihood === "" ? 1 : 0, -parseFloat(likelihood || "0"),
      Date.parse(row.getAttribute("data-due")) || 0,
      -parseFloat(row.getAttribute("data-score") || "0"), parseInt(row.getAttribute("data-id"), 10)];
  }
  function compare(a, b) {
    var x = urgency(a), y = urgency(b);
    for (var i = 0; i < x.length; i++) if (x[i] !== y[i]) return x[i] < y[i] ? -1 : 1;
    return 0;
  }
  function arrange() {
    var body = queueTable.tBodies[0], rows = Array.prototype.slice.call(body.rows).sort(compare);
    var size = parseInt(queueTable.getAttribute("data-size"), 10) || rows.length;
    rows.slice(size).forEach(function (row) { row.remove(); });  // the next page's
    rows = rows.slice(0, size);
    rows.forEach(function (row) { body.appendChild(row); });
    document.getElementById("queue-count").textContent = String(rows.length);
    document.querySelector("[data-empty]").hidden = rows.length > 0;
    tick();
  }
  function onQueue(list) {
    var keep = {};
    list.forEach(function (h) { keep[h.id] = true; upsert(h); });
    Array.prototype.slice.call(queueTable.tBodies[0].rows).forEach(function (row) {
      if (!keep[row.getAttribute("data-id")]) row.remove();
    });
    arrange();
  }
  function onHandoff(frame) {
    if (frame.change === "closed" || frame.change === "erased") remove(frame.handoff.id); else upsert(frame.handoff);
    arrange();
  }

  // --- The inbox: the server sends the page's rows again after each change; redrawn from the row template
  function fillInbox(row, h) {
    row.setAttribute("data-id", String(h.id));
    row.setAttribute("data-status", h.status);
    row.classList.toggle("needs-reply", !!h.needs_reply);
    var name = field(row, "name");
    name.textContent = h.label || "Visitor";
    name.setAttribute("href", "/console/handoffs/" + encodeURIComponent(h.id));
    field(row, "lead_id").textContent = String(h.lead_id);
    field(row, "channel").textContent = h.channel || "-";
    field(row, "last_from").textContent = h.last_from || "";
    field(row, "last_text").textContent = h.last_text || "";
    field(row, "waiting").textContent = h.waiting || "";
    field(row, "holder").textContent = h.claimed_by ? "taken by " + h.claimed_by : "waiting";
    var sla = field(row, "sla");
    if (h.status === "waiting") startTimer(sla, h.sla_seconds_left);
    else { sla.removeAttribute("data-left"); sla.textContent = ""; }
  }
  function onInbox(frame) {
    var body = inboxTable.tBodies[0];
    while (body.firstChild) body.removeChild(body.firstChild);
    frame.rows.forEach(function (h) {
      var row = inboxRow.content.firstElementChild.cloneNode(true);
      fillInbox(row, h);
      body.appendChild(row);
    });
    document.getElementById("inbox-count").textContent = String(frame.total);
    document.querySelector("[data-empty]").hidden = frame.rows.length > 0;
    document.querySelector("[data-page-count]").textContent = String(frame.pages);
    document.querySelector('[data-pages] a[rel="next"]').hidden = frame.page >= frame.pages;
    tick();
  }

  // --- The conversation page: its handoff changing under the operator, and live messages ----------
  function changed(h) {
    if (!status || String(h.id) !== status.getAttribute("data-handoff-id")) return;
    var was = status.getAttribute("data-status"), now = h.status;
    if (now === was) return;
    var note = document.querySelector("[data-changed]");
    if (now === "erased") { note.textContent = "This lead was erased."; note.hidden = false; return; }
    note.textContent = now === "claimed" ? "Taken by " + h.claimed_by + ". " : "Handed back. ";
    var reload = document.createElement("a");
    reload.href = location.pathname;
    reload.textContent = "Reload to see it.";
    note.appendChild(reload);
    note.hidden = false;
  }
  var since = 0;
  if (messages) messages.querySelectorAll("li[data-id]").forEach(function (li) {
    since = Math.max(since, parseInt(li.getAttribute("data-id"), 10) || 0);
  });
  function onMessage(m) {
    if (!messages || messages.querySelector('li[data-id="' + String(m.id) + '"]')) return;
    var li = document.createElement("li"), meta = document.createElement("span"), text = document.createElement("span");
    li.className = "from-" + String(m.from).replace(/[^a-z]/g, "");
    li.setAttribute("data-id", String(m.id));
    meta.className = "meta";
    meta.appendChild(timeElement(m.at));
    meta.appendChild(document.createTextNode(" · " + m.from));
    text.className = "text";
    text.textContent = m.text;
    li.appendChild(meta);
    li.appendChild(text);
    messages.appendChild(li);
    document.querySelector(".transcript [data-empty]").hidden = true;
    since = Math.max(since, m.id);
    li.scrollIntoView({ block: "nearest" });
  }

  // --- New waiting leads: the tab title's count, a browser notification, a short chime -------------
  // Permission is asked only when the operator presses "Turn on notifications" in the header; the chime
  // can be muted there (remembered in localStorage). The first queue snapshot only counts: it is not news.
  var alerts = (function () {
    var box = document.querySelector("[data-alerts]"), title = document.title;
    var waiting = {}, seen = {}, first = true, audio = null, MUTED = "kindling.console.muted";
    var ask = box && box.querySelector("[data-notify-ask]"), state = box && box.querySelector("[data-notify-state]");
    var sound = box && box.querySelector("[data-sound]");
    function muted() { try { return localStorage.getItem(MUTED) === "1"; } catch (e) { return false; } }
    function showPermission() {
      if (!("Notification" in window)) { state.textContent = "No notifications in this browser"; state.hidden = false; return; }
      ask.hidden = Notification.permission !== "default";
      state.hidden = Notification.permission === "default";
      state.textContent = Notification.permission === "granted" ? "Notifications on" : "Notifications blocked in the browser";
    }
    function showSound() {
      sound.textContent = muted() ? "Sound off" : "Sound on";
      sound.setAttribute("aria-pressed", String(!muted()));
    }
    if (box && watchQueue) {
      box.hidden = false;
      showPermission();
      showSound();
      ask.addEventListener("click", function () {
        var asked = Notification.requestPermission(showPermission);  // older browsers take a callback
        if (asked && asked.then) asked.then(showPermission);
      });
      sound.addEventListener("click", function () {
        try { localStorage.setItem(MUTED, muted() ? "0" : "1"); } catch (e) { /* private mode: stays as is */ }
        showSound();
        if (!muted()) chime();  // a press lets the page play sound from now on
      });
    }
    function chime() {  // two short tones, made here: nothing to download
      var Context = window.AudioContext || window.webkitAudioContext;
      if (!Context || muted()) return;
      audio = audio || new Context();
      if (audio.state === "suspended" && audio.resume) audio.resume();
      [880, 1320].forEach(function (hz, i) {
        var tone = audio.createOscillator(), gain = audio.createGain(), at = audio.currentTime + i * 0.15;
        tone.frequency.value = hz;
        gain.gain.setValueAtTime(0.15, at);
        gain.gain.exponentialRampToValueAtTime(0.001, at + 0.14);
        tone.connect(gain);
        gain.connect(audio.destination);
        tone.start(at);
        tone.stop(at + 0.15);
      });
    }
    function notify(h) {
      chime();
      if (!("Notification" in window) || Notification.permission !== "granted") return;
      var note = new Notification("Kindling: " + (h.label || h.name || "a lead") + " is waiting", {
        body: h.reason || "", tag: "kindling-handoff-" + h.id,
      });
      note.onclick = function () { window.focus(); location.href = "/console/handoffs/" + encodeURIComponent(h.id); };
    }
    function count() {
      var n = Object.keys(waiting).length;
      document.title = (n ? "(" + n + ") " : "") + title;
    }
    function see(h, news) {
      if (h.status === "waiting") waiting[h.id] = true; else delete waiting[h.id];
      if (h.status === "waiting" && news && !seen[h.id]) notify(h);
      seen[h.id] = true;
    }
    return {
      snapshot: function (list) {
        waiting = {};
        list.forEach(function (h) { see(h, !first); });
        first = false;
        count();
      },
      change: function (frame) {
        if (frame.change === "closed" || frame.change === "erased") delete waiting[frame.handoff.id];
        else see(frame.handoff, true);
        count();
      },
    };
  })();

  // --- One socket per page, reconnecting with backoff ------------------------------------------
  function address() {
    var params = [];
    if (watchQueue) params.push("queue=1");
    if (watchQueue && queueTable) params.push("page=" + encodeURIComponent(queueTable.getAttribute("data-page") || "1"));
    if (inboxTable) ["show", "channel", "page"].forEach(function (name) {
      params.push(name + "=" + encodeURIComponent(inboxTable.getAttribute("data-" + name) || ""));
    });
    if (inboxTable) params.push("inbox=1");
    if (handoff) params.push("handoff=" + encodeURIComponent(handoff), "since=" + since);
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/console/ws?" + params.join("&");
  }
  function say(text) {
    if (!liveNote) return;
    liveNote.textContent = text;
    liveNote.hidden = !text;
  }
  function onSnapshot(list) {
    if (queueTable) return onQueue(list);
    if (!status) return;
    var own = status.getAttribute("data-handoff-id"), found = null;
    list.forEach(function (h) { if (String(h.id) === own) found = h; });
    changed(found || { id: own, status: "closed" }); // not in the queue: handed back
  }
  function onFrame(frame) {
    if (frame.type === "queue") alerts.snapshot(frame.handoffs);
    else if (frame.type === "handoff") alerts.change(frame);
    if (frame.type === "queue") onSnapshot(frame.handoffs);
    else if (frame.type === "handoff" && queueTable) onHandoff(frame);
    else if (frame.type === "handoff") changed(frame.handoff);
    else if (frame.type === "message") onMessage(frame);
    else if (frame.type === "inbox" && inboxTable) onInbox(frame);
  }
  // The socket itself, for this page's frames or another script's (pipeline.js: window.kindlingLive). `url` is
  // asked again at each connection (a transcript's address says which messages the page has already).
  function live(url, onFrame) {
    var attempt = 0;
    function connect() {
      var ws = new WebSocket(url());
      // A handshake with no answer (a network blip, a server busy at that moment) is given up and tried again
      // (onclose below), rather than leaving the page without live updates for good.
      var stuck = setTimeout(function () { if (ws.readyState === WebSocket.CONNECTING) ws.close(); }, 5000);
      ws.onopen = function () {
        clearTimeout(stuck);
        attempt = 0; say(""); document.body.setAttribute("data-live", "on");
      };
      ws.onmessage = function (event) {
        var frame;
        try { frame = JSON.parse(event.data); } catch (e) { return; }
        onFrame(frame);
      };
      ws.onclose = function (event) {
        clearTimeout(stuck);
        document.body.setAttribute("data-live", "off");
        if (event.code === 4401) return say("You were logged out: reload the page to log in again.");
        if (event.code === 4410) return say("This lead was erased: nothing more of theirs is shown live.");
        var wait = Math.min(30000, 1000 * Math.pow(2, attempt++)) * (0.5 + Math.random() / 2);
        say("Live updates paused; reconnecting…");
        setTimeout(connect, wait);
      };
    }
    connect();
  }
  window.kindlingLive = live;

  // --- Replies without a reload (the form still posts on its own when this script is missing) ----
  var reply = document.querySelector("form[data-reply]");
  if (reply) {
    var box = reply.querySelector("textarea"), error = reply.querySelector("[data-reply-error]");
    var showError = function (text) { error.textContent = text; error.hidden = !text; };
    reply.addEventListener("submit", function (event) {
      event.preventDefault();
      var body = new URLSearchParams(new FormData(reply));
      var button = reply.querySelector("button[type=submit]");
      button.disabled = true;
      fetch(reply.action, {
        method: "POST", body: body, credentials: "same-origin",
        headers: { "Accept": "application/json", "X-CSRF-Token": body.get("csrf_token") },
      }).then(function (answer) {
        return answer.json().then(function (data) {
          if (!answer.ok) throw new Error(data.error || "not sent (" + answer.status + ")");
          box.value = "";
          showError("");
        });
      }).catch(function (e) { showError("Not sent: " + e.message); })
        .then(function () { button.disabled = false; box.focus(); });
    });
    var picker = cannedPicker(reply, box, showError);
    box.addEventListener("keydown", function (event) {
      if (picker.keydown(event)) return;
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) reply.requestSubmit();
    });
  }

  // --- Canned replies: "/" at the start of an empty reply box opens a picker filtered as one types ------
  // The replies come rendered for this lead from the form's data-replies URL (GET /console/leads/ID/replies);
  // Enter (or a click) puts the chosen text in the box to edit before sending. A broken one shows its error
  // and is never inserted.
  function cannedPicker(form, box, showError) {
    var list = form.querySelector("[data-canned]"), url = form.getAttribute("data-replies");
    var loaded = null, shown = [], chosen = 0;
    function load() {
      if (!loaded) loaded = fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (answer) { if (!answer.ok) throw new Error("canned replies: " + answer.status); return answer.json(); })
        .catch(function (e) { loaded = null; showError(e.message); return []; });
      return loaded;
    }
    function query() { var m = /^\/(\S*)$/.exec(box.value); return m ? m[1].toLowerCase() : null; }
    function close() { list.hidden = true; shown = []; }
    function draw(replies) {
      var q = query();
      if (q === null) return close();
      shown = replies.filter(function (r) {
        return r.name.toLowerCase().indexOf(q) === 0 || r.title.toLowerCase().indexOf(q) !== -1;
      });
      chosen = Math.min(chosen, Math.max(shown.length - 1, 0));
      list.textContent = "";
      shown.forEach(function (r, i) {
        var li = document.createElement("li"), title = document.createElement("span"), preview = document.createElement("span");
        li.setAttribute("role", "option");
        li.setAttribute("aria-selected", String(i === chosen));
        li.className = r.text === null || r.text === undefined ? "broken" : "";
        title.className = "title";
        title.textContent = "/" + r.name + " · " + r.title;
        preview.className = "preview";
        preview.textContent = li.className ? "Broken: " + r.error : r.text;
        li.appendChild(title);
        li.appendChild(preview);
        li.addEventListener("mousedown", function (event) { event.preventDefault(); chosen = i; pick(); });
        list.appendChild(li);
      });
      list.hidden = shown.length === 0;
    }
    function pick() {
      var r = shown[chosen];
      if (!r) return;
      if (r.text === null || r.text === undefined) { showError("Not inserted: " + r.error); return; }
      box.value = r.text;
      box.setSelectionRange(r.text.length, r.text.length);
      showError("");
      close();
      box.focus();
    }
    box.addEventListener("input", function () {
      if (query() === null) return close();
      load().then(draw);
    });
    box.addEventListener("blur", close);
    return {
      keydown: function (event) {  // true when the picker used the key
        if (list.hidden || !shown.length) return false;
        if (event.key === "ArrowDown" || event.key === "ArrowUp") {
          chosen = (chosen + (event.key === "ArrowDown" ? 1 : shown.length - 1)) % shown.length;
          load().then(draw);
        } else if (event.key === "Enter" && !event.ctrlKey && !event.metaKey) pick();
        else if (event.key === "Escape") close();
        else return false;
        event.preventDefault();
        return true;
      },
    };
  }

  tick();
  setInterval(tick, 1000);
  if (watchQueue || inboxTable || handoff) live(address, onFrame);
})();
