// The chat page: conversations in this browser, answers streamed from POST v1/chat/completions (server-sent events),
// as any OpenAI client gets them. Stop aborts the fetch; the server sees the connection close and aborts the
// engine request, which frees its KV cache blocks.

import { api, ApiError, errorMessage, getJson } from "./api.js";
import { render } from "./render.js";
import * as store from "./store.js";
import { button, drawList as drawSidebar } from "./sidebar.js";
import { chatRequest, streamChat } from "./stream.js";

const $ = (id) => document.getElementById(id);
const el = {
  messages: $("messages"), prompt: $("prompt"), send: $("send"), stop: $("stop"), model: $("model"),
  system: $("system"), temperature: $("temperature"), topP: $("top-p"), maxTokens: $("max-tokens"),
  schema: $("schema"), schemaError: $("schema-error"), list: $("conversations"), sidebar: $("sidebar"),
  toggle: $("toggle-sidebar"), notice: $("notice"), captureNote: $("capture-note"), better: $("better"),
};

const state = {
  chats: store.loadChats(),
  chat: null,
  settings: store.loadSettings(),
  capture: false, // the server keeps completions: answers can be rated (POST v1/feedback)
  controller: null, // the running request's AbortController
};

const FINISH = {
  length: "stopped at the token limit (length)",
  content_filter: "withheld by the server's guard (content_filter)",
  stopped: "stopped by you",
  tool_calls: "asked for a tool (tool_calls)",
};

function notice(text) {
  el.notice.textContent = text || "";
  el.notice.hidden = !text;
}

function persist() {
  if (!store.saveChats(state.chats)) notice("This browser would not store the conversation (storage full or off).");
}

// ---- side bar ------------------------------------------------------------------------------------------------
function drawList() {
  drawSidebar(el.list, state.chats, state.chat, {
    open: select,
    rename: (chat, title) => {
      if (title) chat.title = title;
      persist();
      drawList();
    },
    remove: (chat) => {
      state.chats = state.chats.filter((c) => c !== chat);
      persist();
      select([...state.chats].sort((a, b) => b.updated - a.updated)[0] || null);
    },
  });
}

function select(chat) {
  if (state.controller) stop();
  state.chat = chat;
  if (chat) store.setCurrentId(chat.id);
  closeSidebar();
  drawList();
  drawMessages();
}

function closeSidebar() {
  el.sidebar.classList.remove("open");
  el.toggle.setAttribute("aria-expanded", "false");
}

// ---- messages ------------------------------------------------------------------------------------------------
function drawMessages() {
  el.messages.replaceChildren();
  const messages = state.chat ? state.chat.messages : [];
  if (!messages.length) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = "Ask anything. Answers stream from the model this server runs; conversations stay in this browser.";
    el.messages.append(p);
  }
  messages.forEach((m, i) => el.messages.append(messageNode(m, i)));
  el.messages.scrollTop = el.messages.scrollHeight;
}

function messageNode(m, i) {
  const node = document.createElement("article");
  node.className = `msg ${m.role}`;
  node.dataset.index = i;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = m.role === "user" ? "You" : (m.model || "Assistant");
  const content = document.createElement("div");
  content.className = "content";
  node.append(who, content);
  if (m.role === "user") content.textContent = m.content;
  else fillAnswer(node, m);
  node.append(actions(m, i));
  return node;
}

// an answer's text, its numbers and its finish reason (also called while it streams)
function fillAnswer(node, m) {
  const content = node.querySelector(".content");
  render(content, m.content);
  content.classList.toggle("cursor", Boolean(m.streaming));
  node.setAttribute("aria-busy", m.streaming ? "true" : "false");
  let meta = node.querySelector(".meta");
  if (!meta) {
    meta = document.createElement("div");
    meta.className = "meta";
    content.after(meta);
  }
  meta.replaceChildren();
  if (m.error) {
    const err = document.createElement("div");
    err.className = "failed";
    err.setAttribute("role", "alert");
    err.textContent = m.error;
    meta.append(err);
  }
  const parts = [];
  if (m.stats) {
    if (m.stats.ttft_ms != null) parts.push(`first token ${Math.round(m.stats.ttft_ms)} ms`);
    if (m.stats.tokens_per_s != null) parts.push(`${m.stats.tokens_per_s.toFixed(1)} tokens/s`);
    if (m.stats.tokens) parts.push(`${m.stats.tokens} tokens`);
  }
  if (parts.length) {
    const s = document.createElement("span");
    s.className = "stats";
    s.textContent = parts.join(" · ");
    meta.append(s);
  }
  if (m.finish && m.finish !== "stop") {
    const f = document.createElement("span");
    f.className = "finish";
    f.dataset.finish = m.finish;
    f.textContent = `${parts.length ? " · " : ""}${FINISH[m.finish] || m.finish}`;
    meta.append(f);
  }
}

