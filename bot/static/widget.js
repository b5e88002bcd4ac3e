/* Kindling chat widget. Embed with:
 *   <script src="https://kindling.example/widget.js" async></script>
 * and, optionally, data- attributes that override config.toml's [widget] for this page: data-title,
 * data-subtitle, data-color, data-position, data-avatar, data-lang, data-prechat, data-consent-text.
 * Plain JavaScript, no build step, no dependencies. Before it draws anything it reads its settings and texts
 * from GET /widget/config.json (bot/channels/widget_config.py), then talks to the server that served this
 * file over the WebSocket protocol described in bot/channels/webchat.py. Only window.Kindling
 * ({open, close, telegramStart}) is exposed. Every text goes into the page with textContent. */
(function () {
  "use strict";
  if (window.Kindling) return; // included twice: the first copy does the work

  // --- Where the server is: the origin (and path prefix) this script was loaded from ----------
  var SCRIPT_PATH = /\/widget\.js(?:[?#]|$)/;
  var script = document.currentScript;
  if (!script || !SCRIPT_PATH.test(script.src || "")) {
    script = null; // currentScript is null when run from a callback or a module: look for our tag
    var tags = document.getElementsByTagName("script");
    for (var t = 0; t < tags.length && !script; t++) if (SCRIPT_PATH.test(tags[t].src)) script = tags[t];
  }
  if (!script) return;
  var base = new URL(script.src, location.href);
  var SOCKET_URL = (base.protocol === "https:" ? "wss://" : "ws://") + base.host +
    base.pathname.replace(/widget\.js$/, "chat/ws");
  var CONFIG_URL = base.origin + base.pathname.replace(/widget\.js$/, "widget/config.json");
  var MAX_TEXT = 4000, MAX_FRAME_BYTES = 15000; // the server accepts 4000 characters, 16 KiB frames
  var KEEP = 100; // messages kept in localStorage to draw the transcript at once on the next page

  // --- Persistence: localStorage may be disabled or full; the widget then works for this page --
  function load(key, fallback, check) {
    try {
      var value = JSON.parse(localStorage.getItem("kindling." + key));
      return value !== null && check(value) ? value : fallback;
    } catch (e) { return fallback; }
  }
  function save(key, value) {
    try { localStorage.setItem("kindling." + key, JSON.stringify(value)); return true; } catch (e) { return false; }
  }
  function isString(v) { return typeof v === "string"; }
  function isNumber(v) { return typeof v === "number"; }
  var isArray = Array.isArray;

  // --- Settings and texts: config.toml's [widget] from the server, then this page's data- attributes ----
  var HEX_COLOR = /^#(?:[0-9a-f]{3}|[0-9a-f]{6})$/i, LANGUAGE_TAG = /^[a-z]{2,8}(?:[-_][a-z0-9]{1,8}){0,3}$/i;
  var POSITIONS = ["bottom-right", "bottom-left"], PRECHAT_FIELDS = ["name", "email", "consent"];
  var page = script.dataset, config = null, texts = {}, loadingConfig = false;

  function loadConfig() {
    if (loadingConfig) return;
    loadingConfig = true;
    var query = [];
    if (LANGUAGE_TAG.test(page.lang || "")) query.push("lang=" + encodeURIComponent(page.lang));
    if (LANGUAGE_TAG.test(navigator.language || "")) query.push("browser=" + encodeURIComponent(navigator.language));
    fetch(CONFIG_URL + (query.length ? "?" + query.join("&") : ""))
      .then(function (answer) { if (!answer.ok) throw new Error("HTTP " + answer.status); return answer.json(); })
      .then(function (answer) {
        loadingConfig = false;
        useConfig(answer);
        connect();
        if (document.readyState !== "loading") mount();
      }, function () { loadingConfig = false; scheduleReconnect(); }); // tried again with the connection
  }

  function useConfig(answer) {
    texts = answer.texts || {};
    var prechat = page.prechat === undefined ? answer.prechat : page.prechat.split(/[\s,]+/);
    config = {
      title: page.title || answer.title,
      subtitle: page.subtitle || answer.subtitle,
      color: HEX_COLOR.test(page.color || "") ? page.color : answer.color,
      position: POSITIONS.indexOf(page.position) >= 0 ? page.position : answer.position,
      avatar: safeUrl(page.avatar || answer.avatar),
      prechat: PRECHAT_FIELDS.filter(function (f) { return isArray(prechat) && prechat.indexOf(f) >= 0; }),
      consentText: page.consentText || answer.consent_text,
      locale: answer.locale // the language the widget speaks: the bot's messages follow it
    };
    if (config.prechat.indexOf("email") < 0) config.prechat = config.prechat.filter(function (f) { return f !== "consent"; });
  }

  // A text in the widget's language; {name} placeholders filled from `values`.
  function t(key, values) {
    var text = isString(texts[key]) ? texts[key] : key;
    return text.replace(/\{(\w+)\}/g, function (all, name) { return values && name in values ? String(values[name]) : all; });
  }

  function safeUrl(value) {
    try {
      var url = value ? new URL(value, base) : null;
      return url && (url.protocol === "https:" || url.protocol === "http:") ? url.href : null;
    } catch (e) { return null; }
  }

  // Black or white, whichever reads better on the widget's colour.
  function inkOn(hex) {
    var h = hex.length === 4 ? hex.replace(/[0-9a-f]/gi, "$&$&") : hex, rgb = [1, 3, 5].map(function (i) {
      var c = parseInt(h.substr(i, 2), 16) / 255;
      return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2] > 0.179 ? "#111827" : "#fff";
  }

  var visitor = load("visitor", null, isString), token = load("token", null, isString);
  var link = load("link", null, isString); // signed visitor id for Telegram deep links
  var continueLinks = []; // "continue on WhatsApp / Messenger / Telegram": built by the server, sent with the welcome
  var conversation = load("conversation", null, isNumber);
  // The transcript and `since` (the newest message id in it) go together: the server sends only
  // what came after `since`, and what came before is drawn from this copy.
  var transcript = load("transcript", [], isArray).filter(function (m) {
    return m && isNumber(m.id) && isString(m.text) && isArray(m.buttons);
  });
  var since = transcript.length ? load("since", 0, isNumber) : 0;
  var readUpTo = load("read", 0, isNumber); // newest bot/operator message seen with the panel open
  var outbox = load("outbox", [], isArray); // frames sent but not acknowledged yet, resent as they are
  var known = {}, sentIds = {}; // server ids already shown; client ids the server confirmed
  transcript.forEach(function (m) { known[m.id] = true; if (m.client_id) sentIds[m.client_id] = true; });
  outbox = outbox.filter(function (f) { return f && isString(f.id) && !sentIds[f.id]; });

  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID(); // secure contexts only
    var b = new Uint8Array(16), i, hex = "";
    if (window.crypto && crypto.getRandomValues) crypto.getRandomValues(b);
    else for (i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
    b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80; // version 4, RFC 4122 variant
    for (i = 0; i < 16; i++) hex += (i === 4 || i === 6 || i === 8 || i === 10 ? "-" : "") + (b[i] + 256).toString(16).slice(1);
    return hex;
  }
  function timezone() {
    try { return Intl.DateTimeFormat().resolvedOptions().timeZone || null; } catch (e) { return null; }
  }

  // A missed-message email links to the site with ?kindling=<signed visitor link>: the hello asks to continue
  // that visitor's conversation (the server ignores a forged link) and the panel opens on it. The parameter
  // leaves the address bar at once, so it is not reported as part of the page or shared with it.
  var emailLink = takeEmailLink();
  function takeEmailLink() {
    try {
      var url = new URL(location.href), value = url.searchParams.get("kindling");
      if (value === null) return null;
      url.searchParams.delete("kindling");
      history.replaceState(history.state, "", url.href);
      return value;
    } catch (e) { return null; }
  }
  function continuedFromEmail() {
    if (!emailLink) return;
    emailLink = null;
    open();
  }

  // One view per page load; its id lets the server count a resent view only once.
  var view = { id: uuid(), url: location.href, referrer: document.referrer, title: document.title };

  // --- The connection ---------------------------------------------------------------------------
  var socket = null, online = false, everOnline = false, attempt = 0, retryTimer = null, resendTimer = null;
  var erased = false; // the server closed with 4410: this visitor was erased

  function connect() {
    clearTimeout(retryTimer);
    retryTimer = null;
    if (socket || erased) return;
    if (!config) return loadConfig(); // which connects once it has it
    var ws;
    try { ws = new WebSocket(SOCKET_URL); } catch (e) { return scheduleReconnect(); }
    socket = ws;
    ws.onopen = function () {
      ws.send(JSON.stringify({
        type: "hello", visitor: visitor, token: token, link: emailLink, since: since, view: view,
        locale: config.locale || navigator.language || null, timezone: timezone()
      }));
    };
    ws.onmessage = function (event) {
      var frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      if (frame && socket === ws) handle(frame);
    };
    ws.onclose = function (event) {
      if (socket !== ws) return;
      socket = null;
      setOnline(false);
      if (event.code === 4410) return forgetVisitor(); // erased on request: keep nothing, do not come back
      scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    // 1 s, 2 s, 4 s ... 30 s, so a server restart is not met by every visitor at once.
    var delay = Math.min(30000, 1000 * Math.pow(2, Math.min(attempt++, 5)));
    clearTimeout(retryTimer);
    retryTimer = setTimeout(connect, delay);
  }

  function reconnectNow() {
    if (socket) { var old = socket; socket = null; old.onclose = null; old.close(); }
    setOnline(false);
    attempt = 0;
    connect();
  }

  function transmit(frame) {
    if (online && socket) socket.send(JSON.stringify(frame));
  }

  function handle(frame) {
    if (frame.type === "welcome") {
      // A different conversation (a new visitor, or the server started over): drop the old transcript.
      var changed = isNumber(frame.conversation) && conversation !== frame.conversation;
      var resync = changed && since > 0;
      if (changed) { forgetTranscript(); conversation = frame.conversation; save("conversation", conversation); }
      visitor = frame.visitor; token = frame.token; link = frame.link;
      save("visitor", visitor); save("token", token); save("link", link);
      showContinue(frame["continue"]);
      // The hello asked for messages after an id of the old conversation: ask again from the start.
      if (resync) return reconnectNow();
      attempt = 0;
      setOnline(true);
      continuedFromEmail();
      outbox.forEach(transmit); // same ids: the server stores each message once
      sendReceipts(); // what arrived or was shown while the socket was down
    } else if (frame.type === "message") {
      receive(frame);
    } else if (frame.type === "continue") {
      showContinue(frame.links); // a page view brought a new source: the links carry it
    } else if (prechatAnswered(frame)) {
      return;
    } else if (frame.type === "ack") {
      settle(frame.id, null);
    } else if (frame.type === "error") {
      if (frame.retry) {
        // The server could not store it (its database is down): the outbox keeps it and sends it again.
        // (or the visitor is over their messages per minute: `retry_after` says for how long).
        var wait = 1000 * Math.min(60, Math.max(1, isNumber(frame.retry_after) ? frame.retry_after : 5));
        if (!resendTimer) resendTimer = setTimeout(function () { resendTimer = null; outbox.forEach(transmit); }, wait);
      } else if (frame.id) {
        settle(frame.id, frame.error || "not sent"); // refused for what it holds: resending would not help
      }
    }
  }

  // --- Conversation state -----------------------------------------------------------------------
  function receive(m) {
    if (!isNumber(m.id) || known[m.id]) return; // a replay can overlap what was pushed live
    known[m.id] = true;
    var mine = m.client_id && byClient[m.client_id];
    if (m.client_id) settle(m.client_id, null); // our own message coming back: it is stored
    var entry = { id: m.id, from: m.from, text: String(m.text || ""), buttons: isArray(m.buttons) ? m.buttons : [],
      client_id: m.client_id || null, at: m.at || null };
    transcript.push(entry);
    if (transcript.length > 1 && transcript[transcript.length - 2].id > m.id) {
      transcript.sort(function (a, b) { return a.id - b.id; });
    }
    if (transcript.length > KEEP) transcript = transcript.slice(-KEEP);
    since = Math.max(since, m.id);
    if (save("transcript", transcript)) save("since", since); // never a `since` ahead of the copy
    if (mine) mine.setAttribute("data-id", m.id);
    else draw(entry);
    if (isOpen()) markRead();
    updateBadge();
    arrived();
  }

  function send(frame, text) {
    var json = JSON.stringify(frame);
    var bytes = window.TextEncoder ? new TextEncoder().encode(json).length : json.length * 3;
    drawPending(frame.id, text);
    if (bytes > MAX_FRAME_BYTES) return settle(frame.id, t("too_long")); // never resend what will not fit
    outbox.push(frame);
    save("outbox", outbox);
    transmit(frame);
  }

  // Email consent: an address and an unticked "Email me" box; ticking or unticking it sends a consent frame.
  function consentForm() {
    var row = el("label", "kindling-consent");
    var box = el("input", "", { type: "checkbox" });
    var address = el("input", "", { type: "email", placeholder: t("email_placeholder"), "aria-label": t("your_email") });
    row.appendChild(box); row.appendChild(document.createTextNode(" " + t("email_me") + " ")); row.appendChild(address);
    box.addEventListener("change", function () {
      var email = address.value.trim() || null;
      if (box.checked && !email) { box.checked = false; address.focus(); return; }
      transmit({ type: "consent", id: uuid(), email: email, consent: box.checked });
    });
    return row;
  }

  // "Continue on WhatsApp · Messenger · Telegram": the server's links (a relative one is on the server itself).
  function showContinue(links) {
    continueLinks = isArray(links) ? links.filter(function (l) { return l && isString(l.url) && isString(l.label); }) : [];
    if (!ui) return;
    var row = ui.continueRow;
    while (row.firstChild) row.removeChild(row.firstChild);
    var shown = 0;
    continueLinks.forEach(function (l) {
      var url;
      try { url = new URL(l.url, base); } catch (e) { return; }
      if (url.protocol !== "https:" && url.protocol !== "http:") return;
      row.appendChild(document.createTextNode(shown++ ? " \u00b7 " : t("continue_on") + " "));
      var a = el("a", "kindling-continue-" + String(l.channel || "link"), { href: url.href, target: "_blank", rel: "noopener" });
      a.textContent = l.label;
      row.appendChild(a);
    });
    row.hidden = shown === 0;
  }

  // An ack, the stored message coming back, or an error ends a message's time in the outbox.
  function settle(clientId, error) {
    var before = outbox.length;
    outbox = outbox.filter(function (f) { return f.id !== clientId; });
    if (outbox.length !== before) save("outbox", outbox);
    var el = byClient[clientId];
    if (!el) return;
    el.classList.remove("kindling-pending");
    if (error) el.classList.add("kindling-failed");
    setStatus(el, error ? t("not_sent", { error: error }) : "");
  }

  // The visitor's lead was erased (they asked to be forgotten): nothing of theirs stays in this browser,
  // and the widget stays offline until the next page load, which starts as a new visitor.
  function forgetVisitor() {
    erased = true;
    forgetTranscript();
    visitor = token = link = conversation = null; outbox = [];
    showContinue([]);
    ["visitor", "token", "link", "conversation", "outbox", "prechat"].forEach(function (key) {
      try { localStorage.removeItem("kindling." + key); } catch (e) { /* storage disabled */ }
    });
    if (ui) { ui.state.textContent = t("ended"); ui.input.disabled = true; }
  }

  function forgetTranscript() {
    transcript = []; since = 0; readUpTo = 0; known = {};
    save("transcript", transcript); save("since", 0); save("read", 0);
    if (ui) Array.prototype.slice.call(ui.list.querySelectorAll("[data-id]")).forEach(function (el) { el.remove(); });
  }

  function unread() {
    return transcript.filter(function (m) { return m.from !== "visitor" && m.id > readUpTo; }).length;
  }
  function markRead() {
    if (since > readUpTo) { readUpTo = since; save("read", readUpTo); }
  }

  // --- Receipts: tell the server which bot/operator messages reached this widget, and which were on screen.
  // Each transcript entry remembers (in localStorage) whether it was acknowledged (`acked`), shown in the open
  // panel of a visible page (`shown`) and reported shown (`told`), so a report missed while offline goes later.
  var receiptTimer = null;
  function arrived() {
    // A history replay brings many messages at once: one receipt for them all, just after.
    if (!receiptTimer) receiptTimer = setTimeout(function () { receiptTimer = null; sendReceipts(); lookForSeen(); }, 100);
  }

  function lookForSeen() {
    if (!isOpen() || document.visibilityState !== "visible") return;
    var box = ui.list.getBoundingClientRect(), changed = false;
    transcript.forEach(function (m) {
      if (m.from === "visitor" || m.shown) return;
      var row = ui.list.querySelector('[data-id="' + m.id + '"]');
      var r = row && row.getBoundingClientRect();
      if (r && r.height && r.bottom > box.top && r.top < box.bottom) { m.shown = true; changed = true; }
    });
    if (changed) { save("transcript", transcript); sendReceipts(); }
  }

  function sendReceipts() {
    if (!online || !socket) return;
    var received = [], seen = [];
    transcript.forEach(function (m) {
      if (m.from === "visitor") return;
      if (!m.acked) { received.push(m.id); m.acked = true; }
      if (m.shown && !m.told) { seen.push(m.id); m.told = true; }
    });
    if (received.length) transmit({ type: "received", ids: received });
    if (seen.length) transmit({ type: "seen", ids: seen });
    if (received.length || seen.length) save("transcript", transcript);
  }

  // --- The interface ----------------------------------------------------------------------------
  var ui = null, byClient = {}, wantOpen = false;
  var STYLE = [
    "#kindling-root{position:fixed;right:20px;bottom:20px;z-index:2147483000;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1f2937;text-align:left}",
    // Reset what a host page's element rules (button{}, textarea{}, *{}) could change in here.
    "#kindling-root *{box-sizing:border-box;margin:0;padding:0;border:0;font:inherit;color:inherit;letter-spacing:normal;text-transform:none;text-shadow:none;background:none;box-shadow:none;float:none;width:auto;height:auto;min-width:0;max-width:none;min-height:0}",
    "#kindling-root .kindling-launcher{position:relative;display:flex;align-items:center;justify-content:center;width:58px;height:58px;border-radius:50%;background:var(--kindling-color);color:var(--kindling-ink);cursor:pointer;box-shadow:0 8px 24px color-mix(in srgb,var(--kindling-color) 35%,transparent);transition:transform .15s}",
    "#kindling-root .kindling-launcher:hover{transform:scale(1.06)}",
    "#kindling-root .kindling-badge{position:absolute;top:-4px;right:-4px;min-width:20px;height:20px;padding:0 6px;border-radius:10px;background:#ef4444;color:#fff;font-size:12px;font-weight:700;line-height:20px;text-align:center;border:2px solid #fff}",
    "#kindling-root .kindling-panel{position:absolute;right:0;bottom:74px;width:370px;height:540px;max-height:calc(100vh - 110px);display:flex;flex-direction:column;background:#fff;border-radius:16px;overflow:hidden;box-shadow:0 16px 48px rgba(15,23,42,.22);animation:kindling-in .18s ease-out}",
    "#kindling-root.kindling-left{right:auto;left:20px}",
    "#kindling-root.kindling-left .kindling-panel{right:auto;left:0}",
    "#kindling-root [hidden]{display:none!important}",
    "#kindling-root svg{display:block;width:24px;height:24px;flex:none}",
    "@keyframes kindling-in{from{opacity:0;transform:translateY(10px)}}",
    "#kindling-root .kindling-header{display:flex;align-items:center;gap:10px;padding:16px 14px 16px 18px;background:var(--kindling-color);color:var(--kindling-ink)}",
    "#kindling-root .kindling-title{flex:1;font-size:16px;font-weight:600}",
    "#kindling-root .kindling-avatar{width:36px;height:36px;border-radius:50%;object-fit:cover;background:#fff;flex:none}",
    "#kindling-root .kindling-state{display:block;font-size:12px;font-weight:400;opacity:.85}",
    "#kindling-root .kindling-close{width:32px;height:32px;border-radius:8px;color:inherit;font-size:22px;line-height:32px;text-align:center;cursor:pointer}",
    "#kindling-root .kindling-close:hover{background:color-mix(in srgb,currentColor 15%,transparent)}",
    "#kindling-root .kindling-list{flex:1;overflow-y:auto;padding:16px;display:flex;flex-direction:column;gap:10px;background:#f8fafc}",
    "#kindling-root .kindling-intro{color:#64748b;font-size:13px;text-align:center;padding:4px 12px 8px}",
    // flex:none: in a scrolling flex column, items would otherwise shrink and clip their text.
    "#kindling-root .kindling-msg{flex:none;display:flex;flex-direction:column;align-items:flex-start;max-width:82%;align-self:flex-start}",
    "#kindling-root .kindling-msg>*{flex:none}",
    "#kindling-root .kindling-from-visitor{align-self:flex-end;align-items:flex-end}",
    "#kindling-root .kindling-bubble{padding:9px 13px;border-radius:16px 16px 16px 4px;background:#fff;border:1px solid #e2e8f0;white-space:pre-wrap;overflow-wrap:anywhere}",
    "#kindling-root .kindling-from-visitor .kindling-bubble{border-radius:16px 16px 4px 16px;background:var(--kindling-color);border-color:var(--kindling-color);color:var(--kindling-ink)}",
    "#kindling-root .kindling-pending .kindling-bubble{opacity:.65}",
    "#kindling-root .kindling-failed .kindling-bubble{background:#fee2e2;border-color:#fca5a5;color:#7f1d1d}",
    "#kindling-root .kindling-author,#kindling-root .kindling-status{font-size:11px;color:#64748b;margin:2px 4px}",
    "#kindling-root .kindling-choices{display:flex;flex-wrap:wrap;gap:6px;margin-top:6px}",
    "#kindling-root .kindling-choice{padding:6px 12px;border:1px solid var(--kindling-color);border-radius:999px;background:#fff;color:var(--kindling-color);cursor:pointer}",
    "#kindling-root .kindling-choice:hover{background:color-mix(in srgb,var(--kindling-color) 8%,#fff)}",
    "#kindling-root .kindling-form{display:flex;align-items:flex-end;gap:8px;padding:10px 12px;border-top:1px solid #e2e8f0;background:#fff}",
    "#kindling-root .kindling-input{flex:1;display:block;resize:none;max-height:120px;padding:9px 12px;border:1px solid #cbd5e1;border-radius:12px;background:#fff;color:#1f2937;line-height:20px}",
    "#kindling-root .kindling-input:focus{outline:none;border-color:var(--kindling-color);box-shadow:0 0 0 3px color-mix(in srgb,var(--kindling-color) 15%,transparent)}",
    "#kindling-root .kindling-send{display:flex;align-items:center;justify-content:center;width:40px;height:40px;border-radius:50%;background:var(--kindling-color);color:var(--kindling-ink);cursor:pointer}",
    "#kindling-root button:focus-visible{outline:2px solid color-mix(in srgb,var(--kindling-color) 50%,#fff);outline-offset:2px}",
    "#kindling-root .kindling-prechat{flex:1;overflow-y:auto;display:flex;flex-direction:column;gap:12px;padding:18px;background:#f8fafc}",
    "#kindling-root .kindling-prechat label{display:flex;flex-direction:column;gap:4px;font-size:13px;color:#334155}",
    "#kindling-root .kindling-prechat label.kindling-check{flex-direction:row;align-items:flex-start;gap:8px}",
    "#kindling-root .kindling-prechat input[type=text],#kindling-root .kindling-prechat input[type=email]{padding:9px 12px;border:1px solid #cbd5e1;border-radius:10px;background:#fff}",
    "#kindling-root .kindling-prechat input[type=checkbox]{appearance:auto;width:16px;height:16px;margin-top:2px;flex:none}",
    "#kindling-root .kindling-prechat .kindling-start{padding:10px 14px;border-radius:10px;background:var(--kindling-color);color:var(--kindling-ink);font-weight:600;cursor:pointer}",
    "#kindling-root .kindling-error{color:#b91c1c;font-size:13px}",
    "#kindling-root .kindling-continue{padding:0 12px 10px;background:#fff;color:#64748b;font-size:12px;text-align:center}",
    "#kindling-root .kindling-continue a{color:var(--kindling-color);text-decoration:underline;cursor:pointer}",
    "@media (max-width:480px){#kindling-root .kindling-panel{position:fixed;inset:0;width:100%;height:100%;max-height:none;border-radius:0}#kindling-root.kindling-open .kindling-launcher{display:none}}",
    "@media (prefers-reduced-motion:reduce){#kindling-root *{animation:none;transition:none}}"
  ].join("\n");

  function el(tag, className, attrs) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    for (var name in attrs || {}) node.setAttribute(name, attrs[name]);
    return node;
  }
  function icon(path) {
    var ns = "http://www.w3.org/2000/svg", svg = document.createElementNS(ns, "svg"), p = document.createElementNS(ns, "path");
    svg.setAttribute("viewBox", "0 0 24 24"); svg.setAttribute("width", "24"); svg.setAttribute("height", "24");
    svg.setAttribute("aria-hidden", "true"); svg.setAttribute("fill", "currentColor");
    p.setAttribute("d", path);
    svg.appendChild(p);
    return svg;
  }

  function mount() {
    if (ui || !document.body || !config) return;
    var style = el("style", "", { id: "kindling-style" });
    style.textContent = STYLE;
    document.head.appendChild(style);
    var root = el("div", config.position === "bottom-left" ? "kindling-left" : "", { id: "kindling-root" });
    root.style.setProperty("--kindling-color", config.color);
    root.style.setProperty("--kindling-ink", inkOn(config.color));
    var panel = el("div", "kindling-panel", { id: "kindling-panel", role: "dialog", "aria-label": config.title, hidden: "" });
    var top = header();
    var list = el("div", "kindling-list", { role: "log", "aria-live": "polite", "aria-label": t("messages") });
    var intro = el("p", "kindling-intro");
    intro.textContent = config.subtitle;
    list.appendChild(intro);
    var form = el("form", "kindling-form");
    var input = el("textarea", "kindling-input", { rows: "1", maxlength: String(MAX_TEXT), placeholder: t("placeholder"), "aria-label": t("message") });
    var sendButton = el("button", "kindling-send", { type: "submit", "aria-label": t("send") });
    sendButton.appendChild(icon("M3.4 20.4 21 12 3.4 3.6 3.4 10.2 15 12 3.4 13.8z"));
    form.appendChild(input); form.appendChild(sendButton);
    var continueRow = el("p", "kindling-continue", { hidden: "" });
    var consentRow = consentForm();
    panel.appendChild(top.header); panel.appendChild(list); panel.appendChild(form); panel.appendChild(consentRow);
    panel.appendChild(continueRow);
    var launcher = el("button", "kindling-launcher", { type: "button", "aria-label": t("open"), "aria-expanded": "false", "aria-controls": "kindling-panel" });
    launcher.appendChild(icon("M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4H4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z"));
    var badge = el("span", "kindling-badge", { "aria-hidden": "true", hidden: "" });
    launcher.appendChild(badge);
    root.appendChild(panel); root.appendChild(launcher);
    document.body.appendChild(root);
    ui = { root: root, panel: panel, list: list, form: form, input: input, launcher: launcher, badge: badge,
      state: top.state, consentRow: consentRow, continueRow: continueRow, prechat: null };

    launcher.addEventListener("click", function () { isOpen() ? close() : open(); });
    top.closer.addEventListener("click", function () { close(); launcher.focus(); });
    panel.addEventListener("keydown", function (e) { if (e.key === "Escape") { close(); launcher.focus(); } });
    form.addEventListener("submit", function (e) { e.preventDefault(); submit(); });
    input.addEventListener("keydown", function (e) {
      // Enter sends, Shift+Enter is a new line; not while an input method is composing (CJK).
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); submit(); }
    });
    input.addEventListener("input", grow);
    list.addEventListener("scroll", lookForSeen, { passive: true });
    document.addEventListener("visibilitychange", lookForSeen);

    transcript.forEach(draw);
    showContinue(continueLinks);
    outbox.forEach(function (f) { drawPending(f.id, f.type === "button" ? f.value : f.text); });
    if (config.prechat.length && !load("prechat", false, isString) && !transcript.length) showPrechat();
    setOnline(online);
    updateBadge();
    if (wantOpen) open();
  }

  // The panel's top: the avatar (if any), the title with the connection state under it, and the close button.
  function header() {
    var bar = el("div", "kindling-header");
    if (config.avatar) bar.appendChild(el("img", "kindling-avatar", { src: config.avatar, alt: "" }));
    var title = el("div", "kindling-title");
    title.textContent = config.title;
    var state = el("span", "kindling-state", { "aria-live": "polite" });
    title.appendChild(state);
    var closer = el("button", "kindling-close", { type: "button", "aria-label": t("close") });
    closer.textContent = "\u00d7";
    bar.appendChild(title); bar.appendChild(closer);
    return { header: bar, state: state, closer: closer };
  }

  // --- The pre-chat form: name, email and consent before the chat, once per visitor --------------
  var prechatId = null;
  var EMAIL = /^[^\s@]+@[^\s@]+\.[^\s@]+$/; // a first check; the server checks the address properly

  function showPrechat() {
    var form = el("form", "kindling-prechat", { novalidate: "" });
    var intro = el("p", "kindling-intro");
    intro.textContent = t("prechat_intro");
    form.appendChild(intro);
    var fields = {};
    config.prechat.forEach(function (name) {
      var label = el("label", name === "consent" ? "kindling-check" : "");
      var input = name === "consent" ? el("input", "", { type: "checkbox", name: "consent" })
        : el("input", "", { type: name === "email" ? "email" : "text", name: name, autocomplete: name, maxlength: "100" });
      var caption = document.createTextNode(name === "consent" ? config.consentText : t("prechat_" + name));
      if (name === "consent") { label.appendChild(input); label.appendChild(caption); }
      else { label.appendChild(caption); label.appendChild(input); }
      form.appendChild(label);
      fields[name] = input;
    });
    var error = el("p", "kindling-error", { role: "alert" });
    var start = el("button", "kindling-start", { type: "submit" });
    start.textContent = t("prechat_start");
    form.appendChild(error); form.appendChild(start);
    form.addEventListener("submit", function (e) { e.preventDefault(); sendPrechat(); });
    ui.prechat = { form: form, fields: fields, error: error, start: start };
    ui.list.hidden = ui.form.hidden = ui.consentRow.hidden = true;
    ui.panel.insertBefore(form, ui.list);
  }

  function sendPrechat() {
    var f = ui.prechat.fields, name = f.name ? f.name.value.trim() : null, email = f.email ? f.email.value.trim() : null;
    if (f.name && !name) return prechatError("name");
    if (f.email && !EMAIL.test(email)) return prechatError("email");
    if (!online) return prechatError("offline");
    prechatId = uuid();
    ui.prechat.start.disabled = true;
    ui.prechat.error.textContent = "";
    transmit({ type: "prechat", id: prechatId, name: name, email: email, consent: f.consent ? f.consent.checked : null });
  }

  // The server's answer to the form: ack (the chat opens) or an error about one of its fields.
  function prechatAnswered(frame) {
    if (!ui || !ui.prechat || frame.id !== prechatId) return false;
    prechatId = null;
    ui.prechat.start.disabled = false;
    if (frame.type === "error") {
      prechatError(frame.retry ? "offline" : frame.field === "name" || frame.field === "email" ? frame.field : null, frame.error);
      return true;
    }
    save("prechat", "sent");
    ui.prechat.form.remove();
    ui.prechat = null;
    ui.list.hidden = ui.form.hidden = ui.consentRow.hidden = false;
    ui.input.focus();
    return true;
  }

  function prechatError(field, fallback) {
    ui.prechat.error.textContent = field ? t("error_" + field) : String(fallback || "");
    var input = ui.prechat.fields[field];
    if (input) input.focus();
  }

  function grow() {
    ui.input.style.height = "auto";
    ui.input.style.height = Math.min(ui.input.scrollHeight + 2, 120) + "px";
  }

  function submit() {
    var text = ui.input.value.trim();
    if (!text) return;
    ui.input.value = "";
    grow();
    send({ type: "message", id: uuid(), text: text }, text);
  }

  function choose(label) {
    send({ type: "button", id: uuid(), value: label }, label);
  }

  function message(from, text, at) {
    var box = el("div", "kindling-msg kindling-from-" + (from === "visitor" || from === "operator" ? from : "bot"));
    if (from === "operator") {
      var author = el("span", "kindling-author");
      author.textContent = t("team");
      box.appendChild(author);
    }
    var bubble = el("div", "kindling-bubble");
    bubble.textContent = text; // never innerHTML: chat text is data, not markup
    if (at) bubble.title = new Date(at).toLocaleString();
    box.appendChild(bubble);
    return box;
  }

  function draw(m) {
    if (!ui) return;
    var box = message(m.from, m.text, m.at);
    box.setAttribute("data-id", m.id);
    if (m.from !== "visitor" && m.buttons.length) {
      var choices = el("div", "kindling-choices");
      m.buttons.forEach(function (label) {
        var b = el("button", "kindling-choice", { type: "button" });
        b.textContent = String(label);
        b.addEventListener("click", function () { choose(String(label)); });
        choices.appendChild(b);
      });
      box.appendChild(choices);
    }
    // Keep server order: a replay and a live push may arrive out of order.
    var later = null, rows = ui.list.querySelectorAll("[data-id]");
    for (var i = 0; i < rows.length && !later; i++) if (Number(rows[i].getAttribute("data-id")) > m.id) later = rows[i];
    place(box, later);
  }

  function drawPending(clientId, text) {
    if (!ui || byClient[clientId]) return;
    var box = message("visitor", text, null);
    box.classList.add("kindling-pending");
    box.appendChild(el("span", "kindling-status"));
    setStatus(box, t("sending"));
    byClient[clientId] = box;
    place(box, null);
  }

  function place(box, before) {
    var stuck = nearBottom();
    ui.list.insertBefore(box, before);
    // Reply buttons belong to the newest message only: once anything follows, they are moot.
    var groups = ui.list.querySelectorAll(".kindling-choices");
    for (var i = 0; i < groups.length; i++) if (groups[i].parentNode !== ui.list.lastChild) groups[i].remove();
    if (stuck || box.classList.contains("kindling-from-visitor")) ui.list.scrollTop = ui.list.scrollHeight;
  }

  function nearBottom() {
    return ui.list.scrollHeight - ui.list.scrollTop - ui.list.clientHeight < 60;
  }

  function setStatus(box, text) {
    var status = box.querySelector(".kindling-status");
    if (status) status.textContent = text;
  }

  function setOnline(value) {
    online = value;
    everOnline = everOnline || value;
    if (!online && prechatId && ui.prechat) { prechatId = null; ui.prechat.start.disabled = false; } // unanswered: send again
    if (ui) ui.state.textContent = t(online ? "online" : everOnline || attempt ? "reconnecting" : "connecting");
  }

  function updateBadge() {
    if (!ui) return;
    var count = isOpen() ? 0 : unread();
    ui.badge.textContent = count > 9 ? "9+" : String(count);
    ui.badge.hidden = count === 0;
    ui.launcher.setAttribute("aria-label", count ? t("open_unread", { count: count }) : t("open"));
  }

  function isOpen() { return !!ui && !ui.panel.hidden; }

  function open() {
    if (!ui) { wantOpen = true; return; }
    ui.panel.hidden = false;
    ui.root.classList.add("kindling-open");
    ui.launcher.setAttribute("aria-expanded", "true");
    markRead();
    updateBadge();
    ui.list.scrollTop = ui.list.scrollHeight;
    (ui.prechat ? ui.prechat.form.querySelector("input") : ui.input).focus();
    lookForSeen();
  }

  function close() {
    wantOpen = false;
    if (!ui) return;
    ui.panel.hidden = true;
    ui.root.classList.remove("kindling-open");
    ui.launcher.setAttribute("aria-expanded", "false");
    updateBadge();
  }

  // --- Page views in single-page apps: report a new view when the URL changes ------------------
  function checkNavigation() {
    if (location.href.split("#")[0] === view.url.split("#")[0]) return;
    view = { id: uuid(), url: location.href, referrer: view.url, title: document.title };
    transmit({ type: "page_view", view: view }); // offline: the next hello reports it
  }
  var pushState = history.pushState;
  history.pushState = function () {
    var result = pushState.apply(this, arguments);
    setTimeout(checkNavigation, 300); // apps set the new title just after navigating
    return result;
  };
  window.addEventListener("popstate", function () { setTimeout(checkNavigation, 300); });

  // Back online, or back from the back/forward cache: try now rather than at the next backoff.
  window.addEventListener("online", function () { if (!socket) { attempt = 0; connect(); } });
  window.addEventListener("pageshow", function (e) { if (e.persisted && !socket) { attempt = 0; connect(); } });

  // The `start` value of a Telegram deep link (https://t.me/<bot>?start=...) that keeps this
  // visitor one lead when they continue in Telegram; null until the server has welcomed us.
  function telegramStart() {
    return link ? "v-" + link : null;
  }

  window.Kindling = { open: open, close: close, telegramStart: telegramStart };
  connect(); // at once, so the page view is reported and waiting messages arrive before any click
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", mount);
  else mount();
})();
