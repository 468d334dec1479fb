// voxloop playground: a voice conversation over /ws/agent and a streaming TTS panel over /ws/tts.
// Plain ES module, no build step: everything it needs is served by voxloop itself.

const ALLOWED_RATES = [8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000];
const TTS_RATE = 44100; // /ws/tts always streams S16LE at 44.1 kHz
const $ = (id) => document.getElementById(id);

// Read by tests (and handy in the console): seconds of audio the speakers actually played.
const stats = { audioPlayedSeconds: 0, ttsPlayedSeconds: 0 };
window.voxloop = stats;

// ---- API key, errors, REST ------------------------------------------------------------------

const keyInput = $("api-key");
const urlKey = new URLSearchParams(location.search).get("api_key");
keyInput.value = urlKey ?? localStorage.getItem("voxloop.apiKey") ?? "";
if (urlKey) localStorage.setItem("voxloop.apiKey", urlKey);
keyInput.addEventListener("change", () => {
  localStorage.setItem("voxloop.apiKey", keyInput.value);
  loadCatalogue();
});

function showError(message) {
  $("error").textContent = message ?? "";
  $("error").hidden = !message;
}

function socketUrl(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  // Browsers cannot set headers on a WebSocket, so the key travels as a query parameter.
  return `${scheme}//${location.host}${path}?api_key=${encodeURIComponent(keyInput.value)}`;
}