function actions(m, i) {
  const bar = document.createElement("div");
  bar.className = "actions";
  if (m.streaming) return bar;
  const messages = state.chat.messages;
  bar.append(button("Copy", (e) => copy(m.content, e.target), { title: "Copy this message" }));
  if (m.role === "user") {
    bar.append(button("Edit", () => edit(i), { title: "Edit and send again" }));
  } else {
    if (i === messages.length - 1) bar.append(button("Regenerate", () => regenerate(), { title: "Answer again" }));
    if (state.capture && m.completion_id && !m.error && m.finish !== "stopped") { // kept by the server: ratable
      for (const [score, label] of [[1, "Good"], [-1, "Bad"]]) {
        const b = button(label, () => feedback(m, { score }), { title: `${label} answer` });
        b.setAttribute("aria-pressed", m.feedback === score ? "true" : "false");
        if (m.feedback === score) b.classList.add("chosen");
        bar.append(b);
      }
      bar.append(button("Suggest a better answer", () => better(m)));
    }
  }
  return bar;
}

function redraw(i) {
  const old = el.messages.querySelector(`[data-index="${i}"]`);
  if (old) old.replaceWith(messageNode(state.chat.messages[i], i));
}

async function copy(text, target) {
  try {
    await navigator.clipboard.writeText(text);
  } catch { // no clipboard API (a page not served over https or from localhost): the old way
    const area = document.createElement("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  target.textContent = "Copied";
  setTimeout(() => { target.textContent = "Copy"; }, 1500);
}

function edit(i) {
  const m = state.chat.messages[i];
  const node = el.messages.querySelector(`[data-index="${i}"]`);
  const box = document.createElement("div");
  box.className = "edit";
  const area = document.createElement("textarea");
  area.value = m.content;
  area.setAttribute("aria-label", "Edit your message");
  const row = document.createElement("div");
  row.className = "edit-buttons";
  row.append(
    button("Send", () => {
      if (!area.value.trim() || state.controller) return;
      m.content = area.value;
      state.chat.messages.splice(i + 1);
      drawMessages();
      generate();
    }, { className: "small primary" }),
    button("Cancel", () => redraw(i)));
  box.append(area, row);
  node.querySelector(".content").replaceWith(box);
  node.querySelector(".actions").remove();
  area.focus();
}

function regenerate() {
  if (state.controller) return;
  const messages = state.chat.messages;
  if (messages.length && messages[messages.length - 1].role === "assistant") messages.pop();
  drawMessages();
  generate();
}

// ---- feedback (only when the server captures) -----------------------------------------------------------------
async function feedback(m, body) {
  try {
    const res = await api("v1/feedback", { method: "POST", json: { completion_id: m.completion_id, ...body } });
    if (!res.ok) throw new ApiError(res.status, await errorMessage(res));
    m.feedback = body.score;
    persist();
    redraw(state.chat.messages.indexOf(m));
    notice("");
  } catch (e) {
    notice(`Feedback not sent: ${e.message}`);
  }
}

function better(m) {
  const text = $("better-text");
  text.value = m.content;
  $("better-comment").value = "";
  el.better.returnValue = "";
  el.better.onclose = () => {
    if (el.better.returnValue === "send" && text.value.trim()) {
      const comment = $("better-comment").value.trim();
      feedback(m, { score: -1, correction: text.value, ...(comment ? { comment } : {}) });
    }
  };
  el.better.showModal();
  text.focus();
}

// ---- generating ----------------------------------------------------------------------------------------------
async function generate() {
  let body;
  try {
    body = chatRequest(state.chat.messages, state.settings, state.capture);
  } catch (e) {
    $("settings").open = true;
    el.schemaError.textContent = `The JSON schema is not valid JSON: ${e.message}`;
    el.schemaError.hidden = false;
    return;
  }
  el.schemaError.hidden = true;
  const chat = state.chat;
  const answer = { role: "assistant", content: "", model: body.model || el.model.value, streaming: true };
  chat.messages.push(answer);
  chat.updated = Date.now();
  const index = chat.messages.length - 1;
  drawMessages();
  const node = el.messages.querySelector(`[data-index="${index}"]`);
  const controller = state.controller = new AbortController();
  busy(true);
  let pending = false;
  const paint = () => { // at most once a frame, however fast the pieces come
    pending = false;
    const follow = el.messages.scrollHeight - el.messages.scrollTop - el.messages.clientHeight < 80;
    fillAnswer(node, answer);
    if (follow) el.messages.scrollTop = el.messages.scrollHeight;
  };
  const result = await streamChat(body, controller.signal, (text) => {
    answer.content = text;
    if (!pending) { pending = true; requestAnimationFrame(paint); }
  });
  delete answer.streaming;
  for (const key of ["content", "completion_id", "finish", "error", "stats"]) {
    if (result[key] != null) answer[key] = result[key];
  }
  if (state.controller === controller) state.controller = null;
  busy(false);
  persist();
  if (state.chat === chat) redraw(index);
  drawList();
}

function busy(on) {
  el.send.hidden = on;
  el.stop.hidden = !on;
  el.prompt.setAttribute("aria-busy", on ? "true" : "false");
}

function stop() {
  if (state.controller) state.controller.abort();
}

function submit() {
  const text = el.prompt.value;
  if (!text.trim() || state.controller) return;
  if (!state.chat) {
    state.chat = store.newChat();
    state.chats.push(state.chat);
    store.setCurrentId(state.chat.id);
  }
  if (!state.chat.messages.length) state.chat.title = text.trim().replace(/\s+/g, " ").slice(0, 60);
  state.chat.messages.push({ role: "user", content: text });
  el.prompt.value = "";
  grow();
  generate();
}

function grow() {
  el.prompt.style.height = "auto";
  el.prompt.style.height = `${el.prompt.scrollHeight + 2}px`;
}

// ---- settings and models -------------------------------------------------------------------------------------
function bindSettings() {
  const s = state.settings;
  const fields = [[el.system, "system"], [el.temperature, "temperature"], [el.topP, "top_p"],
    [el.maxTokens, "max_tokens"], [el.schema, "schema"]];
  for (const [input, key] of fields) {
    input.value = s[key];
    input.addEventListener("change", () => {
      s[key] = input.type === "number" && input.value !== "" ? Number(input.value) : input.value;
      store.saveSettings(s);
    });
  }
  el.model.addEventListener("change", () => { s.model = el.model.value; store.saveSettings(s); });
}

async function loadModels() {
  try {
    const list = await getJson("v1/models");
    el.model.replaceChildren();
    for (const card of list.data) {
      const option = document.createElement("option");
      option.value = card.id;
      option.textContent = card.parent ? `${card.id} (adapter)` : card.id;
      el.model.append(option);
    }
    const ids = list.data.map((c) => c.id);
    if (!ids.includes(state.settings.model)) state.settings.model = ids[0] || "";
    el.model.value = state.settings.model;
  } catch (e) {
    notice(`Could not list the models: ${e.message}`);
  }
}

async function loadStatus() {
  try {
    const status = await getJson("hearth/status");
    state.capture = Boolean(status.capture);
  } catch {
    state.capture = false; // an older server, or a key not given: no feedback buttons
  }
  el.captureNote.hidden = !state.capture;
}

// ---- start ---------------------------------------------------------------------------------------------------
$("composer").addEventListener("submit", (e) => { e.preventDefault(); submit(); });
el.prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); submit(); }
});
el.prompt.addEventListener("input", grow);
el.stop.addEventListener("click", stop);
document.addEventListener("keydown", (e) => { if (e.key === "Escape" && state.controller) stop(); });
$("new-chat").addEventListener("click", () => {
  const chat = store.newChat();
  state.chats.push(chat);
  persist();
  select(chat);
  el.prompt.focus();
});
$("export-all").addEventListener("click", () => store.download("hearth-chats.json", state.chats));
el.toggle.addEventListener("click", () => {
  const open = el.sidebar.classList.toggle("open");
  el.toggle.setAttribute("aria-expanded", open ? "true" : "false");
});
$("better-cancel").addEventListener("click", () => el.better.close(""));

bindSettings();
state.chat = state.chats.find((c) => c.id === store.currentId()) || null;
drawList();
drawMessages();
await Promise.all([loadModels(), loadStatus()]);
drawMessages(); // the feedback buttons, now that capture is known
performance.mark("hearth-ready");
document.documentElement.dataset.ready = "true"; // for tests and for measuring time to interactive
