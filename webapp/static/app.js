// The few things done in the browser: live length estimate, upload size check, and polling
// the JSON endpoints while stories render. Everything works without it, minus the live parts.
"use strict";

const RENDERING = new Set(["queued", "running"]);

function duration(seconds) {
  const whole = Math.round(seconds);
  return whole < 60 ? `${whole} s` : `${Math.floor(whole / 60)} min ${whole % 60} s`;
}

function setUpEstimate(text) {
  const out = document.getElementById("estimate");
  const rate = Number(text.dataset.wordsPerSecond);
  const cards = Number(text.dataset.intro) + Number(text.dataset.outro);
  const update = () => {
    const words = text.value.split(/\s+/).filter(Boolean).length;
    out.textContent = words
      ? `Video about ${duration(words / rate + cards)} (${words} words, read at ${rate.toFixed(1)} words/s, with the intro and outro cards)`
      : "No text yet";
  };
  text.addEventListener("input", update);
  update();
}

function setUpIdSuggestion(title, storyId) {
  if (storyId.readOnly) return;
  const update = () => {
    const slug = title.value.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "");
    storyId.placeholder = slug.slice(0, 63).replace(/-+$/, "") || "from the title";
  };
  title.addEventListener("input", update);
  update();
}

function setUpUploadCheck(form, input) {
  const limit = Number(form.dataset.maxUpload);
  const error = document.getElementById("upload-error");
  input.addEventListener("change", () => {
    const total = Array.from(input.files).reduce((sum, file) => sum + file.size, 0);
    error.hidden = total <= limit;
    if (total > limit) {
      error.textContent = `The chosen files are ${(total / 1048576).toFixed(1)} MB; at most ${(limit / 1048576).toFixed(1)} MB can be uploaded per save.`;
      input.value = "";
    }
  });
}

async function fetchJson(url) {
  const answer = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
  if (!answer.ok) throw new Error(`${url}: ${answer.status}`);
  return answer.json();
}

function showState(element, entry) {
  element.textContent = entry.label;
  element.className = `state ${entry.state}`;
}

function pollList(table) {
  const tick = async () => {
    let rendering = false;
    try {
      const { stories } = await fetchJson(table.dataset.poll);
      for (const entry of stories) {
        const row = table.querySelector(`tr[data-story="${CSS.escape(entry.id)}"]`);
        if (!row) { window.location.reload(); return; }
        showState(row.querySelector('[data-field="label"]'), entry);
        row.querySelector('[data-field="changed"]').hidden = !entry.changed;
        row.querySelector('[data-field="updated"]').textContent = entry.updated;
        rendering ||= RENDERING.has(entry.state);
      }
    } catch (error) {
      console.warn(error);
    }
    setTimeout(tick, rendering ? 2000 : 15000);
  };
  setTimeout(tick, 2000);
}

function pollStory(status) {
  if (!RENDERING.has(status.dataset.state)) return;
  const tick = async () => {
    try {
      const entry = await fetchJson(status.dataset.pollStory);
      if (entry.state !== status.dataset.state) { window.location.reload(); return; }
      showState(document.getElementById("state"), entry);
    } catch (error) {
      console.warn(error);
    }
    setTimeout(tick, 2000);
  };
  setTimeout(tick, 2000);
}

document.addEventListener("DOMContentLoaded", () => {
  const text = document.getElementById("text");
  if (text) setUpEstimate(text);
  const title = document.getElementById("title");
  const storyId = document.getElementById("story_id");
  if (title && storyId) setUpIdSuggestion(title, storyId);
  const form = document.querySelector("form.editor");
  const upload = document.getElementById("upload");
  if (form && upload) setUpUploadCheck(form, upload);
  const table = document.querySelector("table[data-poll]");
  if (table) pollList(table);
  const status = document.querySelector("[data-poll-story]");
  if (status) pollStory(status);
});
