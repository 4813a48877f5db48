// The chat page: conversations in this browser, answers streamed from POST v1/chat/completions (server-sent events),
// as any OpenAI client gets them. Stop aborts the fetch; the server sees the connection close and aborts the
// engine request, which frees its KV cache blocks.

import { api, ApiError, errorMessage, getJson } from "./api.js";
import { render } from "./render.js";
import * as store from "./store.js";

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
  renaming: null, // id of the conversation whose name is being edited
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

function button(label, onClick, { className = "small", title } = {}) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = label;
  if (title) b.setAttribute("aria-label", title);
  b.addEventListener("click", onClick);
  return b;
}

// ---- side bar ------------------------------------------------------------------------------------------------
function drawList() {
  el.list.replaceChildren();
  for (const chat of [...state.chats].sort((a, b) => b.updated - a.updated)) {
    const li = document.createElement("li");
    const current = chat === state.chat;
    li.classList.toggle("current", current);
    if (state.renaming === chat.id) {
      const input = document.createElement("input");
      input.value = chat.title;
      input.setAttribute("aria-label", "Conversation name");
      const done = (keep) => {
        if (keep && input.value.trim()) chat.title = input.value.trim().slice(0, 200);
        state.renaming = null;
        persist();
        drawList();
      };
      input.addEventListener("keydown", (e) => {
        if (e.key === "Enter") done(true);
        if (e.key === "Escape") { e.stopPropagation(); done(false); }
      });
      input.addEventListener("blur", () => state.renaming === chat.id && done(true));
      li.append(input);
      el.list.append(li);
      input.focus();
      input.select();
      continue;
    }
    const open = button(chat.title, () => select(chat), { className: "open" });
    if (current) open.setAttribute("aria-current", "true");
    li.append(open);
    if (current) {
      const tools = document.createElement("div");
      tools.className = "tools";
      tools.append(
        button("Rename", () => { state.renaming = chat.id; drawList(); }, { title: `Rename ${chat.title}` }),
        button("Export", () => store.download(`hearth-chat-${chat.id.slice(0, 8)}.json`, chat),
          { title: `Export ${chat.title} as JSON` }),
        deleteButton(chat));
      li.append(tools);
    }
    el.list.append(li);
  }
}

function deleteButton(chat) {
  const b = button("Delete", () => {
    if (b.dataset.armed !== "yes") { // a second click deletes: no native confirm dialog
      b.dataset.armed = "yes";
      b.textContent = "Delete? Click again";
      setTimeout(() => { b.dataset.armed = ""; b.textContent = "Delete"; }, 4000);
      return;
    }
    state.chats = state.chats.filter((c) => c !== chat);
    persist();
    select(state.chats.sort((a, c) => c.updated - a.updated)[0] || null);
  }, { title: `Delete ${chat.title}` });
  return b;
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
    if (state.capture && m.completion_id) {
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
function request() {
  const s = state.settings;
  const messages = [];
  if (s.system.trim()) messages.push({ role: "system", content: s.system });
  for (const m of state.chat.messages) {
    if (m.role === "assistant" && (m.error || !m.content)) continue;
    messages.push({ role: m.role, content: m.content });
  }
  const body = { messages, stream: true, stream_options: { include_usage: true } };
  for (const key of ["temperature", "top_p", "max_tokens"]) {
    if (s[key] !== "" && s[key] != null && Number.isFinite(Number(s[key]))) body[key] = Number(s[key]);
  }
  if (body.max_tokens !== undefined) body.max_tokens = Math.trunc(body.max_tokens);
  if (s.model) body.model = s.model;
  if (s.schema.trim()) {
    body.response_format = { type: "json_schema", json_schema: { name: "answer", schema: JSON.parse(s.schema) } };
  }
  if (state.capture) body.store = true; // kept on the server, so that it can be rated
  return body;
}

// the data of each server-sent event of a response body
async function* events(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    for (let end; (end = buffer.indexOf("\n\n")) >= 0;) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart());
      if (data.length) yield data.join("\n");
    }
  }
}

async function generate() {
  let body;
  try {
    body = request();
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
  const started = performance.now();
  let first = null;
  let usage = null;
  let pending = false;
  const paint = () => {
    pending = false;
    const follow = el.messages.scrollHeight - el.messages.scrollTop - el.messages.clientHeight < 80;
    fillAnswer(node, answer);
    if (follow) el.messages.scrollTop = el.messages.scrollHeight;
  };
  try {
    const res = await api("v1/chat/completions", { method: "POST", json: body, signal: controller.signal });
    if (!res.ok) throw new ApiError(res.status, await errorMessage(res));
    for await (const data of events(res.body)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) { answer.error = chunk.error.message; continue; }
      if (chunk.id) answer.completion_id = chunk.id;
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) continue;
      if (choice.delta && choice.delta.content) {
        if (first === null) first = performance.now();
        answer.content += choice.delta.content;
        answer.chunks = (answer.chunks || 0) + 1;
        if (!pending) { pending = true; requestAnimationFrame(paint); }
      }
      if (choice.finish_reason) answer.finish = choice.finish_reason;
    }
    if (controller.signal.aborted) answer.finish = "stopped";
  } catch (e) {
    if (e.name === "AbortError" || controller.signal.aborted) answer.finish = "stopped";
    else answer.error = e instanceof ApiError ? e.message : `The request failed: ${e.message}`;
  } finally {
    const ended = performance.now();
    const tokens = usage ? usage.completion_tokens : answer.chunks || 0;
    answer.stats = {
      ttft_ms: first === null ? null : first - started,
      tokens,
      tokens_per_s: first !== null && ended - first > 0 && tokens > 1 ? (tokens - 1) / ((ended - first) / 1000) : null,
    };
    delete answer.streaming;
    delete answer.chunks;
    if (state.controller === controller) state.controller = null;
    busy(false);
    persist();
    if (state.chat === chat) redraw(index);
    drawList();
  }
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
