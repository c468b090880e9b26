// The playground (serving/playground.py): chat, RAG and search against this server's public API.
// Plain JavaScript, no build step. Model output is only ever set as text (textContent), never parsed as HTML.

const $ = (id) => document.getElementById(id);

const state = {
  key: null, // the API key, when the server wants one: in memory only
  history: [], // the chat so far, as OpenAI messages
  busy: null, // the AbortController of the request running now, if any
};

// ---- the API -------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message, code = null, param = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.param = param;
  }

  static async of(response) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      // not JSON: a proxy's page, say; the status line is all there is
    }
    const e = (body && body.error) || {};
    const message = e.message || `${response.status} ${response.statusText}`.trim();
    return new ApiError(response.status, message, e.code || e.type || null, e.param || null);
  }
}

async function api(path, body = null, signal = undefined) {
  const headers = { "Content-Type": "application/json" };
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  let response;
  try {
    response = await fetch(`/v1/${path}`, {
      method: body === null ? "GET" : "POST",
      headers,
      body: body === null ? undefined : JSON.stringify(body),
      signal,
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, `the server did not answer (${e.message}); is it running?`);
  }
  if (!response.ok) {
    const error = await ApiError.of(response);
    if (error.status === 401) askForKey();
    throw error;
  }
  return response;
}

// Server-sent events as parsed objects; an error event mid-stream (the status was already 200) throws.
async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      const event = JSON.parse(data);
      if (event.error) throw new ApiError(500, event.error.message, event.error.code || event.error.type);
      yield event;
    }
  }
}

// ---- what the page shows around the work -----------------------------------------------------------------