async function getJson(path) {
  const response = await fetch(path, { headers: { "X-API-Key": keyInput.value } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(`${path}: ${body.error?.message ?? response.statusText}`);
  return body;
}

const ms = (value) => (value == null ? "–" : `${Math.round(value)} ms`);

// ---- voices and languages -------------------------------------------------------------------

let voices = [];
const languageNames = new Intl.DisplayNames(["en"], { type: "language" });

function fillSelect(select, options, preferred) {
  const keep = select.value || preferred;
  select.replaceChildren(...options.map(([value, label]) => new Option(label, value)));
  if (options.some(([value]) => value === keep)) select.value = keep;
}

function fillVoices(select, language) {
  // Lokutor-style voices map every language to a voice ({lang: id}); engine voices list theirs.
  const fits = (v) => (Array.isArray(v.languages) ? v.languages.includes(language) : language in v.languages);
  const label = (v) => (v.engine ? `${v.name} (${v.engine})` : `${v.id} – ${v.name}`);
  fillSelect(select, voices.filter(fits).map((v) => [v.id, label(v)]), "F1");
}

async function loadCatalogue() {
  try {
    const [voiceList, languageList] = await Promise.all([getJson("/voices"), getJson("/languages")]);
    voices = voiceList.voices;
    const languages = languageList.languages.map(({ code }) => [code, `${languageNames.of(code)} (${code})`]);
    for (const [languageSelect, voiceSelect] of [["language", "voice"], ["tts-lang", "tts-voice"]]) {
      fillSelect($(languageSelect), languages, "en");
      fillVoices($(voiceSelect), $(languageSelect).value);
    }
    showError(null);
  } catch (error) {
    showError(`Could not load voices: ${error.message}. Check the API key.`);
  }
}

// ---- audio ----------------------------------------------------------------------------------

async function audioContext(options) {
  if (!window.isSecureContext) {
    // Browsers hide the microphone and AudioWorklet from plain-http pages other than localhost.
    throw new Error("audio needs https or localhost (an SSH tunnel to the server works)");
  }
  const context = new AudioContext(options);
  await context.audioWorklet.addModule(new URL("mic-worklet.js", import.meta.url));
  await context.audioWorklet.addModule(new URL("player-worklet.js", import.meta.url));
  await context.resume(); // created from a click, so the autoplay policy allows it
  return context;
}

// Plays S16LE chunks at the context's rate through the player worklet; clear() stops at once.
class Player {
  constructor(context, onPlayed) {
    const options = { numberOfInputs: 0, outputChannelCount: [1] };
    this.node = new AudioWorkletNode(context, "stream-player", options);
    this.node.connect(context.destination);
    this.played = 0;
    this.node.port.onmessage = ({ data }) => {
      onPlayed(data.played - this.played);
      this.played = data.played;
    };
  }

  push(buffer) {
    const pcm = new Int16Array(buffer);
    const samples = Float32Array.from(pcm, (s) => s / 32768);
    this.node.port.postMessage({ type: "push", samples }, [samples.buffer]);
  }

  clear() {
    this.node.port.postMessage({ type: "clear" });
  }
}

// ---- conversation ---------------------------------------------------------------------------

class Conversation {
  async start() {
    let context = await audioContext();
    if (!ALLOWED_RATES.includes(context.sampleRate)) {
      // An unusual device rate: let the browser resample the microphone and speakers to 48 kHz.
      await context.close();
      context = await audioContext({ sampleRate: 48000 });
    }
    this.context = context;
    const echoCancellation = $("echo-cancellation").checked;
    this.stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation } });
    this.player = new Player(context, (seconds) => (stats.audioPlayedSeconds += seconds));
    this.generation = 0; // the newest reply; audio of older ones is dropped by clearing
    this.replies = new Map(); // generation -> its transcript entry while the text streams

    const ws = (this.ws = new WebSocket(socketUrl("/ws/agent")));
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      this.sendSettings();
      this.send({ type: "metrics", data: true });
      this.send({ type: "live", data: true }); // partial transcripts and streamed reply text
      // Last: after "rates" the server reads our microphone frames at the context's rate.
      this.send({ type: "rates", playback: context.sampleRate, input: context.sampleRate });
      this.startMicrophone();
    };
    ws.onmessage = ({ data }) => {
      if (typeof data === "string") this.onEvent(JSON.parse(data));
      else this.player.push(data); // reply audio, S16LE at the playback rate
    };
    ws.onclose = ({ code, reason }) => {
      if (this.ws === ws) {
        // Keep a more telling error the server sent before closing (a bad key, for one).
        if (code !== 1000 && $("error").hidden) {
          showError(`Conversation closed (${code}${reason ? `: ${reason}` : ""})`);
        }
        this.stop();
      }
    };
  }

  startMicrophone() {
    const source = this.context.createMediaStreamSource(this.stream);
    this.mic = new AudioWorkletNode(this.context, "mic-capture", { numberOfOutputs: 0 });
    this.mic.port.onmessage = ({ data }) => {
      if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(data.pcm);
      $("mic-level").value = data.peak;
    };
    source.connect(this.mic);
  }

  send(message) {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  sendSettings() {
    this.send({ type: "voice", data: $("voice").value || "F1" });
    this.send({ type: "language", data: $("language").value || "en" });
    if ($("prompt").value.trim()) this.send({ type: "prompt", data: $("prompt").value });
  }

  stop() {
    const ws = this.ws;
    this.ws = null;
    ws?.close(1000);
    this.stream?.getTracks().forEach((track) => track.stop());
    this.context?.close().catch(() => {});
    this.context = null;
    $("mic-level").value = 0;
    $("partial").textContent = "";
    setStatus("idle");
    $("stop").disabled = true;
    $("start").disabled = false;
  }

  onEvent(message) {
    const { type, data, generation } = message;
    if (type === "status") {
      if (data === "prompt_set") return;
      // A barge-in, or a newer reply starting: what is still queued must not be heard.
      if (data === "interrupted" || (data === "thinking" && generation > this.generation)) {
        this.player.clear();
      }
      if (data === "interrupted") this.replies.get(generation)?.classList.add("interrupted");
      this.generation = Math.max(this.generation, generation ?? 0);
      setStatus(data);
    } else if (type === "server_rates") {
      setStatus("listening"); // the session is set up; the server reads our microphone from here on
    } else if (type === "partial_transcript") {
      $("partial").textContent = data;
    } else if (type === "text_delta") {
      const entry = this.replies.get(generation) ?? addEntry("assistant", "", true);
      this.replies.set(generation, entry);
      entry.querySelector("p").textContent += data;
      scrollDown();
    } else if (type === "transcript" && data) {
      if (message.role === "user") {
        $("partial").textContent = "";
        addEntry("user", data);
      } else {
        // The final text replaces the streamed one: after a barge-in it is what was actually heard.
        const entry = this.replies.get(generation) ?? addEntry("assistant", "");
        entry.querySelector("p").textContent = data;
        entry.classList.remove("streaming");
        this.replies.delete(generation);
      }
    } else if (type === "metrics") {
      showLatency(generation, data);
    } else if (type === "error") {
      showError(data);
    }
  }
}

function setStatus(status) {
  $("status").textContent = status;
  $("status").dataset.status = status;
}

function scrollDown() {
  $("transcript").scrollTop = $("transcript").scrollHeight;
}

function addEntry(role, text, streaming = false) {
  const entry = document.createElement("div");
  entry.className = `entry ${role}${streaming ? " streaming" : ""}`;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "You" : "Assistant";
  const body = document.createElement("p");
  body.textContent = text;
  entry.append(who, body);
  $("transcript").append(entry);
  scrollDown();
  return entry;
}

