// The dashboard (/ui/): repositories, live cameras and batch analysis, each in its own module.

import { setupBatch } from "./batch.js";
import { showCameras } from "./cameras.js";
import { say, setupTokenForm } from "./page.js";
import { showRepositories } from "./repositories.js";
import { socketIo } from "./socket.js";

const byId = (id) => document.getElementById(id);

setupTokenForm(byId("token-form"));
socketIo().catch((error) => say(byId("page-status"), error.message, { error: true }));
showRepositories({
  list: byId("repositories"),
  status: byId("repositories-status"),
  form: byId("fetch-form"),
  input: byId("fetch-name"),
  fetchStatus: byId("fetch-status"),
});
showCameras({
  list: byId("cameras"),
  status: byId("cameras-status"),
  socketStatus: byId("results-status"),
});
setupBatch({
  form: byId("batch-form"),
  input: byId("batch-file"),
  button: byId("batch-submit"),
  progress: byId("batch-progress"),
  status: byId("batch-status"),
  result: byId("batch-result"),
});
