/* The demo site's guided tour: a few steps a first visitor follows to see each shipped flow, a scoring rule
 * and a handoff. Plain JavaScript; where the visitor is in the tour is kept in localStorage, so it goes on
 * across the demo's pages. It only uses the widget's public window.Kindling. */
(function () {
  "use strict";
  var KEY = "kindling-demo.tour";
  var STEPS = [
    { title: "Say hi", html: "Open the chat and write <em>Hi</em>. The bot greets you, and you are a lead in the " +
      "console's <a href=\"/console/leads\">lead list</a> (newest first).", button: "Open the chat", run: openChat },
    { title: "Look at pricing", html: "Open the <a href=\"/pricing\">pricing page</a>. The page view earns the " +
      "scoring rule <code>pricing page</code> (+10: your lead's score rises) and starts the flow " +
      "<em>Pricing page, not ready yet</em>, whose first message comes 10 minutes later.",
      button: "Go to pricing", run: function () { location.href = "/pricing"; }, done: "/pricing" },
    { title: "Leave your email", html: "Write <em>My email is you@example.com</em> in the chat. The bot thanks you, " +
      "the contact earns +15, the lead moves to stage <code>lead</code>, and two flows start: " +
      "<em>Speed to lead</em> (its welcome comes 2 minutes later) and <em>New lead: 7 touches in 7 days</em>.",
      button: "Open the chat", run: openChat },
    { title: "Ask for a call", html: "Write <em>Please call me</em>. The bot tells you a person is coming, and " +
      "the lead is on the <a href=\"/console\">console's queue</a> with why it is warm and an SLA timer. " +
      "Take it, reply, and the answer shows here in the chat.", button: "Open the chat", run: openChat }
  ];

  function openChat() { if (window.Kindling) window.Kindling.open(); }

  function state() {
    try { return JSON.parse(localStorage.getItem(KEY)) || { step: 0, closed: false }; } catch (e) { return { step: 0, closed: false }; }
  }
  function remember(value) {
    try { localStorage.setItem(KEY, JSON.stringify(value)); } catch (e) { /* storage disabled: no memory */ }
  }

  var card = null;
  function show(at) {
    var now = { step: Math.max(0, Math.min(at, STEPS.length - 1)), closed: false }, step = STEPS[now.step];
    remember(now);
    if (!card) {
      card = document.createElement("aside");
      card.className = "tour";
      card.setAttribute("aria-label", "Guided tour");
      document.body.appendChild(card);
    }
    card.innerHTML = "<span class=\"count\">" + (now.step + 1) + " of " + STEPS.length + "</span><h2></h2><p></p>" +
      "<div class=\"buttons\"><button type=\"button\" data-do=\"close\">Close</button>" +
      (now.step ? "<button type=\"button\" data-do=\"back\">Back</button>" : "") +
      "<button type=\"button\" data-do=\"run\" class=\"primary\"></button>" +
      (now.step < STEPS.length - 1 ? "<button type=\"button\" data-do=\"next\">Next</button>" : "") + "</div>";
    card.querySelector("h2").textContent = step.title;
    card.querySelector("p").innerHTML = step.html; // our own markup, above: no visitor text goes here
    card.querySelector("[data-do=run]").textContent = step.button;
    card.onclick = function (e) {
      var what = e.target.getAttribute && e.target.getAttribute("data-do");
      if (what === "close") { card.remove(); card = null; remember({ step: now.step, closed: true }); }
      else if (what === "back") show(now.step - 1);
      else if (what === "next") show(now.step + 1);
      else if (what === "run") step.run();
    };
  }

  function start() {
    var saved = state(), step = saved.step;
    // Arriving on the page a step asked for is doing that step: the tour goes on to the next one.
    if (STEPS[step] && STEPS[step].done === location.pathname) step += 1;
    document.getElementById("open-chat").addEventListener("click", openChat);
    document.getElementById("start-tour").addEventListener("click", function () { show(step); });
    if (!saved.closed) show(step);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
