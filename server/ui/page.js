// What both pages share: messages in words, small DOM building, the token field, results.

import { setToken, token } from "./api.js";

/** Show `text` in a status element (an aria-live region), marked as a problem with `error`. */
export function say(element, text, { error = false } = {}) {
  element.textContent = text;
  element.classList.toggle("error", error && text !== "");
}

/** A new element with properties and children. */
export function el(tag, properties = {}, ...children) {
  const element = Object.assign(document.createElement(tag), properties);
  element.append(...children);
  return element;
}

/** Wire the token form: fill it from this tab's storage, keep or forget what is typed. */
export function setupTokenForm(form) {
  const input = form.querySelector("input");
  const status = form.querySelector("[role=status]");
  const forget = form.querySelector("button[type=button]");
  input.value = token();
  if (token()) say(status, "A token is in use in this tab.");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = input.value.trim();
    setToken(value);
    say(status, value ? "Token saved for this tab." : "No token: requests go without one.");
  });
  forget.addEventListener("click", () => {
    input.value = "";
    setToken("");
    say(status, "Token forgotten.");
  });
}

/** A result message ({clip, result}) as text: which frames, then each analysis's answer. */
export function describeResult(message) {
  const clip = message.clip ?? {};
  const heading =
    `Clip of frames ${clip.first_frame}–${clip.last_frame}: ${clip.frames} frames, ` +
    `${clip.dropped ?? 0} dropped, ${Number(clip.duration ?? 0).toFixed(2)} s`;
  return `${heading}\n${JSON.stringify(message.result ?? {}, null, 2)}`;
}
