// Socket.IO for the pages: socket.io-client (from npm, served at /ui/vendor/) loaded on demand,
// so that a missing install is told on the page in words instead of breaking the page's modules.

import { apiBase, errorMessage, token } from "./api.js";

const CLIENT_URL = new URL("./vendor/socket.io.esm.min.js", import.meta.url);
let client = null;

/** socket.io-client's io(); rejects with framehub's reason when it cannot be loaded. */
export function socketIo() {
  client ??= import(CLIENT_URL.href).then(
    (module) => module.io,
    async () => {
      throw new Error(await whyNotLoaded());
    },
  );
  return client;
}

async function whyNotLoaded() {
  try {
    const response = await fetch(CLIENT_URL);
    if (!response.ok) {
      return errorMessage(response.status, response.statusText, await response.text());
    }
  } catch {
    // the server is away: say so below
  }
  return `the Socket.IO client ${CLIENT_URL.pathname} could not be loaded`;
}

/** A Socket.IO connection to framehub with `auth` (and the token), not yet connected. */
export async function connect(auth, options = {}) {
  const io = await socketIo();
  const value = token();
  return io(apiBase.origin, {
    path: `${apiBase.pathname}socket.io/`,
    transports: ["websocket"],
    auth: value ? { ...auth, token: value } : auth,
    ...options,
  });
}

/** Until `socket` is connected; rejects with the server's reason when refused. */
export function connected(socket) {
  return new Promise((resolve, reject) => {
    if (socket.connected) {
      resolve(socket);
      return;
    }
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (error) => reject(error));
  });
}
