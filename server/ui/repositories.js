// The dashboard's repositories: GET / for the list (polled; quickly while one is downloading),
// GET /{name} to describe one, which starts the download of one not here yet. Each card shows
// the first frame (frames/0, which moves no cursor).

import { TOKEN_EVENT, apiJson, apiUrl, fetchImage, token } from "./api.js";
import { el, say } from "./page.js";

const QUICK_REFRESH = 500; // ms, while a repository is being prepared
const REFRESH = 3000; // ms otherwise

/** Show the repositories in `list` and fetch new ones with `form`. */
export function showRepositories({ list, status, form, input, fetchStatus }) {
  const cards = new Map();
  let timer = null;

  async function refresh() {
    clearTimeout(timer);
    let preparing = false;
    try {
      const repositories = await apiJson("./");
      for (const [name, card] of cards) {
        if (!(name in repositories)) {
          card.remove();
          cards.delete(name);
        }
      }
      for (const [name, info] of Object.entries(repositories)) {
        if (!cards.has(name)) cards.set(name, repositoryCard(name, list));
        cards.get(name).update(info);
        preparing ||= info.status === "preparing";
      }
      say(status, cards.size ? "" : "No repository yet: fetch one by name below.");
    } catch (error) {
      say(status, `The repositories cannot be listed: ${error.message}`, { error: true });
    }
    timer = setTimeout(refresh, preparing ? QUICK_REFRESH : REFRESH);
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = input.value.trim();
    if (!name || name === "." || name === "..") {
      say(fetchStatus, "Type the name of a repository to fetch.", { error: true });
      input.focus();
      return;
    }
    say(fetchStatus, `Asking for ${name}…`);
    try {
      const info = await apiJson(encodeURIComponent(name));
      say(fetchStatus, `${name}: ${stateText(info)}.`);
    } catch (error) {
      say(fetchStatus, `${name} cannot be fetched: ${error.message}`, { error: true });
    }
    refresh();
  });
  window.addEventListener(TOKEN_EVENT, () => {
    for (const card of cards.values()) card.remove(); // pictures again, with the new token
    cards.clear();
    refresh();
  });
  refresh();
}

function stateText(info) {
  if (info.status === "available") return `available, ${info.count} frames`;
  if (info.status === "failed") return `failed: ${info.error ?? "no reason given"}`;
  if (info.progress == null) return "downloading (size not known yet)";
  return `downloading, ${Math.round(info.progress * 100)} %`;
}

function repositoryCard(name, list) {
  const path = encodeURIComponent(name);
  const picture = el("div");
  const state = el("p");
  const progress = el("progress", { max: 1 });
  progress.setAttribute("aria-label", `download of ${name}`);
  const link = (target, text) => {
    const anchor = el("a", { href: apiUrl(`${path}/${target}`).href, textContent: text });
    anchor.setAttribute("aria-label", `${text} of ${name}`);
    return anchor;
  };
  const links = el("p", {}, link("video.mjpg", "MJPEG stream"), " · ", link("video.jpg", "next frame"));
  const heading = el("h3", { textContent: name });
  const item = el("li", { className: "card" }, heading, picture, state, progress, links);
  list.append(item);
  let objectUrl = null;

  // With a token the frame is fetched with it: the camera routes may need it, an <img> cannot.
  async function showThumbnail(thumbnail, source) {
    if (!token()) {
      thumbnail.src = apiUrl(source).href;
      return;
    }
    try {
      ({ url: objectUrl } = await fetchImage(source));
      thumbnail.src = objectUrl;
    } catch (error) {
      thumbnail.replaceWith(el("p", { textContent: `No picture: ${error.message}` }));
    }
  }

  return {
    update(info) {
      state.textContent = stateText(info);
      progress.hidden = info.status !== "preparing";
      if (info.progress == null) progress.removeAttribute("value");
      else progress.value = info.progress;
      if (info.status === "available" && info.count > 0 && !picture.firstChild) {
        const thumbnail = el("img", { className: "picture", alt: `first frame of ${name}` });
        picture.append(thumbnail);
        showThumbnail(thumbnail, `${path}/frames/0`);
      }
    },
    remove() {
      if (objectUrl) URL.revokeObjectURL(objectUrl);
      item.remove();
    },
  };
}
