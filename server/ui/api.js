// Talking to framehub from the pages: its URLs, the API token, and its errors in words.
//
// The pages live under /ui/ and the API one folder up, so a proxy that serves framehub under a
// prefix keeps working. The token the person types is kept in sessionStorage (this tab only) and
// sent as "Authorization: Bearer TOKEN"; pages hear of a change through the "framehub-token" event.

const TOKEN_KEY = "framehub.token";
export const TOKEN_EVENT = "framehub-token";

export const apiBase = new URL("../", import.meta.url);

/** The absolute URL of an API path such as "live" or "batch/ID". */
export function apiUrl(path) {
  return new URL(path, apiBase);
}

/** The API token typed in this tab, or "". */
export function token() {
  return sessionStorage.getItem(TOKEN_KEY) ?? "";
}

/** Keep (or, when empty, forget) the token and tell the page. */
export function setToken(value) {
  if (value) {
    sessionStorage.setItem(TOKEN_KEY, value);
  } else {
    sessionStorage.removeItem(TOKEN_KEY);
  }
  window.dispatchEvent(new Event(TOKEN_EVENT));
}

/** The Authorization header for the token, if there is one. */
export function authHeaders() {
  const value = token();
  return value ? { Authorization: `Bearer ${value}` } : {};
}

/** An answer of the API that was not 2xx, with framehub's own words for it. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** The message of an error answer: its JSON {"error": ...}, else its status line. */
export function errorMessage(status, statusText, body) {
  let message = `${status} ${statusText}`.trim();
  try {
    const parsed = JSON.parse(body);
    if (typeof parsed?.error === "string") message = parsed.error;
  } catch {
    // not JSON: the status line says it
  }
  if (status === 401) message += " (type the API token at the top of the page)";
  return message;
}

/** fetch() of an API path with the token; a network failure becomes an Error in words. */
export async function apiFetch(path, options = {}) {
  try {
    return await fetch(apiUrl(path), {
      cache: "no-store",
      ...options,
      headers: { ...authHeaders(), ...options.headers },
    });
  } catch {
    throw new Error(`framehub at ${apiBase.origin} cannot be reached`);
  }
}

/** The JSON answer of an API path; an ApiError for any other answer. */
export async function apiJson(path, options = {}) {
  const response = await apiFetch(path, options);
  if (!response.ok) throw await apiError(response);
  return response.json();
}

/** The ApiError of a failed answer. */
export async function apiError(response) {
  const body = await response.text();
  return new ApiError(response.status, errorMessage(response.status, response.statusText, body));
}

/** An image of the API fetched with the token (an <img> cannot send one): a blob: URL for it,
 * to revoke once replaced, and the answer, for its headers. */
export async function fetchImage(path) {
  const response = await apiFetch(path);
  if (!response.ok) throw await apiError(response);
  return { url: URL.createObjectURL(await response.blob()), response };
}
