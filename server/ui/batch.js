// The dashboard's batch analysis: the video goes up with XMLHttpRequest (fetch() cannot report
// upload progress) to POST /batch?wait=false, answered 202 {"job", "status"} once received and
// checked; GET /batch/{ID} is then polled until the job is done or failed.

import { apiJson, apiUrl, authHeaders, errorMessage } from "./api.js";
import { say } from "./page.js";

const POLL = 500; // ms between GET /batch/{ID}

/** Wire the batch form. */
export function setupBatch({ form, input, button, progress, status, result }) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = input.files[0];
    if (!file) {
      say(status, "Choose a video file first.", { error: true });
      input.focus();
      return;
    }
    button.disabled = true;
    result.textContent = "";
    progress.value = 0;
    try {
      const job = await upload(file, progress, status);
      await follow(job, status, result);
    } catch (error) {
      say(status, `${file.name} cannot be analysed: ${error.message}`, { error: true });
    } finally {
      button.disabled = false;
    }
  });
}

function upload(file, progress, status) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", apiUrl("batch?wait=false"));
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.upload.addEventListener("progress", (event) => {
      if (!event.lengthComputable) return;
      progress.value = event.loaded / event.total;
      say(status, `Uploading ${file.name}: ${Math.round(progress.value * 100)} %`);
    });
    xhr.upload.addEventListener("load", () => {
      progress.value = 1;
      say(status, `Uploaded ${file.name}; the server is checking the video…`);
    });
    xhr.addEventListener("load", () => {
      if (xhr.status === 202) {
        resolve(JSON.parse(xhr.responseText));
        return;
      }
      reject(new Error(errorMessage(xhr.status, xhr.statusText, xhr.responseText)));
    });
    xhr.addEventListener("error", () => {
      reject(new Error("the upload broke off: the server cannot be reached"));
    });
    const body = new FormData();
    body.append("file", file);
    xhr.send(body);
  });
}

async function follow(job, status, result) {
  let answer = job;
  while (answer.status === "queued" || answer.status === "running") {
    const where = answer.position ? `, position ${answer.position} in the queue` : "";
    say(status, `Job ${job.job}: ${answer.status}${where}`);
    await new Promise((resolve) => setTimeout(resolve, POLL));
    answer = await apiJson(`batch/${encodeURIComponent(job.job)}`);
  }
  if (answer.status === "done") {
    say(status, `Job ${job.job}: done`);
    result.textContent = JSON.stringify({ result: answer.result, video: answer.video }, null, 2);
  } else {
    say(status, `Job ${job.job}: ${answer.status}: ${answer.error ?? "no reason given"}`, { error: true });
  }
}
