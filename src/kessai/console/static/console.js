// Small enhancements for the console and the sandbox wallet. Every page works without them;
// they are served from our origin because the Content-Security-Policy forbids inline scripts.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // Ask before a destructive form is sent (disable a terminal, reset its password).
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }

  // Copy buttons.
  for (const button of document.querySelectorAll("[data-copy]")) {
    button.addEventListener("click", () => {
      if (navigator.clipboard) navigator.clipboard.writeText(button.dataset.copy).catch(() => {});
    });
  }

  // The refund form: typing an amount means a partial refund.
  const amount = document.getElementById("refund-amount");
  const partial = document.getElementById("refund-partial");
  if (amount && partial) {
    const choose = () => { partial.checked = true; };
    amount.addEventListener("focus", choose);
    amount.addEventListener("input", choose);
  }

  // Countdowns (QR expiry, payment-code refresh). At zero: reload, or send a form.
  for (const el of document.querySelectorAll("[data-countdown]")) {
    let left = Number(el.dataset.countdown);
    const show = () => {
      const m = Math.floor(left / 60);
      const s = String(left % 60).padStart(2, "0");
      el.textContent = `${m}:${s}`;
    };
    const timer = window.setInterval(() => {
      if (left > 0) left -= 1;
      show();
      if (left === 0) {
        window.clearInterval(timer);
        const formId = el.dataset.submit;
        if (formId) {
          const form = document.getElementById(formId);
          if (form) form.submit();
        } else if (el.dataset.reload) {
          window.location.reload();
        }
      }
    }, 1000);
  }

  // The customer's phone: watch the shown code; once a POS used it, show the result.
  const panel = document.getElementById("code-panel");
  const watch = document.getElementById("watch-form");
  if (panel && watch) {
    const poll = async () => {
      try {
        const answer = await fetch(panel.dataset.statusUrl, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ code: panel.dataset.code }),
        });
        if (answer.ok) {
          const { state } = await answer.json();
          if (state !== "unused") { watch.submit(); return; }
        }
      } catch (error) {
        // The server may be restarting; try again at the next tick.
      }
      window.setTimeout(poll, 1000);
    };
    window.setTimeout(poll, 1000);
  }
});
