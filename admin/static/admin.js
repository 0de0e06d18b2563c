// Privatemode Gateway admin: copy buttons, confirm dialogs, and the gateway's address in examples.
// Every page works without this file; it only adds conveniences.
"use strict";

function copyText(text, button) {
  const done = () => {
    const label = button.textContent;
    button.textContent = "Copied";
    button.classList.add("copied");
    setTimeout(() => { button.textContent = label; button.classList.remove("copied"); }, 1600);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, () => fallbackCopy(text) && done());
  } else if (fallbackCopy(text)) {
    done();
  }
}

// navigator.clipboard needs HTTPS (or localhost); plain HTTP falls back to a selection.
function fallbackCopy(text) {
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "offscreen";
  document.body.appendChild(area);
  area.select();
  let ok = false;
  try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
  area.remove();
  return ok;
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const source = document.getElementById(button.dataset.copy);
  if (!source) return;
  copyText(source.value !== undefined && source.tagName === "INPUT" ? source.value : source.textContent, button);
});

// Ask before destructive actions: on the form, or on the button that submits it.
document.addEventListener("submit", (event) => {
  const submitter = event.submitter;
  const message = (submitter && submitter.dataset.confirm) || event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});

// The admin sits behind the gateway, which may not pass on the host name clients use. The
// browser knows it: show examples with the address this page was loaded from.
document.addEventListener("DOMContentLoaded", () => {
  const server = document.body.dataset.serverOrigin;
  const here = window.location.origin;
  if (!server || server === here) return;
  document.querySelectorAll("pre code, .copy-field input, .base-url-text").forEach((el) => {
    if (el.tagName === "INPUT") el.value = el.value.split(server).join(here);
    else el.textContent = el.textContent.split(server).join(here);
  });
});