// Every figure is measured by the server from the end of the user's speech; first_byte_sent (the
// first reply audio leaving the server) is the voice-to-voice latency as the server sees it.
const STAGES = [
  ["stt_final", "STT final"],
  ["llm_first_token", "LLM first token"],
  ["tts_first_audio", "TTS first audio"],
  ["first_byte_sent", "first byte sent"],
];

function showLatency(generation, metrics) {
  const total = metrics.first_byte_sent;
  $("v2v").textContent = ms(total);
  // The bar shows where each stage ended on the way to the first reply byte.
  const bar = $("latency-bar");
  bar.replaceChildren();
  let previous = 0;
  for (const [key, label] of STAGES) {
    const at = metrics[key];
    if (at == null || !total) continue;
    const part = document.createElement("span");
    part.className = `stage ${key}`;
    part.style.flexGrow = Math.max(at - previous, 0);
    part.title = `${label}: ${ms(at)}`;
    bar.append(part);
    previous = Math.max(previous, at);
  }
  $("latency-parts").replaceChildren(
    ...STAGES.map(([key, label]) => {
      const item = document.createElement("span");
      item.innerHTML = `<i class="swatch ${key}"></i>${label} <b></b>`;
      item.querySelector("b").textContent = ms(metrics[key]);
      return item;
    }),
  );
  const row = document.createElement("tr");
  row.insertCell().textContent = generation;
  for (const key of ["first_byte_sent", "stt_final", "llm_first_token", "tts_first_audio"]) {
    row.insertCell().textContent = ms(metrics[key]);
  }
  const body = $("turns").tBodies[0];
  body.prepend(row);
  while (body.rows.length > 10) body.deleteRow(-1);
}

let conversation = null;

$("start").addEventListener("click", async () => {
  $("start").disabled = true;
  showError(null);
  conversation = new Conversation();
  try {
    setStatus("connecting");
    await conversation.start();
    $("stop").disabled = false;
  } catch (error) {
    showError(`Could not start: ${error.message}`);
    conversation.stop();
  }
});

$("stop").addEventListener("click", () => conversation?.stop());

// Settings apply to a running conversation too (the next reply uses them).
$("language").addEventListener("change", () => {
  fillVoices($("voice"), $("language").value);
  conversation?.sendSettings();
});
$("voice").addEventListener("change", () => conversation?.sendSettings());
$("prompt").addEventListener("change", () => conversation?.sendSettings());

// ---- text to speech -------------------------------------------------------------------------

class Speaker {
  async speak(request) {
    // A context at the stream's own rate: the browser resamples to the speakers, the page never has to.
    this.context ??= await audioContext({ sampleRate: TTS_RATE });
    this.player ??= new Player(this.context, (seconds) => (stats.ttsPlayedSeconds += seconds));
    this.stop();
    // One socket per request: stopping closes it, so a cancelled stream cannot leak into the next.
    const ws = (this.ws = new WebSocket(socketUrl("/ws/tts")));
    ws.binaryType = "arraybuffer";
    let started = 0;
    let samples = 0;
    ws.onopen = () => {
      started = performance.now();
      ws.send(JSON.stringify(request));
    };
    ws.onmessage = ({ data }) => {
      if (typeof data !== "string") {
        if (!samples) $("tts-ttfb").textContent = ms(performance.now() - started);
        samples += data.byteLength / 2;
        $("tts-audio").textContent = `${(samples / TTS_RATE).toFixed(2)} s`;
        this.player.push(data);
      } else if (data === "EOS") {
        $("tts-total").textContent = ms(performance.now() - started);
        ws.close(1000);
      } else if (data.startsWith("ERR")) {
        showError(data);
        ws.close(1000);
      }
    };
    ws.onclose = () => {
      if (this.ws === ws) $("tts-speak").disabled = false;
    };
  }

  stop() {
    this.ws?.close(1000);
    this.ws = null;
    this.player?.clear();
  }
}

const speaker = new Speaker();

$("tts-speak").addEventListener("click", async () => {
  showError(null);
  for (const id of ["tts-ttfb", "tts-total", "tts-audio"]) $(id).textContent = "…";
  $("tts-speak").disabled = true;
  try {
    await speaker.speak({
      text: $("tts-text").value,
      voice: $("tts-voice").value || undefined,
      lang: $("tts-lang").value || undefined,
      speed: Number($("tts-speed").value) || 1.05,
    });
  } catch (error) {
    showError(`Could not speak: ${error.message}`);
    $("tts-speak").disabled = false;
  }
});

$("tts-stop").addEventListener("click", () => {
  speaker.stop();
  $("tts-speak").disabled = false;
});
$("tts-lang").addEventListener("change", () => fillVoices($("tts-voice"), $("tts-lang").value));

loadCatalogue();
