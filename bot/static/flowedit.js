/* Kindling's flow editor: lint as you type (the server's, the same as `kindling lint`), each problem marked on its
 * line, the preview and the simulated timeline of the text being edited, drafts saved as you type, publishing
 * after a look at the diff. Plain JavaScript, no build step. What comes from the server goes into the page with
 * textContent (the timeline picture is the server's own SVG, its texts escaped there). */
(function () {
  "use strict";
  var root = document.querySelector("[data-flow-editor]");
  if (!root) return;
  var slug = root.getAttribute("data-slug");
  var base = root.getAttribute("data-base") || null;
  var csrf = root.getAttribute("data-csrf");
  var text = root.querySelector("[data-text]");
  var gutter = root.querySelector("[data-gutter]");
  var marks = root.querySelector("[data-marks]");
  var lintStatus = root.querySelector("[data-lint-status]");
  var problemList = root.querySelector("[data-problems]");
  var saved = root.querySelector("[data-saved]");
  var previewBox = root.querySelector("[data-preview]");
  var previewForm = root.querySelector("[data-preview-form]");
  var eventForm = root.querySelector("[data-event-form]");
  var eventList = root.querySelector("[data-events]");
  var timeline = root.querySelector("[data-timeline]");
  var picture = root.querySelector("[data-simulation-svg]");
  var reviewPane = root.querySelector("[data-review-pane]");
  var conflictPane = root.querySelector("[data-conflict]");
  var published = root.querySelector("[data-published]");
  var DEBOUNCE = 300;  // ms after the last keystroke before lint, preview and simulation run
  var events = [];  // what the simulated lead does: {after: "3d", type: "message"}
  var asked = 0;  // the number of the newest check asked for: an older answer arriving late is dropped
  var timer = null, dirty = false, valid = false;

  function post(action, body) {
    return fetch("/console/flows/" + slug + "/" + action, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Accept": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body)
    }).then(function (response) {
      return response.text().then(function (raw) {
        var data = null;
        try { data = JSON.parse(raw); } catch (e) { data = { error: raw || response.statusText }; }
        return { status: response.status, data: data };
      });
    });
  }

  // --- line numbers and marks: one line of each per line of text, the three scrolled as one ------------------
  function layout(problems) {
    var all = text.value.split("\n"), count = all.length;
    text.rows = count + 1;
    text.style.width = Math.max(40, Math.max.apply(null, all.map(function (line) { return line.length; })) + 2) + "ch";
    var numbers = [], byLine = {};
    (problems || []).forEach(function (problem) {
      if (problem.line && !(problem.line in byLine)) byLine[problem.line] = problem.message;
    });
    var notes = [];
    for (var line = 1; line <= count; line++) {
      numbers.push(String(line));
      notes.push(byLine[line] ? "◀ " + byLine[line] : "");
    }
    gutter.textContent = numbers.join("\n");
    if (problems) {
      marks.textContent = notes.join("\n");
      marks.setAttribute("data-lines", Object.keys(byLine).join(" "));
    }
  }

  function showProblems(problems) {
    problemList.textContent = "";
    problems.forEach(function (problem) {
      var item = document.createElement("li");
      item.setAttribute("data-line", String(problem.line));
      var file = problem.file && !/\/flows\/[^/]+\.j2$/.test(problem.file) ? " (in " + problem.file + ")" : "";
      item.textContent = "line " + problem.line + file + ": " + problem.message;
      item.addEventListener("click", function () { goToLine(problem.line); });
      problemList.appendChild(item);
    });
    layout(problems);
    lintStatus.textContent = problems.length ? problems.length + " problem" + (problems.length > 1 ? "s" : "") +
      ": it cannot be published until fixed" : "Lint: no problems";
    lintStatus.className = "lint " + (problems.length ? "bad" : "ok");
  }

  function goToLine(line) {
    var lines = text.value.split("\n"), at = 0;
    for (var i = 0; i < line - 1 && i < lines.length; i++) at += lines[i].length + 1;
    text.focus();
    text.setSelectionRange(at, at + (lines[line - 1] || "").length);
  }

  // --- after each pause in typing: lint, then (when it passes) preview and simulation; and save the draft ------
  function trying() {  // the lead and events the preview and the simulation are for
    var lead = previewForm.elements.lead_id.value.trim();
    return { text: text.value, lead_id: lead || null, sample: previewForm.elements.sample.value, events: events };
  }

  function checkNow() {  // one request: lint, and for a text that passes, its preview and simulation too
    var number = ++asked, body = trying();
    body["try"] = true;
    lintStatus.textContent = "Checking…";
    post("check", body).then(function (answer) {
      if (number !== asked) return;
      if (answer.status !== 200) { lintStatus.textContent = "Could not check: " + (answer.data.error || answer.status); return; }
      valid = answer.data.problems.length === 0;
      showProblems(answer.data.problems);
      if (valid) {
        showPreview(answer.data.preview.error ? 400 : 200, answer.data.preview);
        showSimulation(answer.data.simulation.error ? 400 : 200, answer.data.simulation);
      }
    }).catch(function () { if (number === asked) lintStatus.textContent = "Could not reach the server; will check again."; });
    if (dirty) saveDraft();
  }

  function schedule() {
    dirty = true;
    layout(null);
    clearTimeout(timer);
    timer = setTimeout(checkNow, DEBOUNCE);
  }

  function saveDraft() {
    dirty = false;
    return post("draft", { text: text.value, base: base }).then(function (answer) {
      saved.textContent = answer.status === 200 ? "Draft saved" : "Draft not saved: " + (answer.data.error || answer.status);
    }).catch(function () { dirty = true; saved.textContent = "Draft not saved: the server cannot be reached"; });
  }

  function previewNow() {  // the same text for another lead
    var number = asked;
    post("preview", trying()).then(function (answer) {
      if (number === asked) showPreview(answer.status, answer.data);
    });
  }

  function showPreview(status, data) {
    previewBox.textContent = "";
    if (status !== 200) {
      var error = document.createElement("p");
      error.className = "error";
      error.textContent = data.error || "Fix the problems to see the preview.";
      previewBox.appendChild(error);
      return;
    }
    data.steps.forEach(function (step) {
      var block = document.createElement("article");
      block.className = "step" + (step.skipped ? " skipped" : "");
      block.setAttribute("data-step", step.name);
      var head = document.createElement("h3");
      head.textContent = step.name + (step.variant ? " (" + step.variant + ")" : "") + " · " + step.due +
        (step.skipped ? " · skipped for this lead" : "");
      block.appendChild(head);
      if (step.subject) {
        var subject = document.createElement("p");
        subject.className = "subject";
        subject.textContent = "Subject: " + step.subject;
        block.appendChild(subject);
      }
      var body = document.createElement("p");
      body.className = step.error ? "error" : "text";
      body.textContent = step.error || step.text || "";
      block.appendChild(body);
      if (step.buttons.length) {
        var buttons = document.createElement("p");
        buttons.className = "buttons";
        buttons.textContent = step.buttons.map(function (label) { return "[" + label + "]"; }).join(" ");
        block.appendChild(buttons);
      }
      previewBox.appendChild(block);
    });
  }

  function simulateNow() {  // the same text with other events or for another lead
    var number = asked;
    post("simulate", trying()).then(function (answer) {
      if (number === asked) showSimulation(answer.status, answer.data);
    });
  }

  function showSimulation(status, data) {
    if (status !== 200) { timeline.textContent = data.error || "Fix the problems to simulate."; return; }
    timeline.textContent = data.lines.join("\n");
    picture.innerHTML = data.svg || "";  // the server's SVG: every text in it escaped there
  }

  function showEvents() {
    eventList.textContent = "";
    events.forEach(function (event, index) {
      var item = document.createElement("li");
      item.textContent = "day " + event.after.replace("d", "") + ": " + event.type + " ";
      var remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "remove";
      remove.addEventListener("click", function () { events.splice(index, 1); showEvents(); if (valid) simulateNow(); });
      item.appendChild(remove);
      eventList.appendChild(item);
    });
  }

  // --- publishing: the diff first, then publish; a conflict is shown, never overwritten -------------------
  function review() {
    post("diff", { text: text.value }).then(function (answer) {
      root.querySelector("[data-file-version]").textContent = answer.data.file_version || "none: a new flow";
      root.querySelector("[data-diff]").textContent = answer.data.diff || "(no change)";
      reviewPane.hidden = false;
      conflictPane.hidden = true;
    });
  }

  function publish(over) {
    var body = { text: text.value, base: over === undefined ? base : over };
    post("publish", body).then(function (answer) {
      reviewPane.hidden = true;
      if (answer.status === 200) {
        base = answer.data.version;
        conflictPane.hidden = true;
        published.hidden = false;
        published.textContent = "Published: version " + answer.data.version + " is running.";
        dirty = false;
        saved.textContent = "";
      } else if (answer.status === 409) {
        conflictPane.hidden = false;
        conflictPane.kindlingTheirs = answer.data;
        root.querySelector("[data-conflict-message]").textContent = answer.data.error;
        root.querySelector("[data-conflict-diff]").textContent = answer.data.diff;
      } else if (answer.status === 422) {
        showProblems(answer.data.problems);
      } else {
        published.hidden = false;
        published.textContent = "Not published: " + (answer.data.error || answer.status);
      }
    });
  }

  text.addEventListener("input", schedule);
  text.addEventListener("keydown", function (event) {  // Tab indents instead of leaving the text
    if (event.key !== "Tab" || event.shiftKey) return;
    event.preventDefault();
    text.setRangeText("  ", text.selectionStart, text.selectionEnd, "end");
    schedule();
  });
  root.querySelector("[data-save]").addEventListener("click", saveDraft);
  root.querySelector("[data-review]").addEventListener("click", review);
  root.querySelector("[data-cancel]").addEventListener("click", function () { reviewPane.hidden = true; });
  root.querySelector("[data-publish]").addEventListener("click", function () { publish(); });
  root.querySelector("[data-take-theirs]").addEventListener("click", function () {
    var theirs = conflictPane.kindlingTheirs;
    text.value = theirs.text || "";
    base = theirs.version;
    conflictPane.hidden = true;
    schedule();
  });
  root.querySelector("[data-keep-mine]").addEventListener("click", function () {
    publish(conflictPane.kindlingTheirs.version);  // over the version now there: seen, so not overwritten blind
  });
  previewForm.addEventListener("submit", function (event) { event.preventDefault(); previewNow(); simulateNow(); });
  previewForm.elements.sample.addEventListener("change", function () { if (valid) { previewNow(); simulateNow(); } });
  eventForm.addEventListener("submit", function (event) {
    event.preventDefault();
    events.push({ after: (parseInt(eventForm.elements.day.value, 10) || 0) + "d", type: eventForm.elements.type.value });
    events.sort(function (a, b) { return parseInt(a.after, 10) - parseInt(b.after, 10); });
    showEvents();
    if (valid) simulateNow();
  });
  window.addEventListener("beforeunload", function (event) {
    if (dirty) { saveDraft(); event.preventDefault(); }
  });
  layout(null);
  checkNow();
})();
