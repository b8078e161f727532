// Rating without a page reload: the forms work without JS too (they post and redirect back).
"use strict";
(function () {
  function counts(form, data) {
    const card = form.closest(".reply");
    card.querySelector(".up").textContent = data.up;
    card.querySelector(".down").textContent = data.down;
    form.querySelectorAll("button[data-score]").forEach(function (b) {
      b.classList.toggle("chosen", Number(b.dataset.score) === data.score);
    });
    const status = card.querySelector(".status");
    if (status) status.textContent = "Saved.";
  }

  document.addEventListener("click", function (event) {
    const button = event.target.closest("form.rating button[data-score]");
    if (!button) return;
    event.preventDefault();
    const form = button.form;
    const body = new FormData(form);
    body.set("score", button.dataset.score);
    fetch(form.action, {
      method: "POST",
      body: body,
      credentials: "same-origin",
      headers: { "Accept": "application/json", "X-CSRFToken": body.get("csrfmiddlewaretoken") },
    }).then(function (response) {
      return response.json().then(function (data) {
        if (!response.ok) throw new Error(data.error || response.statusText);
        counts(form, data);
      });
    }).catch(function (err) {
      const status = form.closest(".reply").querySelector(".status");
      if (status) status.textContent = "Not saved: " + err.message;
    });
  });
})();
