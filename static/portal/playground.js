"use strict";
(function () {
  const form = document.getElementById("playground");
  const chat = document.getElementById("chat");
  const rateTemplate = document.getElementById("rate-template");
  if (!form) return;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  let socket = null, n = 0, current = null;

  function line(who, text, parent) {
    const p = document.createElement("p");
    p.className = "line";
    const b = document.createElement("strong");
    b.textContent = who + ": ";
    const span = document.createElement("span");
    span.textContent = text;  // textContent: whatever the model wrote stays text
    p.append(b, span);
    (parent || chat).append(p);
    return span;
  }

  // A reply gets the feed's rating controls (portal.js saves them), pointed at its stored exchange.
  function rateable(span, exchange) {
    const card = span.closest(".reply");
    if (!card || !rateTemplate || !exchange) return;
    card.id = "reply-" + exchange;
    card.dataset.exchange = exchange;
    const controls = rateTemplate.content.cloneNode(true);
    const rating = controls.querySelector("form.rating");
    rating.action = "/replies/" + exchange + "/rate/";
    rating.dataset.unrate = "/replies/" + exchange + "/unrate/";
    rating.querySelector(".undo").setAttribute("formaction", rating.dataset.unrate);
    card.append(controls);
  }

  // Under each reply, a form to write the reply it should have been (a correction the NPC learns from).
  function teach(span, exchange) {
    const template = document.getElementById("teach");
    if (!template) return;
    const teachForm = template.content.firstElementChild.cloneNode(true);
    teachForm.action = "/replies/" + exchange + "/correct/";
    teachForm.addEventListener("submit", function (event) {
      event.preventDefault();
      const body = new FormData(teachForm);
      const said = teachForm.querySelector(".status");
      fetch(teachForm.action, {
        method: "POST", body: body, credentials: "same-origin",
        headers: { "Accept": "application/json", "X-CSRFToken": body.get("csrfmiddlewaretoken") },
      }).then(function (response) {
        // A stale or logged-out tab gets a page, not JSON: say what the server answered.
        if (!(response.headers.get("Content-Type") || "").includes("json")) {
          throw new Error(response.status === 403 ? "log in again" : "the server answered " + response.status);
        }
        return response.json().then(function (data) {
          if (!response.ok) throw new Error(data.error || response.statusText);
          said.textContent = "Saved.";
        });
      }).catch(function (err) { said.textContent = "Not saved: " + err.message; });
    });
    span.parentElement.after(teachForm);
  }

  function open() {
    return new Promise(function (resolve) {
      if (socket && socket.readyState === WebSocket.OPEN) return resolve(socket);
      socket = new WebSocket(scheme + "://" + location.host + "/ws/playground/");
      socket.onopen = function () { resolve(socket); };
      socket.onclose = function (e) { if (e.code >= 4000) line("portal", "connection refused (" + e.code + ")"); };
      socket.onmessage = function (event) {
        const frame = JSON.parse(event.data);
        if (frame.type === "delta" && current) current.textContent += frame.text;
        else if (frame.type === "reply" && current) {
          current.textContent = frame.text;
          rateable(current, frame.exchange);
          teach(current, frame.exchange);
          current = null;
        } else if (frame.type === "error") { line("error", frame.message); current = null; }
      };
    });
  }

  // Offer only the chosen persona's versions (each option names its persona in data-persona).
  function versionsFor() {
    const slug = form.persona.value;
    form.version.querySelectorAll("option[data-persona]").forEach(function (o) {
      o.hidden = o.disabled = o.dataset.persona !== slug;
    });
    if (form.version.selectedOptions[0] && form.version.selectedOptions[0].disabled) form.version.value = "";
  }
  form.persona.addEventListener("change", versionsFor);
  versionsFor();

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    const data = new FormData(form);
    const frame = { type: "ask", id: "p" + (++n), persona: data.get("persona"), text: data.get("text") };
    if (data.get("version")) frame.version = Number(data.get("version"));
    line("you", frame.text);
    const card = document.createElement("article");
    card.className = "reply";
    chat.append(card);
    current = line(form.persona.selectedOptions[0].textContent, "", card);
    open().then(function (s) { s.send(JSON.stringify(frame)); });
    form.text.value = "";
  });
})();