function showError(error) {
  const box = $("error");
  const where = error.param ? ` (parameter: ${error.param})` : "";
  const status = error.status ? `${error.status}: ` : "";
  box.textContent = `${status}${error.message}${where}`;
  box.dataset.status = String(error.status ?? "");
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function askForKey() {
  if (!$("key-form").hidden) return;
  $("key-form").hidden = false;
  $("api-key").focus();
}

function element(tag, text = null, className = null) {
  const node = document.createElement(tag);
  if (text !== null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

async function refreshStatus() {
  const health = $("health");
  let status;
  try {
    status = await (await api("status")).json();
  } catch (e) {
    health.dataset.state = "unknown";
    health.textContent = e.status === 401 ? "the server wants an API key" : `status unavailable: ${e.message}`;
    return;
  }
  const sick = Object.entries(status.engines).filter(([, engine]) => !engine.healthy);
  health.dataset.state = status.ready ? "ready" : "not-ready";
  health.textContent = status.ready ? "ready" : `not ready: ${status.reason || "starting"}`;
  if (sick.length) health.textContent += ` (unhealthy: ${sick.map(([n, e]) => `${n}: ${e.reason}`).join("; ")})`;

  const served = $("served");
  served.replaceChildren();
  const add = (term, detail) => {
    served.append(element("dt", term), element("dd", detail));
  };
  for (const [role, m] of Object.entries(status.models)) {
    const cached = m.from_cache_only ? ", from the local cache (registry unreachable)" : "";
    add(role, `${m.name} v${m.version} @${m.alias}${cached}`);
  }
  add("index", status.index);
  const reranked = status.reranker ? ", reranked" : "";
  add("retrieval", `${status.search_mode}${reranked}, chunks ${status.chunking}`);
  if (status.abstain_below !== null) $("rag-min-score").placeholder = `served: ${status.abstain_below.toFixed(2)}`;
}

// ---- settings ---------------------------------------------------------------------------------------------

function number(id) {
  const raw = $(id).value.trim();
  return raw === "" ? undefined : Number(raw);
}

function choice(id) {
  return $(id).value || undefined;
}

// Start a request the Stop buttons can cancel: aborting the fetch closes the connection, and the server
// cancels the generation and frees its slot.
function begin(stopButton, sendButton) {
  clearError();
  state.busy = new AbortController();
  stopButton.disabled = false;
  sendButton.disabled = true;
  return state.busy.signal;
}

function finish(stopButton, sendButton) {
  state.busy = null;
  stopButton.disabled = true;
  sendButton.disabled = false;
}

function stop() {
  if (state.busy) state.busy.abort();
}

// ---- chat --------------------------------------------------------------------------------------------------

function bubble(role, text) {
  const item = element("li", null, `turn ${role}`);
  item.append(element("span", role, "role"), element("div", text, "text"));
  $("transcript").append(item);
  return item;
}

async function sendChat(event) {
  event.preventDefault();
  const content = $("chat-input").value.trim();
  if (!content || state.busy) return;
  const signal = begin($("chat-stop"), $("chat-send"));
  $("chat-input").value = "";
  bubble("user", content);
  state.history.push({ role: "user", content });
  const system = $("system").value.trim();
  const messages = system ? [{ role: "system", content: system }, ...state.history] : [...state.history];
  const reply = bubble("assistant", "");
  const text = reply.querySelector(".text");
  const meta = reply.appendChild(element("p", "", "meta"));
  reply.dataset.state = "streaming";
  reply.dataset.deltas = "0";
  let finishReason = null;
  let usage = null;
  try {
    const response = await api(
      "chat/completions",
      {
        model: "chat",
        messages,
        stream: true,
        stream_options: { include_usage: true },
        max_tokens: number("max-tokens"),
        temperature: number("temperature"),
        top_p: number("top-p"),
      },
      signal,
    );
    for await (const chunk of events(response)) {
      if (chunk.usage) usage = chunk.usage;
      const choice0 = chunk.choices && chunk.choices[0];
      if (!choice0) continue;
      if (choice0.delta && choice0.delta.content) {
        text.textContent += choice0.delta.content;
        reply.dataset.deltas = String(Number(reply.dataset.deltas) + 1);
        reply.scrollIntoView({ block: "end" });
      }
      if (choice0.finish_reason) finishReason = choice0.finish_reason;
    }
    reply.dataset.state = "done";
    const tokens = usage ? `${usage.completion_tokens} tokens, ` : "";
    meta.textContent = `${tokens}finished: ${finishReason || "?"}`;
    state.history.push({ role: "assistant", content: text.textContent });
  } catch (e) {
    if (e.name === "AbortError") {
      reply.dataset.state = "stopped";
      meta.textContent = "stopped";
      state.history.push({ role: "assistant", content: text.textContent });
    } else {
      reply.dataset.state = "failed";
      meta.textContent = "failed";
      state.history.pop(); // the question was not answered: it can be sent again
      showError(e);
    }
  } finally {
    finish($("chat-stop"), $("chat-send"));
  }
}

// ---- RAG ---------------------------------------------------------------------------------------------------

// The answer's text with each [n] a link to source n; built from text nodes, so the model cannot inject markup.
function renderCited(target, text, known) {
  target.replaceChildren();
  let last = 0;
  for (const match of text.matchAll(/\[(\d+)\]/g)) {
    target.append(document.createTextNode(text.slice(last, match.index)));
    const n = Number(match[1]);
    if (known.has(n)) {
      const link = element("a", match[0], "cite");
      link.href = `#source-${n}`;
      target.append(link);
    } else {
      target.append(document.createTextNode(match[0]));
    }
    last = match.index + match[0].length;
  }
  target.append(document.createTextNode(text.slice(last)));
}

function sourceItem(hit, number = null) {
  const item = element("li", null, "source");
  if (number !== null) {
    item.id = `source-${number}`;
    item.dataset.number = String(number);
  }
  const head = element("div", null, "head");
  if (number !== null) head.append(element("span", `[${number}]`, "number"));
  head.append(element("span", hit.source || hit.id, "path"));
  const heading = hit.heading || (hit.metadata && hit.metadata.heading);
  if (heading) head.append(element("span", heading, "heading"));
  head.append(element("span", `score ${Number(hit.score).toFixed(3)}`, "score"));
  const body = element("details", null, "chunk");
  body.append(element("summary", "text"), element("pre", hit.text));
  item.append(head, body);
  return item;
}

async function sendRag(event) {
  event.preventDefault();
  const question = $("rag-question").value.trim();
  if (!question || state.busy) return;
  const signal = begin($("rag-stop"), $("rag-send"));
  const answer = $("rag-answer");
  const sources = $("rag-sources");
  answer.replaceChildren();
  sources.replaceChildren();
  $("rag-meta").textContent = "retrieving…";
  $("rag-sources-title").hidden = true;
  answer.dataset.state = "streaming";
  let text = "";
  let known = new Set();
  try {
    const response = await api(
      "rag",
      {
        question,
        stream: true,
        mode: choice("rag-mode"),
        min_score: number("rag-min-score"),
        max_tokens: number("max-tokens"),
        temperature: number("temperature"),
      },
      signal,
    );
    for await (const piece of events(response)) {
      if (piece.sources) {
        known = new Set(piece.sources.map((s) => s.number));
        sources.replaceChildren(...piece.sources.map((s) => sourceItem(s, s.number)));
        $("rag-sources-title").hidden = piece.sources.length === 0;
        $("rag-meta").textContent = "answering…";
      }
      if (piece.delta) {
        text += piece.delta;
        renderCited(answer, text, known);
      }
      if (piece.finish_reason) {
        for (const n of piece.citations) {
          const cited = $(`source-${n}`);
          if (cited) cited.classList.add("cited");
        }
        const cites = piece.citations.length ? `cites ${piece.citations.map((n) => `[${n}]`).join(" ")}` : "no citations";
        const abstained = piece.abstained ? "nothing relevant found; " : "";
        $("rag-meta").textContent =
          `${abstained}${cites}; ${piece.usage.completion_tokens} tokens, finished: ${piece.finish_reason}`;
      }
    }
    answer.dataset.state = "done";
  } catch (e) {
    if (e.name === "AbortError") {
      answer.dataset.state = "stopped";
      $("rag-meta").textContent = "stopped";
    } else {
      answer.dataset.state = "failed";
      $("rag-meta").textContent = "failed";
      showError(e);
    }
  } finally {
    finish($("rag-stop"), $("rag-send"));
  }
}

// ---- search ------------------------------------------------------------------------------------------------

async function sendSearch(event) {
  event.preventDefault();
  const query = $("search-query").value.trim();
  if (!query) return;
  clearError();
  const results = $("search-results");
  results.replaceChildren();
  $("search-meta").textContent = "searching…";
  const rerank = choice("search-rerank");
  try {
    const found = await (
      await api("search", {
        query,
        top_k: number("search-top-k"),
        mode: choice("search-mode"),
        rerank: rerank === undefined ? undefined : rerank === "true",
      })
    ).json();
    results.replaceChildren(...found.results.map((hit) => sourceItem(hit)));
    const reranked = found.reranked ? ", reranked" : "";
    $("search-meta").textContent = `${found.results.length} results, mode ${found.mode}${reranked}`;
    $("search-meta").dataset.mode = found.mode;
  } catch (e) {
    $("search-meta").textContent = "failed";
    showError(e);
  }
}

// ---- wiring ------------------------------------------------------------------------------------------------

function selectMode(mode) {
  for (const tab of document.querySelectorAll("#modes [data-mode]")) {
    tab.setAttribute("aria-selected", String(tab.dataset.mode === mode));
  }
  for (const panel of document.querySelectorAll("[data-panel]")) panel.hidden = panel.dataset.panel !== mode;
  $("settings").hidden = mode === "search";
}

function wire() {
  for (const tab of document.querySelectorAll("#modes [data-mode]")) {
    tab.addEventListener("click", () => selectMode(tab.dataset.mode));
  }
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("api-key").value.trim() || null;
    $("api-key").value = "";
    $("key-form").hidden = true;
    clearError();
    refreshStatus();
  });
  $("chat-form").addEventListener("submit", sendChat);
  $("chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("chat-form").requestSubmit();
    }
  });
  $("chat-stop").addEventListener("click", stop);
  $("chat-clear").addEventListener("click", () => {
    stop();
    state.history = [];
    $("transcript").replaceChildren();
  });
  $("rag-form").addEventListener("submit", sendRag);
  $("rag-stop").addEventListener("click", stop);
  $("search-form").addEventListener("submit", sendSearch);
  refreshStatus();
  setInterval(refreshStatus, 10000);
}

wire();
