// Model output -> HTML. The text is untrusted: whatever a model writes must not run in this page.
//  1. marked turns Markdown into HTML, with raw HTML in the text escaped (shown as text, never parsed as tags);
//  2. DOMPurify sanitizes the result (no script, no event handler attributes, links and images only to http(s),
//     mailto or this server), so a link such as [x](javascript:...) loses its href;
//  3. the page's Content-Security-Policy (hearth/server/pages.py) allows no inline script at all, should both fail.
// Code blocks are highlighted by highlight.js, loaded (with the one grammar needed) the first time a block asks.

import { Marked } from "./vendor/marked.esm.js";
import "./vendor/purify.min.js"; // a UMD build: it sets globalThis.DOMPurify

const DOMPurify = globalThis.DOMPurify;

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

const marked = new Marked({
  gfm: true,
  breaks: true,
  renderer: { html: ({ text }) => escapeHtml(text) },
});

const PURIFY = {
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "option", "iframe", "object", "embed",
    "svg", "math", "link", "meta", "base"],
  FORBID_ATTR: ["style", "srcset", "action", "formaction", "id", "name"],
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|#|\/(?!\/))/i, // no javascript:, data:, vbscript: ...
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

// the text as sanitized HTML
export function toHtml(text) {
  return DOMPurify.sanitize(marked.parse(text), PURIFY);
}

export function render(element, text) {
  element.innerHTML = toHtml(text);
  highlight(element);
}

// language names (and common aliases) of the grammars in vendor/highlight/languages
const GRAMMARS = {
  bash: "bash", sh: "bash", shell: "bash", zsh: "bash", console: "bash",
  c: "c", h: "c", cpp: "cpp", "c++": "cpp", cc: "cpp", hpp: "cpp", css: "css", diff: "diff", patch: "diff",
  go: "go", golang: "go", java: "java", javascript: "javascript", js: "javascript", jsx: "javascript",
  mjs: "javascript", json: "json", markdown: "markdown", md: "markdown", python: "python", py: "python",
  rust: "rust", rs: "rust", sql: "sql", typescript: "typescript", ts: "typescript", tsx: "typescript",
  xml: "xml", html: "xml", svg: "xml", yaml: "yaml", yml: "yaml",
};
let core = null;
const grammars = new Map();

async function grammar(name) {
  if (!core) {
    core = import("./vendor/highlight/core.min.js").then((m) => {
      m.default.configure({ ignoreUnescapedHTML: true });
      return m.default;
    });
  }
  if (!grammars.has(name)) {
    grammars.set(name, Promise.all([core, import(`./vendor/highlight/languages/${name}.min.js`)])
      .then(([hljs, lang]) => { hljs.registerLanguage(name, lang.default); return hljs; }));
  }
  return grammars.get(name);
}

export async function highlight(root) {
  for (const code of root.querySelectorAll("pre > code[class*='language-']")) {
    const asked = /language-(\S+)/.exec(code.className);
    const name = asked && GRAMMARS[asked[1].toLowerCase()];
    if (!name) continue;
    try {
      const hljs = await grammar(name);
      if (code.isConnected && !code.dataset.highlighted) hljs.highlightElement(code);
    } catch (e) {
      console.warn("highlighting failed", e);
    }
  }
}
