// The periodic task form in the admin: the chosen crontab's schedule in words under the field
// (django-celery-beat's own inline script, as a file).
"use strict";
(function ($) {
  const data = document.getElementById("readable-crontabs");
  if (!data || !$) return;
  const help = $(".field-crontab .help");
  const readable = JSON.parse(data.textContent);
  const original = help.html();
  $(".field-crontab_translation").hide();
  $(".field-crontab").change(function () {
    help.html(original + "<br/>Translation: ");
    help.append(document.createTextNode(readable[$("#id_crontab").val()] || ""));
  });
})(window.django && window.django.jQuery);
