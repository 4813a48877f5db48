// The pages' one way to the server: fetch with the API key (kept in sessionStorage, sent as a bearer token).
// A 401 asks for the key in a dialog and tries again; several requests refused at once share one dialog.
// Paths are relative (no leading slash), so the pages work behind a proxy that serves hearth under a prefix.

const KEY = "hearth.apiKey";
let asking = null; // the open dialog's promise

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export async function errorMessage(res) {
  try {
    const body = await res.json();
    if (body && body.error && body.error.message) return String(body.error.message);
  } catch { /* not JSON */ }
  return `${res.status} ${res.statusText}`;
}

function keyDialog(refused) {
  const dialog = document.createElement("dialog");
  dialog.setAttribute("aria-labelledby", "key-title");
  const form = document.createElement("form");
  form.method = "dialog";
  const title = document.createElement("h2");
  title.id = "key-title";
  title.textContent = "API key needed";
  const text = document.createElement("p");
  text.textContent = (refused ? "The server refused that key. " : "") +
    "This server asks for an API key. It is kept in this tab only (sessionStorage) and sent with each request.";
  const label = document.createElement("label");
  label.textContent = "API key";
  label.htmlFor = "api-key";
  const input = document.createElement("input");
  input.type = "password";
  input.id = "api-key";
  input.autocomplete = "off";
  input.required = true;
  const buttons = document.createElement("div");
  buttons.className = "buttons";
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.textContent = "Cancel";
  const ok = document.createElement("button");
  ok.className = "primary";
  ok.textContent = "Use key";
  ok.value = "ok";
  buttons.append(cancel, ok);
  form.append(title, text, label, input, buttons);
  dialog.append(form);
  document.body.append(dialog);
  return new Promise((resolve) => {
    cancel.addEventListener("click", () => dialog.close(""));
    dialog.addEventListener("close", () => {
      const key = dialog.returnValue === "ok" ? input.value.trim() : "";
      dialog.remove();
      resolve(key || null);
    });
    dialog.showModal();
    input.focus();
  });
}

async function askKey(refused) {
  if (!asking) {
    asking = keyDialog(refused).then((key) => {
      asking = null;
      if (key) sessionStorage.setItem(KEY, key);
      return key;
    });
  }
  return asking;
}

// fetch(path) with the key; `json`: a body to send as JSON. Resolves to the Response (any status but a 401 the
// user would not answer, which throws ApiError).
export async function api(path, { json, ...options } = {}) {
  for (let refused = false; ; refused = true) {
    const sent = sessionStorage.getItem(KEY);
    const headers = new Headers(options.headers || {});
    if (sent) headers.set("Authorization", `Bearer ${sent}`);
    if (json !== undefined) headers.set("Content-Type", "application/json");
    const res = await fetch(path, {
      ...options, headers, body: json === undefined ? options.body : JSON.stringify(json),
    });
    if (res.status !== 401) return res;
    const message = await errorMessage(res);
    if (sessionStorage.getItem(KEY) !== sent) continue; // another request got a new key meanwhile
    if (sent) sessionStorage.removeItem(KEY);
    const key = await askKey(refused || Boolean(sent));
    if (!key) throw new ApiError(401, message);
  }
}

// GET path as JSON; throws ApiError on an error status.
export async function getJson(path) {
  const res = await api(path);
  if (!res.ok) throw new ApiError(res.status, await errorMessage(res));
  return res.json();
}
