// One chat answer, streamed: the request body from the page's settings, POST v1/chat/completions with
// stream: true, its server-sent events read as they come, and the answer's numbers (time to first token, tokens/s).

import { api, ApiError, errorMessage } from "./api.js";

// The request for `messages` (the conversation so far) under `settings` (store.js); throws SyntaxError when the
// JSON schema is not JSON. A number left empty is not sent (the server's default). `store`: the server captures.
export function chatRequest(messages, settings, store) {
  const s = settings;
  const sent = [];
  if (s.system.trim()) sent.push({ role: "system", content: s.system });
  for (const m of messages) {
    if (m.role === "assistant" && (m.error || !m.content)) continue; // a failed or empty answer is not context
    sent.push({ role: m.role, content: m.content });
  }
  const body = { messages: sent, stream: true, stream_options: { include_usage: true } };
  for (const key of ["temperature", "top_p", "max_tokens"]) {
    if (s[key] !== "" && s[key] != null && Number.isFinite(Number(s[key]))) body[key] = Number(s[key]);
  }
  if (body.max_tokens !== undefined) body.max_tokens = Math.trunc(body.max_tokens);
  if (s.model) body.model = s.model;
  if (s.schema.trim()) {
    body.response_format = { type: "json_schema", json_schema: { name: "answer", schema: JSON.parse(s.schema) } };
  }
  if (store) body.store = true; // kept on the server, so that it can be rated (POST v1/feedback)
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

// Streams the answer to `body`, calling onText(text so far) as pieces arrive. Resolves (never rejects) to
// {content, completion_id, finish, error, stats: {ttft_ms, tokens, tokens_per_s}}; aborting `signal` (Stop) ends
// it with finish "stopped": the fetch is cancelled, the server sees the connection close and aborts the request.
export async function streamChat(body, signal, onText) {
  const out = { content: "", completion_id: null, finish: null, error: null };
  const started = performance.now();
  let first = null, usage = null, pieces = 0;
  try {
    const res = await api("v1/chat/completions", { method: "POST", json: body, signal });
    if (!res.ok) throw new ApiError(res.status, await errorMessage(res));
    for await (const data of events(res.body)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) { out.error = chunk.error.message; continue; } // an error after the stream began
      if (chunk.id) out.completion_id = chunk.id;
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) continue;
      if (choice.delta && choice.delta.content) {
        if (first === null) first = performance.now();
        out.content += choice.delta.content;
        pieces += 1;
        onText(out.content);
      }
      if (choice.finish_reason) out.finish = choice.finish_reason;
    }
    if (signal.aborted) out.finish = "stopped";
  } catch (e) {
    if (e.name === "AbortError" || signal.aborted) out.finish = "stopped";
    else out.error = e instanceof ApiError ? e.message : `The request failed: ${e.message}`;
  }
  const ended = performance.now();
  const tokens = usage ? usage.completion_tokens : pieces; // a stopped stream has no usage: its pieces
  out.stats = {
    ttft_ms: first === null ? null : first - started,
    tokens,
    // decoding speed: the tokens after the first over the time after it
    tokens_per_s: first !== null && ended > first && tokens > 1 ? (tokens - 1) / ((ended - first) / 1000) : null,
  };
  return out;
}
