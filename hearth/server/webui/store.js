// Conversations and settings, kept in this browser (localStorage): nothing of a chat is kept on the server unless
// it captures (then the server says so and the page shows it).
//
// A conversation: {id, title, created, updated, messages: [{role, content, ...}]}; an answer also keeps model,
// completion_id, finish, stats {ttft_ms, tokens, tokens_per_s} and feedback (1 or -1).

const CHATS = "hearth.chats.v1";
const CURRENT = "hearth.current";
const SETTINGS = "hearth.settings.v1";

// a number left empty is not sent: the server's default (max_tokens: what the context has left)
export const DEFAULTS = { model: "", system: "", temperature: 0.7, top_p: 1, max_tokens: "", schema: "" };

function read(key, fallback) {
  try {
    const raw = localStorage.getItem(key);
    return raw ? JSON.parse(raw) : fallback;
  } catch {
    return fallback;
  }
}

// false when the browser refused (storage full or off): the caller says so
function write(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
    return true;
  } catch {
    return false;
  }
}

export function loadChats() {
  const chats = read(CHATS, []);
  return Array.isArray(chats) ? chats.filter((c) => c && Array.isArray(c.messages)) : [];
}

export function saveChats(chats) {
  return write(CHATS, chats);
}

export function currentId() {
  return localStorage.getItem(CURRENT);
}

export function setCurrentId(id) {
  try { localStorage.setItem(CURRENT, id); } catch { /* storage off: the current chat is not remembered */ }
}

export function newChat() {
  const now = Date.now();
  const id = (crypto.randomUUID ? crypto.randomUUID() : `${now}-${Math.random().toString(16).slice(2)}`);
  return { id, title: "New chat", created: now, updated: now, messages: [] };
}

export function loadSettings() {
  return { ...DEFAULTS, ...read(SETTINGS, {}) };
}

export function saveSettings(settings) {
  return write(SETTINGS, settings);
}

// a file the user keeps: the conversation(s) as JSON
export function download(name, value) {
  const blob = new Blob([JSON.stringify(value, null, 2)], { type: "application/json" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}
