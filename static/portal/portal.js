// Rating in place, copy buttons. The rating forms work without JS too (they post and redirect back);
// with it, a vote, its tags and reason, and its undo are saved without a reload. A vote from a tab whose
// session has ended is kept in localStorage and saved once its rater has logged in again.
"use strict";
(function () {
  const PENDING = "voyager.pendingVote";

  function status(form, text, link) {
    const el = form.querySelector(".status");
    if (!el) return;
    el.textContent = text;
    el.classList.toggle("bad", /^Not saved|session|older/i.test(text));
    if (link) {
      const a = document.createElement("a");
      a.href = link;
      a.className = "login-again";
      a.textContent = "Log in again";
      el.append(" ", a);
    }
  }

  function show(form, data) {
    form.querySelector(".up").textContent = data.up;
    form.querySelector(".down").textContent = data.down;
    form.querySelectorAll("button[data-score]").forEach(function (b) {
      const on = Number(b.dataset.score) === data.score;
      b.classList.toggle("chosen", on);
      b.setAttribute("aria-pressed", on ? "true" : "false");
    });
    const undo = form.querySelector(".undo");
    if (undo) undo.hidden = data.score === null;
    form.dataset.score = data.score === null ? "" : String(data.score);
  }

  function chosenScore(form) {
    const chosen = form.querySelector("button[data-score].chosen");
    return chosen ? chosen.dataset.score : "";
  }

  function describe(data) {
    if (data.score === null) return "Rating taken back.";
    const parts = [data.score === 1 ? "thumbs up" : "thumbs down"];
    if (data.tags && data.tags.length) parts.push(data.tags.length + (data.tags.length === 1 ? " tag" : " tags"));
    if (data.reason) parts.push("your reason");
    return "Saved: " + parts.join(", ") + ".";
  }

  // One POST; the answer is JSON whatever went wrong, but a proxy's HTML page must not become a parse error.
  function post(url, body, token) {
    return fetch(url, {
      method: "POST",
      body: body,
      credentials: "same-origin",
      headers: { "Accept": "application/json", "X-CSRFToken": token },
    }).then(function (response) {
      const type = response.headers.get("Content-Type") || "";
      if (!type.includes("application/json")) {
        return { ok: false, status: response.status, data: { error: "the server answered " + response.status } };
      }
      return response.json().then(function (data) { return { ok: response.ok, status: response.status, data: data }; });
    });
  }

  function formBody(form, score) {
    const body = new FormData(form);
    body.set("score", score);
    return body;
  }

  function keep(form, score, login) {
    const body = formBody(form, score);
    localStorage.setItem(PENDING, JSON.stringify({
      url: form.action,
      card: form.closest("[id]") ? form.closest("[id]").id : "",
      score: score,
      tags: body.getAll("tags"),
      reason: body.get("reason") || "",
    }));
    status(form, "Your session has ended; your vote is kept until you log in.", login || "/accounts/login/?next=" + encodeURIComponent(location.pathname + location.search));
  }

  // One request at a time per reply, in the order given: a tag's autosave and the next thumb must not cross.
  const queues = new WeakMap();
  function send(form, url, score) {
    const next = (queues.get(form) || Promise.resolve()).then(function () { return sendNow(form, url, score); });
    queues.set(form, next);
    return next;
  }

  function sendNow(form, url, score) {
    const body = formBody(form, score);
    // What was sent, so the answer can be checked against it: "Saved" only when the tags are stored.
    const sentTags = body.getAll("tags").sort().join(",");
    status(form, "Saving…");
    return post(url, body, body.get("csrfmiddlewaretoken")).then(function (r) {
      if (r.data.code === "login_required") return keep(form, score, r.data.login);
      if (!r.ok) return status(form, "Not saved: " + (r.data.error || r.status));
      show(form, r.data);
      if (r.data.score !== null && (r.data.tags || []).slice().sort().join(",") !== sentTags) {
        return status(form, "Not saved: the tags were not stored; press a thumb again.");
      }
      r.data.reason = body.get("reason");
      status(form, describe(r.data));
    }).catch(function (err) {
      status(form, "Not saved: " + err.message + " (are you online?)");
    });
  }

  document.addEventListener("click", function (event) {
    const thumb = event.target.closest("form.rating button[data-score]");
    const undo = event.target.closest("form.rating button.undo");
    if (!thumb && !undo) return;
    event.preventDefault();
    const form = (thumb || undo).form;
    if (thumb) send(form, form.action, thumb.dataset.score);
    else send(form, form.dataset.unrate, "");
  });

  // A tag ticked or a reason written after voting is saved with the vote already given; before any vote
  // it waits for one, and the card says so.
  document.addEventListener("change", function (event) {
    const form = event.target.closest("form.rating");
    if (!form || !event.target.matches("input[name=tags], textarea[name=reason]")) return;
    const score = chosenScore(form);
    if (score) send(form, form.action, score);
    else status(form, "Press good or poor to save this with your vote.");
  });

  function flash(text, kind) {
    const main = document.querySelector("main");
    if (!main) return;
    const p = document.createElement("p");
    p.className = "flash " + (kind || "");
    p.id = "pending-vote";
    p.textContent = text;
    main.prepend(p);
  }

  // Back after logging in: save the kept vote with this page's fresh CSRF token.
  function applyPending() {
    const raw = localStorage.getItem(PENDING);
    const token = document.querySelector("meta[name=csrf-token]");
    if (!raw || !token || !document.body.dataset.user) return;
    localStorage.removeItem(PENDING);
    let vote;
    try { vote = JSON.parse(raw); } catch (e) { return; }
    const body = new FormData();
    body.set("score", vote.score);
    (vote.tags || []).forEach(function (t) { body.append("tags", t); });
    body.set("reason", vote.reason || "");
    post(vote.url, body, token.content).then(function (r) {
      if (!r.ok) return flash("Your vote from before you logged in was not saved: " + (r.data.error || r.status), "error");
      flash("Your vote from before you logged in is saved.");
      const card = vote.card && document.getElementById(vote.card);
      const form = card && card.querySelector("form.rating");
      if (form) { show(form, r.data); status(form, describe(r.data)); }
    });
  }

  // Copy buttons: data-copy names the element whose text goes to the clipboard.
  document.addEventListener("click", function (event) {
    const button = event.target.closest("button[data-copy]");
    if (!button) return;
    const source = document.querySelector(button.dataset.copy);
    if (!source) return;
    const text = source.textContent.trim();
    const done = function () { button.textContent = "Copied"; setTimeout(function () { button.textContent = "Copy"; }, 2000); };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { select(source); });
    } else {
      select(source);
    }
  });

  // Where the clipboard is out of reach (plain http), select the text so Ctrl+C copies it.
  function select(el) {
    const range = document.createRange();
    range.selectNodeContents(el);
    const sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
  }

  applyPending();
})();
