// Arena battles: both replies stream in side by side; the versions are named only in the vote's answer.
"use strict";
(function () {
  const form = document.getElementById("battle");
  if (!form) return;
  const sides = { left: document.getElementById("battle-left"), right: document.getElementById("battle-right") };
  const reveal = { left: document.getElementById("reveal-left"), right: document.getElementById("reveal-right") };
  const vote = document.getElementById("battle-vote");
  const status = document.getElementById("battle-status");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  let socket = null, n = 0, current = null;

  function showVersions() {
    const persona = form.persona.value;
    [form.a, form.b].forEach(function (select) {
      Array.from(select.options).forEach(function (o) {
        o.hidden = Boolean(o.dataset.persona) && o.dataset.persona !== persona;
      });
      if (select.selectedOptions[0] && select.selectedOptions[0].hidden) select.value = "";
    });
  }
  form.persona.addEventListener("change", showVersions);
  showVersions();

  function open() {
    return new Promise(function (resolve) {
      if (socket && socket.readyState === WebSocket.OPEN) return resolve(socket);
      socket = new WebSocket(scheme + "://" + location.host + "/ws/arena/");
      socket.onopen = function () { resolve(socket); };
      socket.onclose = function (e) { if (e.code >= 4000) status.textContent = "Connection refused (" + e.code + ")."; };
      socket.onmessage = function (event) {
        const frame = JSON.parse(event.data);
        if (frame.id !== current) return;
        if (frame.type === "delta") sides[frame.side].textContent += frame.text;  // textContent: stays text
        else if (frame.type === "battle") {
          sides.left.textContent = frame.left.text;
          sides.right.textContent = frame.right.text;
          vote.action = "/compare/battles/" + frame.battle + "/vote/";
          vote.hidden = false;
          status.textContent = "Which reply is better?";
        } else if (frame.type === "error") {
          status.textContent = "No battle: " + frame.message;
          current = null;
        }
      };
    });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    const data = new FormData(form);
    current = "b" + (++n);
    const frame = { type: "battle", id: current, persona: data.get("persona"), text: data.get("text") };
    if (data.get("a")) frame.a = Number(data.get("a"));
    if (data.get("b")) frame.b = Number(data.get("b"));
    ["left", "right"].forEach(function (s) { sides[s].textContent = ""; reveal[s].textContent = ""; });
    vote.hidden = true;
    status.textContent = "Both versions are answering...";
    open().then(function (s) { s.send(JSON.stringify(frame)); });
  });

  vote.addEventListener("click", function (event) {
    const button = event.target.closest("button[name=outcome]");
    if (!button) return;
    event.preventDefault();
    const body = new FormData(vote);
    body.set("outcome", button.value);
    fetch(vote.action, {
      method: "POST",
      body: body,
      credentials: "same-origin",
      headers: { "Accept": "application/json", "X-CSRFToken": body.get("csrfmiddlewaretoken") },
    }).then(function (response) {
      return response.json().then(function (data) {
        if (!response.ok) throw new Error(data.error || response.statusText);
        reveal.left.textContent = "· " + data.left;
        reveal.right.textContent = "· " + data.right;
        vote.hidden = true;
        current = null;
        status.textContent = "Vote saved: left was " + data.left + ", right was " + data.right + ".";
      });
    }).catch(function (err) { status.textContent = "Vote not saved: " + err.message; });
  });
})();
