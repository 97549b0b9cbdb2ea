// The page of `ahri play`: draws the frames the server sends, sends the held keys and the controls.
// Protocol: see ahri_core/play/protocol.py. Frames are raw RGB after a JSON header; each drawn frame is acknowledged,
// and the server sends the newest frame when the page is ready, so a slow page skips frames, never lags.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const canvas = $("screen");
  const ctx = canvas.getContext("2d");
  const state = {
    connected: false, frame: 0, start: 0, real: true, step: 0, action: "", fps: 0, behind: false,
    paused: false, recording: false, drawn: 0, hello: null, error: null, saved: [],
  };
  // window.ahri.onframe(header, canvas), when set, is called after each frame is drawn
  const ahri = { state, onframe: null };
  window.ahri = ahri;

  const PLAY_KEYS = new Set(["ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "KeyW", "KeyA", "KeyS", "KeyD", "Space"]);
  for (let i = 0; i < 10; i++) { PLAY_KEYS.add(`Digit${i}`); PLAY_KEYS.add(`Numpad${i}`); }
  let controls = { KeyR: "reset", KeyP: "pause", KeyV: "record" };
  let held = [];
  const times = [];
  let image = null;

  // The server's token comes in this page's own URL (the one `ahri play` printed); the socket must show it.
  const token = new URLSearchParams(location.search).get("token") || "";
  const ws = new WebSocket(
    `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws?token=${encodeURIComponent(token)}`);
  ws.binaryType = "arraybuffer";
  const send = (msg) => { if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg)); };
  const sendKeys = () => send({ type: "keys", codes: held });

  function fit(w, h) {
    const s = Math.max(1, Math.floor(Math.min(640 / w, 480 / h)));
    canvas.style.width = `${w * s}px`;
    canvas.style.height = `${h * s}px`;
  }

  function hello(msg) {
    state.hello = msg;
    $("run").textContent = `${msg.run} · ${msg.steps} steps · ${msg.fps} fps · from ${msg.start}`;
    document.title = `ahri play ${msg.run}`;
    canvas.width = msg.width; canvas.height = msg.height; fit(msg.width, msg.height);
    controls = {};
    for (const [name, code] of Object.entries(msg.controls || {})) controls[code] = name;
    const body = $("keys").tBodies[0];
    body.textContent = "";
    const acts = msg.actions || {};
    if (acts.kind === "none" || acts.kind === "continuous") {
      const row = body.insertRow();
      row.insertCell().textContent = acts.kind === "none"
        ? "This run was trained without actions: keys do not steer it."
        : "This run's actions are continuous: keys are not mapped to them yet.";
    }
    for (const a of acts.keys || []) {
      const row = body.insertRow();
      row.insertCell().textContent = a.meaning;
      const k = row.insertCell(); k.className = "keys"; k.textContent = a.keys.join(", ");
    }
  }

  function showState() {
    $("pause").classList.toggle("active", state.paused);
    $("pause").firstChild.textContent = state.paused ? "resume " : "pause ";
    $("record").classList.toggle("active", state.recording);
    $("rec").hidden = !state.recording;
  }

  function notice(head) {
    const el = $("notice");
    let text = "";
    if (state.paused) text = "Paused: P resumes.";
    else if (head && head.behind && head.model_fps) {
      text = `The model makes ${head.model_fps.toFixed(1)} frames/s, below the run's ${head.target_fps} fps: ` +
        "frames are shown as fast as they are made.";
    }
    el.textContent = text;
    el.hidden = !text;
  }

  function draw(buf) {
    const n = new DataView(buf).getUint32(0, true);
    const head = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
    const rgb = new Uint8Array(buf, 4 + n);
    const w = head.width, h = head.height;
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; fit(w, h); image = null; }
    if (!image) image = ctx.createImageData(w, h);
    const px = image.data;
    for (let i = 0, j = 0, k = 0; i < w * h; i++, j += 3, k += 4) {
      px[k] = rgb[j]; px[k + 1] = rgb[j + 1]; px[k + 2] = rgb[j + 2]; px[k + 3] = 255;
    }
    ctx.putImageData(image, 0, 0);
    send({ type: "ack", frame: head.frame });

    const now = performance.now();
    times.push(now);
    while (times.length && now - times[0] > 1000) times.shift();
    const span = times.length > 1 ? (times[times.length - 1] - times[0]) / 1000 : 0;
    Object.assign(state, {
      frame: head.frame, start: head.start, real: head.real, step: head.step, action: head.action, behind: head.behind,
      paused: head.paused, recording: head.recording, drawn: state.drawn + 1,
      fps: span > 0 ? (times.length - 1) / span : 0,
    });
    $("stage").className = head.real ? "real" : "dream";
    $("badge").textContent = head.real ? "real" : "dream";
    $("fps").textContent = `${state.fps.toFixed(1)} fps`;
    const ctxLen = state.hello ? state.hello.context : "?";
    $("step").textContent = head.real ? `real frame ${head.step}/${ctxLen}` : `dream step ${head.step}`;
    const idle = state.hello && state.hello.actions.idle_label;
    $("action").textContent = head.action ? (head.action === idle && !head.real ? `${head.action} (no key)` : head.action) : "";
    const ms = head.ms || {};
    $("model").textContent = head.real ? "" : `model ${(ms.model || 0).toFixed(0)} ms · decode ${(ms.decode || 0).toFixed(0)} ms`;
    notice(head);
    showState();
    if (typeof ahri.onframe === "function") ahri.onframe(head, canvas);
  }

  ws.onopen = () => { state.connected = true; $("conn").textContent = "connected"; $("conn").className = "on"; };
  let opened = false;
  ws.addEventListener("open", () => { opened = true; });
  ws.onclose = () => {
    state.connected = false; $("conn").textContent = "disconnected"; $("conn").className = "off";
    if (!opened) {  // refused before it opened: most often a URL without the server's token
      $("error").textContent = "Could not connect: open the full URL that ahri play printed (with its ?token=...).";
      $("error").hidden = false;
    }
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data !== "string") { draw(ev.data); return; }
    const msg = JSON.parse(ev.data);
    if (msg.type === "hello") hello(msg);
    else if (msg.type === "state") { state.paused = msg.paused; state.recording = msg.recording; showState(); notice(null); }
    else if (msg.type === "recorded") { state.saved.push(msg.name); $("saved").textContent = `saved ${msg.name} (${msg.frames} frames)`; }
    else if (msg.type === "error") { state.error = msg.message; $("error").textContent = msg.message; $("error").hidden = false; }
  };

  const control = (name) => send({ type: name });
  addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (controls[e.code]) { e.preventDefault(); if (!e.repeat) control(controls[e.code]); return; }
    if (!PLAY_KEYS.has(e.code)) return;
    e.preventDefault();
    if (!held.includes(e.code)) { held.push(e.code); sendKeys(); }
  });
  addEventListener("keyup", (e) => {
    const i = held.indexOf(e.code);
    if (i >= 0) { held.splice(i, 1); sendKeys(); }
  });
  addEventListener("blur", () => { if (held.length) { held = []; sendKeys(); } });
  for (const name of ["reset", "pause", "record"]) {
    const b = $(name);
    b.addEventListener("mousedown", (e) => e.preventDefault());  // keep the focus off the button (space)
    b.addEventListener("click", () => control(name));
  }
})();
