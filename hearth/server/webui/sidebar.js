// The side bar's list: this browser's conversations, newest first; the open one can be renamed (in place),
// exported as JSON and deleted (a second click confirms: no native dialog).

import { download } from "./store.js";

export function button(label, onClick, { className = "small", title } = {}) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = label;
  if (title) b.setAttribute("aria-label", title);
  b.addEventListener("click", onClick);
  return b;
}

// Draws `chats` into the list `ul`. `on`: open(chat), rename(chat, title or null when cancelled), remove(chat).
export function drawList(ul, chats, current, on, renaming = null) {
  const redraw = (editing) => drawList(ul, chats, current, on, editing);
  ul.replaceChildren();
  for (const chat of [...chats].sort((a, b) => b.updated - a.updated)) {
    const li = document.createElement("li");
    li.classList.toggle("current", chat === current);
    ul.append(li);
    if (renaming === chat) {
      li.append(nameInput(chat, on));
      continue;
    }
    const open = button(chat.title, () => on.open(chat), { className: "open" });
    li.append(open);
    if (chat !== current) continue;
    open.setAttribute("aria-current", "true");
    const tools = document.createElement("div");
    tools.className = "tools";
    tools.append(
      button("Rename", () => redraw(chat), { title: `Rename ${chat.title}` }),
      button("Export", () => download(`hearth-chat-${chat.id.slice(0, 8)}.json`, chat),
        { title: `Export ${chat.title} as JSON` }),
      deleteButton(chat, on));
    li.append(tools);
  }
  const input = ul.querySelector("input");
  if (input) { input.focus(); input.select(); }
}

function nameInput(chat, on) {
  const input = document.createElement("input");
  input.value = chat.title;
  input.setAttribute("aria-label", "Conversation name");
  let done = false;
  const finish = (keep) => {
    if (done) return;
    done = true;
    on.rename(chat, keep && input.value.trim() ? input.value.trim().slice(0, 200) : null);
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") finish(true);
    if (e.key === "Escape") { e.stopPropagation(); finish(false); }
  });
  input.addEventListener("blur", () => finish(true));
  return input;
}

function deleteButton(chat, on) {
  const b = button("Delete", () => {
    if (b.dataset.armed !== "yes") {
      b.dataset.armed = "yes";
      b.textContent = "Delete? Click again";
      setTimeout(() => { b.dataset.armed = ""; b.textContent = "Delete"; }, 4000);
      return;
    }
    on.remove(chat);
  }, { title: `Delete ${chat.title}` });
  return b;
}
