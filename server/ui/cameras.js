// The dashboard's live cameras: GET /live for the list (polled), each camera's picture, and its
// results as they arrive over Socket.IO (a watch-only connection sending `watch {camera}`).
//
// Without a token each picture is the camera's MJPEG stream in an <img>. An <img> cannot send a
// token, so with one the newest frame (latest.jpg) is fetched with the header a few times a
// second and shown through a blob: URL; the same is done past MAX_STREAMS cameras, since every
// stream holds one of the browser's few connections to the server (HTTP/1.1 allows six).

import { TOKEN_EVENT, apiJson, apiUrl, fetchImage, token } from "./api.js";
import { describeResult, el, say } from "./page.js";
import { connect } from "./socket.js";

const REFRESH = 1000; // ms between GET /live
const STILL_INTERVAL = 250; // ms between fetched frames of a camera
const MAX_STREAMS = 3;

/** Show the live cameras in `list`, problems in `status`. */
export function showCameras({ list, status, socketStatus }) {
  const cards = new Map();
  let socket = null;
  let attempts = 0;
  let timer = null;

  async function refresh() {
    clearTimeout(timer);
    try {
      const cameras = await apiJson("live");
      for (const [name, card] of cards) {
        if (!(name in cameras)) {
          card.remove();
          cards.delete(name);
        }
      }
      for (const [name, info] of Object.entries(cameras)) {
        if (!cards.has(name)) {
          const streams = [...cards.values()].filter((card) => card.streaming).length;
          cards.set(name, cameraCard(name, list, !token() && streams < MAX_STREAMS));
          watch(name);
        }
        cards.get(name).update(info);
      }
      const none = "No live camera yet: open the camera page, or stream with framehub-send.";
      say(status, cards.size ? "" : none);
    } catch (error) {
      say(status, `The live cameras cannot be listed: ${error.message}`, { error: true });
    }
    timer = setTimeout(refresh, REFRESH);
  }

  function watch(name) {
    if (!socket?.connected) return; // every camera is watched once connected
    socket.emit("watch", { camera: name }, (ack) => {
      if (ack?.ok) return;
      say(socketStatus, `Results of ${name} cannot be followed: ${ack?.error}`, { error: true });
    });
  }

  async function follow() {
    const attempt = ++attempts;
    socket?.off(); // a connection given up on says nothing more
    socket?.disconnect();
    socket = null;
    let next;
    try {
      next = await connect({ watch: true });
    } catch (error) {
      say(socketStatus, `Results cannot be shown as they arrive: ${error.message}`, { error: true });
      return;
    }
    if (attempt !== attempts) {
      next.disconnect(); // the token changed again meanwhile
      return;
    }
    socket = next;
    socket.on("connect", () => {
      say(socketStatus, "Following results as they arrive.");
      for (const name of cards.keys()) watch(name);
    });
    socket.on("connect_error", (error) => {
      say(socketStatus, `Results cannot be followed: ${error.message}`, { error: true });
    });
    socket.on("disconnect", (reason) => {
      say(socketStatus, `Not following results (${reason}); reconnecting…`, { error: true });
    });
    socket.on("result", (message) => cards.get(message.camera)?.showResult(message));
  }

  window.addEventListener(TOKEN_EVENT, () => {
    for (const card of cards.values()) card.remove();
    cards.clear();
    follow();
    refresh();
  });
  follow();
  refresh();
}

function cameraCard(name, list, streaming) {
  const path = `live/${encodeURIComponent(name)}`;
  const picture = el("img", { className: "picture", alt: `${name} camera, live` });
  const state = el("p");
  const frame = el("p", { className: "empty" });
  const result = el("pre", { textContent: "No result yet." });
  const item = el(
    "li",
    { className: "card" },
    el("h3", { textContent: name }),
    picture,
    state,
    frame,
    el("h4", { textContent: "Newest result" }),
    result,
  );
  list.append(item);
  let online = false;
  let stopped = false;
  let objectUrl = null;
  let stillTimer = null;

  async function fetchStill() {
    if (stopped) return;
    if (online && !document.hidden) {
      try {
        const { url, response } = await fetchImage(`${path}/latest.jpg`);
        if (objectUrl) URL.revokeObjectURL(objectUrl);
        objectUrl = url;
        if (stopped) return;
        const number = response.headers.get("X-Frame-Number");
        frame.textContent = number === null ? "No frame: the camera is offline." : `Frame ${number}`;
        picture.src = url;
      } catch (error) {
        frame.textContent = `The newest frame cannot be fetched: ${error.message}`;
      }
    } else if (!online) {
      frame.textContent = "Offline: no new frames.";
    }
    stillTimer = setTimeout(fetchStill, STILL_INTERVAL);
  }

  // Streaming: the MJPEG stream while online; offline, the placeholder of latest.jpg, since
  // Chromium shows a stream's part only once the next one begins, and none comes while offline.
  function showStream() {
    const wanted = online ? `${path}/video.mjpg` : `${path}/latest.jpg`;
    if (picture.dataset.source === wanted) return;
    picture.dataset.source = wanted;
    picture.src = apiUrl(wanted).href;
    frame.textContent = online ? "Live MJPEG stream." : "Offline: no picture.";
  }

  if (!streaming) {
    frame.textContent = "Fetching frames…";
    fetchStill();
  }
  apiJson(`${path}/result`).then(
    (message) => {
      if (result.textContent === "No result yet.") result.textContent = describeResult(message);
    },
    () => {}, // 404 until the first result: "No result yet." says it
  );

  return {
    streaming,
    update(info) {
      online = info.online;
      if (streaming) showStream();
      const fps = Number(info.fps ?? 0).toFixed(1);
      state.textContent =
        `${info.online ? "Online" : "Offline"} · ${fps} fps · ${info.frames} frames · ` +
        `${info.dropped} dropped`;
    },
    showResult(message) {
      result.textContent = describeResult(message);
    },
    remove() {
      stopped = true;
      clearTimeout(stillTimer);
      picture.removeAttribute("src"); // ends the MJPEG stream
      if (objectUrl) URL.revokeObjectURL(objectUrl);
      item.remove();
    },
  };
}
