// The camera page (/ui/camera): this device's camera as a framehub live camera.
//
// getUserMedia gives the camera (only on a secure context: HTTPS, or localhost); every 1/fps
// seconds the preview is drawn to a canvas and sent as a JPEG in a Socket.IO `process` event,
// {"image": bytes, "ts": seconds}, on a connection opened with a session id from
// GET /get_session_id?camera=NAME. Each ack ({"ok": true, "frame": n} or {"ok": false, "error"})
// is counted, and each `result` the server emits for a clip is shown.

import { apiJson } from "./api.js";
import { describeResult, say, setupTokenForm } from "./page.js";
import { connect, connected, socketIo } from "./socket.js";

const ACK_TIMEOUT = 10000; // ms
const MAX_IN_FLIGHT = 4; // frames sent and not yet acknowledged

const byId = (id) => document.getElementById(id);
const form = byId("camera-form");
const nameInput = byId("camera-name");
const fpsInput = byId("camera-fps");
const qualityInput = byId("camera-quality");
const widthInput = byId("camera-width");
const startButton = byId("camera-start");
const stopButton = byId("camera-stop");
const status = byId("camera-status");
const preview = byId("camera-preview");
const resultView = byId("camera-result");
const counterViews = Object.fromEntries(
  ["sent", "acked", "refused", "dropped", "held", "results"].map((name) => [name, byId(`count-${name}`)]),
);
const canvas = document.createElement("canvas");

let run = null; // the running stream: {socket, media, timer, inFlight}
let counts = {};

setupTokenForm(byId("token-form"));
qualityInput.addEventListener("input", () => {
  byId("camera-quality-value").value = Number(qualityInput.value).toFixed(2);
});
if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
  startButton.disabled = true;
  say(
    status,
    "This browser gives the camera only to secure pages: open this page over HTTPS (framehub's " +
      "[server] tls_cert and tls_key) or on localhost.",
    { error: true },
  );
} else {
  socketIo().catch((error) => say(byId("page-status"), error.message, { error: true }));
}
form.addEventListener("submit", (event) => {
  event.preventDefault();
  if (!run) start();
});
stopButton.addEventListener("click", () => stop("Stopped."));

function count(name, by = 1) {
  counts[name] += by;
  counterViews[name].textContent = String(counts[name]);
}

function fps() {
  const value = Number(fpsInput.value);
  return Number.isFinite(value) ? Math.min(Math.max(value, 1), 30) : 5;
}

function cameraProblem(error) {
  switch (error.name) {
    case "NotAllowedError":
      return "the camera was not allowed: allow this page to use it and press Start again";
    case "NotFoundError":
    case "OverconstrainedError":
      return "no camera was found";
    case "NotReadableError":
      return "the camera is in use by another program";
    default:
      return error.message;
  }
}

async function start() {
  const name = nameInput.value.trim();
  if (!name) {
    say(status, "Type a camera name.", { error: true });
    nameInput.focus();
    return;
  }
  startButton.disabled = true;
  nameInput.disabled = true;
  say(status, "Asking for the camera…");
  let media = null;
  let socket = null;
  try {
    try {
      const width = Number(widthInput.value);
      media = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: width } }, audio: false });
    } catch (error) {
      throw new Error(cameraProblem(error));
    }
    preview.srcObject = media;
    preview.hidden = false;
    await preview.play();
    say(status, `Connecting as camera ${name}…`);
    const { session_id } = await apiJson(`get_session_id?camera=${encodeURIComponent(name)}`);
    socket = await connect({ session_id }, { reconnection: false });
    await connected(socket);
  } catch (error) {
    socket?.disconnect();
    for (const track of media?.getTracks() ?? []) track.stop();
    preview.srcObject = null;
    preview.hidden = true;
    startButton.disabled = false;
    nameInput.disabled = false;
    say(status, `The camera cannot stream: ${error.message}`, { error: true });
    return;
  }
  counts = Object.fromEntries(Object.keys(counterViews).map((key) => [key, 0]));
  for (const view of Object.values(counterViews)) view.textContent = "0";
  resultView.textContent = "No result yet.";
  run = { socket, media, timer: null, inFlight: 0 };
  socket.on("result", (message) => {
    count("results");
    count("dropped", message.clip?.dropped ?? 0);
    resultView.textContent = describeResult(message);
  });
  socket.on("disconnect", (reason) => {
    if (run?.socket !== socket) return; // stopped here
    stop(`Disconnected by the server (${reason}); press Start to stream again.`, true);
  });
  stopButton.disabled = false;
  stopButton.focus(); // Start is disabled now; keep the keyboard where the next step is
  say(status, `Streaming as camera ${name}.`);
  tick();
}

function stop(message, error = false) {
  if (!run) return;
  const { socket, media, timer } = run;
  run = null;
  clearTimeout(timer);
  socket.disconnect();
  for (const track of media.getTracks()) track.stop();
  preview.srcObject = null;
  preview.hidden = true;
  const hadFocus = document.activeElement === stopButton;
  stopButton.disabled = true;
  startButton.disabled = false;
  nameInput.disabled = false;
  if (hadFocus) startButton.focus();
  say(status, `${message} ${counts.acked} frames acknowledged.`, { error });
}

async function tick() {
  const current = run;
  if (!current) return;
  current.timer = setTimeout(tick, 1000 / fps());
  if (current.inFlight >= MAX_IN_FLIGHT) {
    count("held");
    return;
  }
  if (preview.readyState < HTMLMediaElement.HAVE_CURRENT_DATA || !preview.videoWidth) return;
  current.inFlight += 1;
  try {
    const image = await (await capture()).arrayBuffer();
    if (run !== current) return;
    count("sent");
    const ack = await current.socket
      .timeout(ACK_TIMEOUT)
      .emitWithAck("process", { image, ts: Date.now() / 1000 });
    if (run !== current) return;
    if (ack.ok) {
      count("acked");
      if (ack.camera) say(status, `Streaming as camera ${ack.camera}.`);
    } else {
      count("refused");
      say(status, `Frame refused: ${ack.error}`, { error: true });
    }
  } catch (error) {
    if (run === current) {
      count("refused");
      say(status, `A frame got no answer: ${error.message}`, { error: true });
    }
  } finally {
    current.inFlight -= 1;
  }
}

function capture() {
  const width = Math.min(Number(widthInput.value), preview.videoWidth);
  canvas.width = width;
  canvas.height = Math.round((preview.videoHeight * width) / preview.videoWidth);
  canvas.getContext("2d").drawImage(preview, 0, 0, canvas.width, canvas.height);
  return new Promise((resolve, reject) => {
    canvas.toBlob(
      (blob) => (blob ? resolve(blob) : reject(new Error("the frame could not be made into a JPEG"))),
      "image/jpeg",
      Number(qualityInput.value),
    );
  });
}
