// The vilt page: pick or drop an image, ask a question, show the top answers and the word heatmaps.
// Plain browser JavaScript with no libraries; it talks only to the server that sent it.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, tasks: [], maxBytes: Infinity, keyRequired: false };

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function headers() {
  const key = $("api-key").value;
  return state.keyRequired && key ? { "X-API-Key": key } : {};
}

// POST a form to the API; resolve to the JSON answer or throw the server's error message.
async function post(path, form) {
  const response = await fetch(path, { method: "POST", body: form, headers: headers() });
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    throw new Error(`the server answered ${response.status} without JSON`);
  }
  if (!response.ok) throw new Error(body.error || `the server answered ${response.status}`);
  return body;
}

async function connect() {
  try {
    const response = await fetch("/readyz");
    const ready = await response.json();
    if (!response.ok) throw new Error(ready.error || "the server is not ready");
    state.tasks = ready.tasks;
    state.maxBytes = ready.limits.max_body_bytes;
    state.keyRequired = ready.api_key_required;
    $("key-row").hidden = !state.keyRequired;
    $("model").textContent = `Model: ${ready.model}.`;
    if (!state.tasks.includes("vqa")) {
      setStatus("This server's model does not answer questions (no VQA head).", true);
      return;
    }
    if (!state.tasks.includes("explain")) {
      $("heatmap-note").textContent = "Heatmaps are unavailable on this server.";
    }
    updateAskButton();
  } catch (err) {
    $("model").textContent = "";
    setStatus(`Cannot reach the server: ${err.message}`, true);
  }
}

function updateAskButton() {
  $("ask").disabled = !(state.file && $("question").value.trim() && state.tasks.includes("vqa"));
}

function chooseFile(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) {
    setStatus(`${file.name} is not an image.`, true);
    return;
  }
  if (file.size > state.maxBytes) {
    setStatus(`${file.name} is ${file.size} bytes; this server takes at most ${state.maxBytes}.`, true);
    return;
  }
  state.file = file;
  $("preview").src = URL.createObjectURL(file);
  document.querySelector(".stage").hidden = false;
  $("drop-hint").hidden = true;
  clearResults();
  setStatus("");
  updateAskButton();
}

function clearResults() {
  $("answers").replaceChildren();
  $("words").replaceChildren();
  $("overlay").hidden = true;
}

function showAnswers(answers) {
  $("answers").replaceChildren(
    ...answers.map(({ answer, score }) => {
      const item = document.createElement("li");
      const name = document.createElement("span");
      name.className = "answer";
      name.textContent = answer;
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.setProperty("--score", score.toFixed(4));
      const value = document.createElement("span");
      value.className = "score";
      value.textContent = score.toFixed(3);
      item.append(name, bar, value);
      return item;
    })
  );
}

function showHeatmaps(explanation) {
  const buttons = explanation.words.map((word, index) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "word";
    button.textContent = word;
    button.addEventListener("click", () => selectWord(buttons, index, explanation.heatmaps[index]));
    return button;
  });
  $("words").replaceChildren(...buttons);
  $("heatmap-note").textContent = "Click a word to see where the model looks for it.";
  const last = explanation.words.findLastIndex((word) => /\w/.test(word));
  if (last >= 0) selectWord(buttons, last, explanation.heatmaps[last]);
}

function selectWord(buttons, index, heatmap) {
  buttons.forEach((button, i) => button.setAttribute("aria-pressed", String(i === index)));
  $("overlay").src = heatmap;
  $("overlay").hidden = false;
}

function formOf(fields) {
  const form = new FormData();
  Object.entries(fields).forEach(([name, value]) => form.append(name, value));
  return form;
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!state.file || !question) return;
  const fields = { image: state.file, question };
  $("ask").disabled = true;
  clearResults();
  setStatus("Thinking…");
  try {
    const { answers } = await post("/v1/vqa", formOf({ ...fields, top_k: "5" }));
    showAnswers(answers);
    setStatus(`Best answer: ${answers[0].answer}`);
    if (state.tasks.includes("explain")) showHeatmaps(await post("/v1/explain", formOf(fields)));
  } catch (err) {
    setStatus(err.message, true);
  } finally {
    updateAskButton();
  }
}

$("file").addEventListener("change", (event) => chooseFile(event.target.files[0]));
$("drop").addEventListener("dragover", (event) => {
  event.preventDefault();
  $("drop").classList.add("dragging");
});
$("drop").addEventListener("dragleave", () => $("drop").classList.remove("dragging"));
$("drop").addEventListener("drop", (event) => {
  event.preventDefault();
  $("drop").classList.remove("dragging");
  chooseFile(event.dataTransfer.files[0]);
});
$("question").addEventListener("input", updateAskButton);
document.querySelectorAll(".example").forEach((button) =>
  button.addEventListener("click", () => {
    $("question").value = button.textContent;
    updateAskButton();
  })
);
$("ask-form").addEventListener("submit", ask);
connect();
