// The vilt page: pick or drop an image, ask a question, show the top answers and the word heatmaps.
// Plain browser JavaScript with no libraries; it talks only to the server that sent it.
"use strict";

const $ = (id) => document.getElementById(id);
const IMAGE_TYPES = ["image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp", "image/tiff"];
// `question` counts the questions asked: an answer that arrives for an older question, or for an image
// no longer chosen, is dropped, so a heatmap never lands on an image it was not made for.
const state = {
  file: null, previewUrl: null, question: 0, tasks: [], maxBytes: Infinity, keyRequired: false,
  examples: [], nextExample: 0,
};

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

function describeModel(card) {
  const answers = card.answers ? `, ${card.answers} answers` : "";
  const about = card.description ? ` ${card.description}` : "";
  return `Model: ${card.name} (${card.task}${answers}).${about}`;
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
    $("model").textContent = describeModel(ready.model_card);
    if (!state.tasks.includes("vqa")) {
      setStatus("This server's model does not answer questions (no VQA head).", true);
      return;
    }
    if (!state.tasks.includes("explain")) {
      $("heatmap-note").textContent = "Heatmaps are unavailable on this server.";
    }
    updateAskButton();
    await loadExamples();
  } catch (err) {
    $("model").textContent = "";
    setStatus(`Cannot reach the server: ${err.message}`, true);
  }
}

function updateAskButton() {
  $("ask").disabled = !(state.file && $("question").value.trim() && state.tasks.includes("vqa"));
}

// Forget the chosen image and everything shown for it.
function clearImage() {
  state.file = null;
  $("stage").hidden = true;
  $("drop-hint").hidden = false;
  $("file-name").hidden = true;
  $("preview").removeAttribute("src");
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = null;
  clearResults();
  updateAskButton();
}

function clearResults() {
  $("answers").replaceChildren();
  $("words").replaceChildren();
  $("overlay").hidden = true;
  $("overlay").removeAttribute("src");
  $("heatmap-note").textContent = state.tasks.includes("explain") || !state.tasks.length
    ? "Ask a question to see a heatmap for each of its words."
    : "Heatmaps are unavailable on this server.";
}

function chooseFile(file) {
  if (!file) return;
  clearImage();
  if (file.type && !IMAGE_TYPES.includes(file.type)) {
    setStatus(`${file.name} is not an image this server reads (${file.type}); pick a PNG, JPEG, GIF, BMP, WEBP or TIFF file.`, true);
    return;
  }
  if (file.size > state.maxBytes) {
    setStatus(`${file.name} is ${file.size} bytes; this server takes at most ${state.maxBytes}.`, true);
    return;
  }
  state.file = file;
  state.previewUrl = URL.createObjectURL(file);
  $("file-name").textContent = file.name;
  $("file-name").hidden = false;
  const preview = $("preview");
  preview.onload = () => {
    if (state.file !== file) return;
    $("stage").hidden = false;
    $("drop-hint").hidden = true;
  };
  preview.onerror = () => {
    if (state.file !== file) return;
    if (file.type === "image/tiff") {
      setStatus(`This browser cannot show ${file.name}, but the server reads TIFF: ask away.`);
      return;
    }
    clearImage();
    setStatus(`${file.name} could not be read as an image; it is damaged or not an image at all.`, true);
  };
  preview.src = state.previewUrl;
  setStatus("");
  updateAskButton();
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
      bar.setAttribute("aria-hidden", "true");
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
  const method = explanation.method === "ipot" ? "IPOT alignment" : "attention rollout";
  $("heatmap-note").textContent = `Click a word to see where the model looks for it (${method}).`;
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
  const file = state.file;
  const asked = ++state.question;
  const current = () => state.file === file && state.question === asked;
  const fields = { image: file, question };
  $("ask").disabled = true;
  clearResults();
  setStatus("Thinking…");
  try {
    const { answers } = await post("/v1/vqa", formOf({ ...fields, top_k: "5" }));
    if (!current()) return;
    showAnswers(answers);
    setStatus(`Best answer: ${answers[0].answer}`);
    if (state.tasks.includes("explain")) {
      $("heatmap-note").textContent = "Making the heatmaps…";
      const explanation = await post("/v1/explain", formOf({ ...fields, method: $("method").value }));
      if (current()) showHeatmaps(explanation);
    }
  } catch (err) {
    if (current()) setStatus(err.message, true);
  } finally {
    updateAskButton();
  }
}

// The samples the server ships (/samples/examples.json): each click of "Try an example" chooses the next
// one's image, types its question and asks it.
async function loadExamples() {
  try {
    const response = await fetch("/samples/examples.json");
    if (!response.ok) return;
    state.examples = await response.json();
    $("try-example").disabled = state.examples.length === 0;
  } catch (err) {
    state.examples = [];  // no samples: the button stays disabled
  }
}

async function tryExample() {
  const example = state.examples[state.nextExample % state.examples.length];
  state.nextExample += 1;
  $("try-example").disabled = true;
  try {
    const response = await fetch(`/samples/${encodeURIComponent(example.image)}`);
    if (!response.ok) throw new Error(`the server answered ${response.status}`);
    const blob = await response.blob();
    chooseFile(new File([blob], example.image, { type: blob.type }));
    $("question").value = example.question;
    updateAskButton();
    $("ask-form").requestSubmit();
  } catch (err) {
    setStatus(`Cannot load the example ${example.image}: ${err.message}`, true);
  } finally {
    $("try-example").disabled = false;
  }
}

$("try-example").addEventListener("click", tryExample);
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
    $("question").focus();
    updateAskButton();
  })
);
$("ask-form").addEventListener("submit", ask);
connect();
