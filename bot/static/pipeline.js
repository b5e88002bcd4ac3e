/* Kindling pipeline board: drag a card to another column to change the lead's stage, "More" without a reload,
   and cards moving live as any lead's stage changes (over /console/pipeline/ws). Plain JS, no build step.
   Without this script the board still works: each card's form moves it, "More" opens the next page. */
(function () {
  "use strict";
  var board = document.querySelector("[data-board]");
  if (!board) return;
  var csrf = board.getAttribute("data-csrf"), query = board.getAttribute("data-query") || "";
  var liveNote = document.querySelector("[data-live-note]");

  function say(text) {
    if (!liveNote) return;
    liveNote.textContent = text;
    liveNote.hidden = !text;
  }
  function column(stage) { return board.querySelector('[data-column="' + CSS.escape(stage) + '"]'); }
  function cardOf(lead) { return board.querySelector('.card[data-lead="' + CSS.escape(String(lead)) + '"]'); }
  function count(stage, delta) {
    var col = column(stage), el = col && col.querySelector("[data-count]");
    if (!el) return;
    var n = Math.max(0, parseInt(el.getAttribute("data-count"), 10) + delta);
    el.setAttribute("data-count", String(n));
    el.textContent = n.toLocaleString("en");
  }
  var dates = new Intl.DateTimeFormat(navigator.languages, { dateStyle: "medium", timeStyle: "short" });
  function showDates(root) {  // as console.js shows the page's: in the operator's language and time zone
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var at = new Date(el.getAttribute("datetime"));
      el.title = el.getAttribute("datetime");
      if (!isNaN(at.getTime())) el.textContent = dates.format(at);
    });
  }
  function fragment(html) {
    var holder = document.createElement("template");
    holder.innerHTML = html;
    showDates(holder.content);
    return holder.content;
  }

  // --- Placing a card: its own move, or one heard live; once per change whichever comes first -------
  function place(card, stage) {
    var from = card.getAttribute("data-stage"), target = column(stage);
    if (from === stage || !target) return;
    card.setAttribute("data-stage", stage);
    var select = card.querySelector("select[name=stage]");
    if (select) select.value = stage;
    target.querySelector("ol.cards").prepend(card);  // its activity is the newest now
    count(from, -1);
    count(stage, +1);
  }
  // Leads that moved and are not on the page: asked for together, a moment later (a busy funnel moves many).
  var pending = {}, asking = null;
  function moved(frame) {
    var card = cardOf(frame.lead);
    if (card) return place(card, frame.to);
    if (!column(frame.to)) return;
    if (!(frame.lead in pending)) pending[frame.lead] = frame.from;  // where the page counted it
    if (!asking) asking = setTimeout(askForCards, 300);
  }
  function askForCards() {
    var ids = Object.keys(pending).slice(0, 100), counted = {};
    ids.forEach(function (id) { counted[id] = pending[id]; delete pending[id]; });
    asking = Object.keys(pending).length ? setTimeout(askForCards, 300) : null;  // the rest next
    var url = "/console/pipeline/cards?ids=" + ids.join(",") + (query ? "&" + query : "");
    fetch(url, { credentials: "same-origin" }).then(function (answer) {
      if (!answer.ok) throw new Error("cards: " + answer.status);
      return answer.text();
    }).then(function (html) {
      fragment(html).querySelectorAll(".card").forEach(function (got) {  // those the board's filters show
        var lead = got.getAttribute("data-lead"), stage = got.getAttribute("data-stage"), shown = cardOf(lead);
        if (shown) return place(shown, stage);  // it came meanwhile ("More")
        if (!column(stage)) return;
        column(stage).querySelector("ol.cards").prepend(got);
        wire(got);
        if (counted[lead] && column(counted[lead])) count(counted[lead], -1);  // counted there, beyond the first page
        count(stage, +1);
      });
    }).catch(function (e) { say(e.message); });
  }

  // --- Moving: dragging, or the card's own form, both posting the same request ------------------
  function post(card, stage) {
    var lead = card.getAttribute("data-lead"), body = new URLSearchParams({ stage: stage, csrf_token: csrf });
    return fetch("/console/pipeline/leads/" + encodeURIComponent(lead) + "/stage", {
      method: "POST", body: body, credentials: "same-origin",
      headers: { "Accept": "application/json", "X-CSRF-Token": csrf },
    }).then(function (answer) {
      return answer.json().then(function (data) {
        if (!answer.ok) throw new Error(data.error || "not moved (" + answer.status + ")");
        say("");
        place(card, data.to);
      });
    }).catch(function (e) { say("Not moved: " + e.message); });
  }
  var dragged = null;
  function wire(card) {
    if (card.getAttribute("draggable") === "true") {
      card.addEventListener("dragstart", function (event) {
        dragged = card;
        card.classList.add("dragging");
        event.dataTransfer.effectAllowed = "move";
        event.dataTransfer.setData("text/plain", card.getAttribute("data-lead"));
      });
      card.addEventListener("dragend", function () { card.classList.remove("dragging"); dragged = null; });
    }
    var form = card.querySelector("form.move");
    if (form) form.addEventListener("submit", function (event) {
      event.preventDefault();
      post(card, form.querySelector("select[name=stage]").value);
    });
  }
  board.querySelectorAll(".card").forEach(wire);
  board.querySelectorAll("[data-column]").forEach(function (col) {
    col.addEventListener("dragover", function (event) {
      if (!dragged) return;
      event.preventDefault();  // allows the drop
      event.dataTransfer.dropEffect = "move";
      col.classList.add("over");
    });
    col.addEventListener("dragleave", function (event) {
      if (!col.contains(event.relatedTarget)) col.classList.remove("over");
    });
    col.addEventListener("drop", function (event) {
      event.preventDefault();
      col.classList.remove("over");
      var card = dragged;
      if (card && card.getAttribute("data-stage") !== col.getAttribute("data-column")) {
        post(card, col.getAttribute("data-column"));
      }
    });
  });

  // --- "More": the column's next page, added below its cards ------------------------------------
  board.addEventListener("click", function (event) {
    var link = event.target.closest("[data-more]");
    if (!link) return;
    event.preventDefault();
    var col = link.closest("[data-column]");
    fetch(link.getAttribute("href") + "&fragment=1", { credentials: "same-origin" }).then(function (answer) {
      if (!answer.ok) throw new Error("more: " + answer.status);
      return answer.text();
    }).then(function (html) {
      var got = fragment(html), list = col.querySelector("ol.cards");
      link.remove();
      got.querySelectorAll(".card").forEach(function (card) {
        if (cardOf(card.getAttribute("data-lead"))) return;  // moved here live meanwhile: shown already
        list.appendChild(card);
        wire(card);
      });
      var next = got.querySelector("[data-more]");
      if (next) col.appendChild(next);
    }).catch(function (e) { say(e.message); });
  });

  // --- Live: the console's socket (console.js, loaded first), reconnecting with backoff -----------
  var address = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/console/pipeline/ws";
  window.kindlingLive(function () { return address; }, function (frame) { if (frame.type === "stage") moved(frame); });
})();
