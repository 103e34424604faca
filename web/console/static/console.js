// The Paddock console (web/console/): a client of the public APIs, nothing more.
//
// Security rules this file keeps:
// - Tokens live in this tab's sessionStorage and travel only in Authorization headers; the
//   exceptions are the WebSockets, which browsers cannot give headers: the session socket's
//   session JWT (scoped to one session) goes as ?token=, as the v1 spec has browsers do, and
//   the terminal socket takes a one-use ticket fetched with the API key just before.
// - Everything the API returns is put in the page as text (textContent / text nodes), never as
//   HTML: sandbox metadata, names and outputs are tenant-controlled.
// - Every API error is shown with the API's own message.
// - The tab's own API key (made at login) ends with the login: it is made with the account
//   token's remaining lifetime as its expiry, so a tab closed without logging out leaves no
//   working key behind. A 401 on the tab's credentials ends the tab's login.
"use strict";

(function () {
  const store = window.sessionStorage;
  const S = {
    account: "pdk.account",
    email: "pdk.email",
    key: "pdk.key",
    keyId: "pdk.keyId",
    sess: (id) => "pdk.sess." + id,
  };
  let timers = [];
  let sockets = [];

  // -- DOM ---------------------------------------------------------------------------------
  // h("button", {class: "x", onclick: f, "aria-label": "..."}, "text", child...)
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "text") el.textContent = String(v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const $ = (sel) => document.querySelector(sel);
  // Each page renders into a root of its own: a page still loading when the user moves on
  // writes into its detached root, never over the next page (`live` tells it to stop).
  let pageRoot = null;
  const main = () => pageRoot;
  const live = (root) => root.isConnected;

  function showError(err) {
    const box = $("#error");
    if (!err) {
      box.hidden = true;
      box.textContent = "";
      return;
    }
    box.textContent = err.message || String(err);
    box.hidden = false;
  }

  // Wraps an async handler: its error is shown, the button is disabled while it runs.
  function act(fn) {
    return async function (ev) {
      if (ev && ev.preventDefault) ev.preventDefault();
      const btn = ev && ev.submitter ? ev.submitter : ev && ev.currentTarget;
      if (btn && btn.tagName === "BUTTON") btn.disabled = true;
      showError(null);
      try {
        await fn(ev);
      } catch (err) {
        showError(err);
      } finally {
        if (btn && btn.tagName === "BUTTON") btn.disabled = false;
      }
    };
  }

  // -- the API -----------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // The message of an API error answer: the v1 envelope {"error": {message}}, the E2B and
  // envd ones {"message"}.
  function errorMessage(resp, data) {
    return (data && data.error && data.error.message) || (data && data.message) || resp.status + " " + resp.statusText;
  }
  async function errorOf(resp) {
    let data = null;
    try {
      data = JSON.parse(await resp.text());
    } catch (e) {
      data = null;
    }
    return new ApiError(resp.status, errorMessage(resp, data) + " (HTTP " + resp.status + ")");
  }

  // The tab's credentials were refused (the key expired or was revoked elsewhere, the account
  // token expired): back to the login page, which shows why (`notice`, the API's message).
  let notice = null;
  function endLogin(err) {
    for (const k of Object.keys(store)) if (k.startsWith("pdk.")) store.removeItem(k);
    notice = err;
    history.replaceState(null, "", location.pathname + location.search); // no hashchange
    route();
  }

  // auth: "key" (the API key), "sdk" (the API key as the E2B control API's X-API-Key),
  // "account" (the account token) or "none". opts.keepLogin: a 401 does not end the login.
  async function api(method, path, opts) {
    opts = opts || {};
    const headers = { Accept: "application/json" };
    const token = opts.auth === "none" ? null : store.getItem(opts.auth === "account" ? S.account : S.key);
    if (token && opts.auth === "sdk") headers["X-API-Key"] = token;
    else if (token) headers.Authorization = "Bearer " + token;
    let body;
    if (opts.body !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(opts.body);
    }
    const resp = await fetch(path, { method, headers, body, credentials: "omit", cache: "no-store" });
    const text = await resp.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (e) {
        data = null;
      }
    }
    if (!resp.ok) {
      const msg = errorMessage(resp, data) + " (HTTP " + resp.status + ")";
      if (resp.status === 401 && opts.auth !== "none" && !opts.keepLogin && token && token === store.getItem(opts.auth === "account" ? S.account : S.key)) {
        const ended = new ApiError(401, "Your console login has ended: " + msg + ". Log in again.");
        endLogin(ended);
        throw ended;
      }
      throw new ApiError(resp.status, msg);
    }
    return data;
  }
  const q = encodeURIComponent;

  // -- formatting --------------------------------------------------------------------------
  function when(ts) {
    if (!ts) return "—";
    const d = new Date(typeof ts === "number" ? ts * 1000 : ts);
    return isNaN(d) ? String(ts) : d.toLocaleString();
  }
  function secs(ts) {
    if (!ts) return null;
    const t = typeof ts === "number" ? ts * 1000 : Date.parse(ts);
    return isNaN(t) ? null : t / 1000;
  }
  function span(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 60) return seconds + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min " + (seconds % 60) + " s";
    return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
  }
  const now = () => Date.now() / 1000;
  // Time until the idle reaper ends the sandbox; "—" with no idle timer (an agent session's
  // sandbox, or a paused one).
  function idleLeft(sb) {
    const t = secs(sb.idle_expires_at);
    return t === null ? "—" : span(t - now());
  }
  function bytes(n) {
    if (typeof n !== "number" || !isFinite(n)) return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }
  function tags(obj) {
    return Object.entries(obj || {}).map(([k, v]) => h("span", { class: "tag" }, k + "=" + v));
  }
  // -- login -------------------------------------------------------------------------------
  function loggedIn() {
    return !!store.getItem(S.account) && !!store.getItem(S.key);
  }

  // Seconds the account token has left (its `exp` claim; read, not verified: the server
  // checks it), at least a minute; an hour, the server's lifetime, if it cannot be read.
  function loginLeft(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const exp = JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4))).exp;
      if (typeof exp === "number") return Math.max(60, Math.floor(exp - now()));
    } catch (e) {
      // fall through
    }
    return 3600;
  }

  function renderLogin() {
    const root = main();
    $("#nav").hidden = true;
    $("#logout").hidden = true;
    $("#who").textContent = "";
    const email = h("input", { id: "login-email", type: "email", name: "email", required: true, autocomplete: "email" });
    const code = h("input", {
      id: "login-code", name: "code", inputmode: "numeric", pattern: "[0-9]{6}", maxlength: "6", required: true,
      autocomplete: "one-time-code",
    });
    const codeForm = h(
      "form",
      { id: "code-form", class: "row", hidden: true, onsubmit: act(verify) },
      h("label", { for: "login-code" }, "Code from the email", code),
      h("button", { type: "submit" }, "Log in"),
    );
    async function send() {
      await api("POST", "/v1/auth/login", { auth: "none", body: { email: email.value } });
      codeForm.hidden = false;
      code.focus();
    }
    async function verify() {
      const out = await api("POST", "/v1/auth/verify-otp", { auth: "none", body: { email: email.value, code: code.value } });
      store.setItem(S.account, out.token);
      store.setItem(S.email, out.email);
      // Every route but /v1/api-keys takes an API key: the console makes one for this tab,
      // ending when the account token does (its `exp`), and revokes it on logout.
      const key = await api("POST", "/v1/api-keys", {
        auth: "account",
        body: { name: "console " + new Date().toISOString(), expires_in: loginLeft(out.token) },
      });
      store.setItem(S.key, key.key);
      store.setItem(S.keyId, key.key_id);
      location.hash = "#/sandboxes";
      route();
    }
    root.replaceChildren(
      h("h1", {}, "Log in"),
      h("p", { class: "note" }, "A six-digit code is sent to your email address."),
      h(
        "form",
        { id: "email-form", class: "row", onsubmit: act(send) },
        h("label", { for: "login-email" }, "Email", email),
        h("button", { type: "submit" }, "Send code"),
      ),
      codeForm,
    );
    if (notice) {
      showError(notice);
      notice = null;
    }
    email.focus();
  }

  async function logout() {
    const keyId = store.getItem(S.keyId);
    if (keyId) {
      try {
        await api("DELETE", "/v1/api-keys/" + q(keyId), { auth: "account", keepLogin: true });
      } catch (err) {
        // An expired account token cannot revoke it: the key ends with it anyway.
      }
    }
    for (const k of Object.keys(store)) if (k.startsWith("pdk.")) store.removeItem(k);
    location.hash = "";
    route();
  }

  // -- sandboxes ---------------------------------------------------------------------------
  // The terminal's files (xterm.js and its addons, about 400 KB: web/console/vendor.py) load on
  // a sandbox's page only, once per tab; terminal.js (ours) drives them.
  let terminalFiles = null;
  function loadTerminal() {
    if (!terminalFiles) {
      terminalFiles = (async () => {
        document.head.append(h("link", { rel: "stylesheet", href: "/console/assets/xterm.css" }));
        for (const name of ["xterm.js", "xterm-addon-canvas.js", "xterm-addon-fit.js", "terminal.js"]) {
          await new Promise((resolve, reject) => {
            const s = h("script", { src: "/console/assets/" + name });
            s.onload = resolve;
            s.onerror = () => reject(new Error("The terminal's files are not on this server (" + name + ": `make images` fetches them)."));
            document.head.append(s);
          });
        }
      })();
      terminalFiles.catch(() => { terminalFiles = null; });
    }
    return terminalFiles;
  }

  async function templateNames() {
    try {
      const out = await api("GET", "/v1/templates");
      return out.templates.map((t) => t.name);
    } catch (err) {
      return [];
    }
  }

  async function renderSandboxes() {
    const root = main();
    const filter = h("input", { id: "sb-filter", placeholder: "key=value", "aria-describedby": "sb-filter-note" });
    const tbody = h("tbody", {});
    const tmpl = h("select", { id: "sb-template" });
    const names = await templateNames();
    for (const n of names.length ? names : ["Bash", "standard"]) tmpl.append(h("option", { value: n }, n));
    let last = [];
    function draw() {
      const want = filter.value.trim();
      const [fk, fv] = want.includes("=") ? want.split(/=(.*)/s) : [want, null];
      const rows = last
        .filter((sb) => {
          if (!want) return true;
          const md = sb.metadata || {};
          return fv === null ? fk in md : md[fk] === fv;
        })
        .map((sb) => {
          const exp = secs(sb.expires_at);
          return h(
            "tr",
            { "data-sandbox": sb.sandbox_id },
            h("td", {}, h("a", { href: "#/sandbox/" + q(sb.sandbox_id), class: "mono" }, sb.sandbox_id)),
            h("td", {}, sb.template),
            h("td", {}, sb.state),
            h("td", {}, sb.host || "—"),
            h("td", {}, span(now() - secs(sb.created_at))),
            h("td", { class: "idle-left" }, idleLeft(sb)),
            h("td", {}, exp === null ? "—" : span(exp - now())),
            h("td", { class: "metadata" }, tags(sb.metadata)),
            h(
              "td",
              {},
              h("button", {
                type: "button", class: "danger", "aria-label": "Kill sandbox " + sb.sandbox_id,
                onclick: act(async () => {
                  await api("DELETE", "/v1/sandboxes/" + q(sb.sandbox_id));
                  await load();
                }),
              }, "Kill"),
            ),
          );
        });
      tbody.replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: "9", class: "note" }, "No sandboxes."))]));
    }
    async function load() {
      last = (await api("GET", "/v1/sandboxes")).sandboxes;
      draw();
    }
    filter.addEventListener("input", draw);
    root.replaceChildren(
      h("h1", {}, "Sandboxes"),
      h(
        "form",
        {
          id: "sb-start", class: "row",
          onsubmit: act(async () => {
            const out = await api("POST", "/sessions", { body: { envID: tmpl.value } });
            location.hash = "#/sandbox/" + q(out.id);
          }),
        },
        h("label", { for: "sb-template" }, "Template", tmpl),
        h("button", { type: "submit" }, "Start a sandbox"),
      ),
      h("div", { class: "row" }, h("label", { for: "sb-filter" }, "Filter by metadata", filter),
        h("span", { id: "sb-filter-note", class: "note" }, "key=value, or a key alone")),
      h(
        "table",
        { id: "sandboxes" },
        h("thead", {}, h("tr", {}, ["Sandbox", "Template", "State", "Host", "Age", "Idle time left", "Lifetime left", "Metadata", ""].map((x) => h("th", { scope: "col" }, x)))),
        tbody,
      ),
    );
    await load();
    if (live(root)) timers.push(setInterval(() => load().catch(showError), 5000));
  }

  async function renderSandbox(id) {
    const root = main();
    let info = await api("GET", "/v1/sandboxes/" + q(id));
    // The summary and the CPU and memory, redrawn every few seconds while the page is open.
    const summary = h("p", { id: "sb-summary" });
    const metadata = h("p", { id: "sb-metadata" });
    const cpu = h("dd", { id: "sb-cpu" }, "…");
    const mem = h("dd", { id: "sb-mem" }, "…");
    const metricsNote = h("p", { id: "sb-metrics-note", class: "note", role: "status" });
    function drawInfo() {
      summary.replaceChildren("Template ", h("b", {}, info.template), ", state ", h("b", { id: "sb-state" }, info.state), ", host ", info.host || "—",
        ", started ", when(info.created_at), ", idle time left ", h("b", { id: "sb-idle-left" }, idleLeft(info)),
        ", lifetime left ", info.expires_at ? span(secs(info.expires_at) - now()) : "—", ".");
      const md = tags(info.metadata);
      metadata.replaceChildren("Metadata: ", ...(md.length ? md : ["none"]));
    }
    let busy = false;
    async function tick() {
      // Asking for metrics names the sandbox, which resets its idle timer: a tab left in the
      // background does not keep it alive.
      if (busy || document.visibilityState === "hidden") return;
      busy = true;
      try {
        const [fresh, samples] = await Promise.all([
          api("GET", "/v1/sandboxes/" + q(id)).catch((e) => e),
          api("GET", "/sandboxes/" + q(id) + "/metrics", { auth: "sdk" }).catch((e) => e),
        ]);
        if (!live(root)) return;
        if (!(fresh instanceof Error)) {
          info = fresh;
          drawInfo();
        }
        const m = Array.isArray(samples) ? samples[samples.length - 1] : null;
        if (samples instanceof Error || !m) {
          cpu.textContent = "—";
          mem.textContent = "—";
          metricsNote.textContent = "Metrics unavailable: " + (samples instanceof Error ? samples.message : "no sample");
          return;
        }
        cpu.textContent = Number(m.cpuUsedPct).toFixed(1) + " % of " + m.cpuCount + " vCPU";
        mem.textContent = bytes(m.memUsed) + " of " + bytes(m.memTotal);
        metricsNote.textContent = "Sampled " + when(m.timestampUnix) + ".";
      } finally {
        busy = false;
      }
    }
    drawInfo();
    const cmd = h("input", { id: "cmd", name: "cmd", size: "60", autocomplete: "off", spellcheck: "false" });
    // The terminal (terminal.js); the command box below stays for backends without one.
    const termBox = h("div", { id: "terminal", class: "term" });
    const termState = h("p", { id: "term-status", class: "note", role: "status" }, "Loading the terminal…");
    const reopen = h("button", { type: "button", id: "term-reopen", class: "quiet", hidden: true }, "Open a new shell");
    let terminal = null;
    async function startTerminal() {
      try {
        await loadTerminal();
      } catch (err) {
        termBox.hidden = true;
        termState.textContent = err.message + " Use the command box below.";
        return;
      }
      if (!live(root)) return;
      terminal = window.PaddockTerminal.open(termBox, {
        ticket: async (cols, rows) => {
          const t = await api("POST", "/v1/sandboxes/" + q(id) + "/terminal");
          const base = (location.protocol === "https:" ? "wss://" : "ws://") + location.host;
          return base + "/v1/sandboxes/" + q(id) + "/terminal?ticket=" + q(t.ticket) + "&cols=" + cols + "&rows=" + rows;
        },
        onState: (state, text) => {
          termState.textContent = text;
          termBox.setAttribute("data-state", state);
          reopen.hidden = state !== "closed";
          if (state === "unsupported") termBox.hidden = true;
        },
        leave: () => (reopen.hidden ? cmd : reopen).focus(),
      });
      reopen.addEventListener("click", () => terminal.reconnect());
      timers.push({ stop: () => terminal.close() });
    }
    const out = h("pre", { id: "cmd-output", class: "out", "aria-live": "polite", "aria-label": "Command output" });
    const status = h("p", { id: "cmd-status", class: "note" });
    async function run() {
      out.replaceChildren();
      status.textContent = "running…";
      const started = await api("POST", "/sessions/" + q(id) + "/processes", { body: { cmd: cmd.value } });
      const pid = started.processID;
      // Polls the process (the E2B API): each answer holds all output so far.
      for (;;) {
        const p = await api("GET", "/sessions/" + q(id) + "/processes/" + q(pid));
        if (!p) break; // 204: forgotten
        const lines = [];
        for (const o of p.stdout) lines.push([o.timestamp, o.line, ""]);
        for (const o of p.stderr) lines.push([o.timestamp, o.line, "stderr"]);
        lines.sort((a, b) => a[0] - b[0]);
        out.replaceChildren(...lines.map(([, line, cls]) => h("span", { class: cls || null }, line + "\n")));
        if (p.finished) {
          status.textContent = "finished";
          break;
        }
        await new Promise((r) => setTimeout(r, 300));
      }
    }
    // Files
    const dir = h("input", { id: "fs-path", value: "/tmp", size: "40" });
    const files = h("tbody", {});
    const upload = h("input", { id: "fs-upload", type: "file" });
    const join = (a, b) => (a.endsWith("/") ? a : a + "/") + b;
    async function list() {
      const path = dir.value;
      const out2 = await api("GET", "/sessions/" + q(id) + "/filesystem/dir?path=" + q(path));
      const entries = out2.entries.sort((a, b) => (b.isDir - a.isDir) || a.name.localeCompare(b.name));
      files.replaceChildren(
        ...entries.map((e) => {
          const full = join(path, e.name);
          return h(
            "tr",
            { "data-file": e.name },
            h("td", {}, e.isDir ? h("button", { type: "button", class: "quiet", onclick: act(async () => { dir.value = full; await list(); }) }, e.name + "/") : e.name),
            h("td", {}, e.isDir ? "directory" : "file"),
            h(
              "td",
              {},
              e.isDir ? null : h("button", { type: "button", class: "quiet", "aria-label": "Download " + e.name, onclick: act(() => download(full, e.name)) }, "Download"),
              " ",
              h("button", {
                type: "button", class: "danger", "aria-label": "Delete " + e.name,
                onclick: act(async () => {
                  if (!window.confirm("Delete " + full + "?")) return;
                  await api("DELETE", "/sessions/" + q(id) + "/filesystem?path=" + q(full));
                  await list();
                }),
              }, "Delete"),
            ),
          );
        }),
      );
    }
    // File bytes go through envd's /files (web/api/envd/files.py), as the E2B SDKs send them:
    // any bytes, both ways, bounded by the server (PADDOCK_MAX_FILE_BYTES). It takes the
    // sandbox's envd access token, which the control API's connect hands out (asked once per
    // page; it also moves a timed sandbox's end to at least its timeout from now, as any
    // SDK's connect does, and resumes a paused one).
    let envdToken = null;
    async function envdFiles(method, path, body) {
      if (!envdToken) {
        envdToken = api("POST", "/sandboxes/" + q(id) + "/connect", { auth: "sdk" }).then((c) => c.envdAccessToken);
        envdToken.catch(() => { envdToken = null; });
      }
      const headers = { "E2b-Sandbox-Id": id, "X-Access-Token": await envdToken };
      if (body !== undefined) headers["Content-Type"] = "application/octet-stream";
      let resp;
      try {
        resp = await fetch("/files?path=" + q(path), { method, headers, body, credentials: "omit", cache: "no-store" });
      } catch (err) {
        // The server may refuse a large upload before reading it all and close the
        // connection: the browser then sees no answer.
        throw new Error("The transfer failed before the server answered (" + err.message + ")" +
          (body !== undefined ? ": the file may be larger than the server accepts" : ""));
      }
      if (!resp.ok) {
        if (resp.status === 401) envdToken = null; // asked again next time
        throw await errorOf(resp);
      }
      return resp;
    }
    async function download(full, name) {
      const data = await (await envdFiles("GET", full)).arrayBuffer();
      const url = URL.createObjectURL(new Blob([data], { type: "application/octet-stream" }));
      const a = h("a", { href: url, download: name });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    }
    async function send() {
      const file = upload.files[0];
      if (!file) throw new Error("Choose a file first");
      // The File is the body: its bytes as they are, streamed by the browser.
      await envdFiles("POST", join(dir.value, file.name), file);
      upload.value = "";
      await list();
    }
    root.replaceChildren(
      h("h1", {}, "Sandbox ", h("span", { class: "mono" }, id)),
      summary,
      metadata,
      h("h2", {}, "CPU and memory"),
      h("dl", { id: "sb-metrics", class: "metrics" }, h("dt", {}, "CPU"), cpu, h("dt", {}, "Memory"), mem),
      metricsNote,
      h("div", { class: "row" },
        h("button", { type: "button", class: "danger", onclick: act(async () => { await api("DELETE", "/v1/sandboxes/" + q(id)); location.hash = "#/sandboxes"; }) }, "Kill this sandbox")),
      h("h2", {}, "Terminal"),
      termState,
      termBox,
      h("div", { class: "row" }, reopen),
      h("h2", {}, "Run a command"),
      h("p", { class: "note" }, "Output streams in as the command prints (every sandbox backend has this; the terminal needs the supervisor backend)."),
      h("form", { id: "cmd-form", class: "row", onsubmit: act(run) }, h("label", { for: "cmd" }, "Command", cmd), h("button", { type: "submit" }, "Run")),
      status,
      out,
      h("h2", {}, "Files"),
      h("form", { id: "fs-list", class: "row", onsubmit: act(list) }, h("label", { for: "fs-path" }, "Directory", dir), h("button", { type: "submit" }, "List")),
      h("form", { id: "fs-send", class: "row", onsubmit: act(send) }, h("label", { for: "fs-upload" }, "Upload a file into this directory", upload), h("button", { type: "submit" }, "Upload")),
      h("table", { id: "files" }, h("thead", {}, h("tr", {}, ["Name", "Kind", ""].map((x) => h("th", { scope: "col" }, x)))), files),
    );
    if (live(root)) {
      timers.push(setInterval(() => tick().catch(showError), 3000));
      tick().catch(showError);
      startTerminal();
    }
    await list();
  }

  // -- API keys ----------------------------------------------------------------------------
  async function renderKeys() {
    const root = main();
    const name = h("input", { id: "key-name", maxlength: "64" });
    const life = h("select", { id: "key-life" },
      [["", "never (until revoked)"], ["86400", "in 1 day"], ["604800", "in 7 days"], ["2592000", "in 30 days"], ["7776000", "in 90 days"]]
        .map(([v, t]) => h("option", { value: v }, t)));
    const shown = h("div", { id: "new-key", "aria-live": "polite" });
    const tbody = h("tbody", {});
    async function load() {
      const keys = (await api("GET", "/v1/api-keys", { auth: "account" })).api_keys;
      const mine = store.getItem(S.keyId);
      tbody.replaceChildren(
        ...keys.map((k) => {
          const ends = secs(k.expires_at);
          const expired = ends !== null && ends <= now();
          return h(
            "tr",
            { "data-key": k.key_id },
            h("td", {}, k.name || "—", k.key_id === mine ? h("span", { class: "note" }, " (this console tab: it ends with this login)") : null),
            h("td", { class: "mono" }, k.prefix + "…"),
            h("td", {}, when(k.created_at)),
            h("td", {}, k.last_used_at ? when(k.last_used_at) : "never"),
            h("td", { class: "key-expires" }, ends === null ? "never" : when(k.expires_at)),
            h("td", { class: "key-state" }, k.revoked ? "revoked" : expired ? "expired" : "active"),
            h(
              "td",
              {},
              k.revoked || expired || k.key_id === mine
                ? null
                : h("button", {
                  type: "button", class: "danger", "aria-label": "Revoke key " + (k.name || k.prefix),
                  onclick: act(async () => {
                    if (!window.confirm("Revoke " + (k.name || k.prefix) + "? Programs using it stop working at once.")) return;
                    await api("DELETE", "/v1/api-keys/" + q(k.key_id), { auth: "account" });
                    await load();
                  }),
                }, "Revoke"),
            ),
          );
        }),
      );
    }
    async function create() {
      const body = { name: name.value };
      if (life.value) body.expires_in = Number(life.value);
      const k = await api("POST", "/v1/api-keys", { auth: "account", body });
      name.value = "";
      const code = h("code", { id: "new-key-value" }, k.key);
      const copied = h("span", { class: "note", "aria-live": "polite" });
      shown.replaceChildren(
        h("div", { class: "secret" },
          h("p", {}, h("b", {}, "Your new key. "), "It is shown this once: copy it now."),
          code, " ",
          h("button", {
            type: "button", id: "copy-key",
            onclick: act(async () => {
              await navigator.clipboard.writeText(k.key);
              copied.textContent = " Copied.";
            }),
          }, "Copy"),
          copied,
        ),
      );
      await load();
    }
    root.replaceChildren(
      h("h1", {}, "API keys"),
      h("form", { id: "key-create", class: "row", onsubmit: act(create) },
        h("label", { for: "key-name" }, "Name (optional)", name),
        h("label", { for: "key-life" }, "Expires", life),
        h("button", { type: "submit" }, "Create a key")),
      shown,
      h("p", { class: "note" }, "Keys named \"console …\" are the ones this console makes for each browser tab at login: each ends with its login (an hour at most), or at logout."),
      h("table", { id: "keys" },
        h("thead", {}, h("tr", {}, ["Name", "Prefix", "Created", "Last used", "Expires", "State", ""].map((x) => h("th", { scope: "col" }, x)))), tbody),
    );
    await load();
  }

  // -- secret bundles ----------------------------------------------------------------------
  // Rows of KEY + value inputs; values are password fields, written, never read back.
  function valueRows(prefix) {
    const box = h("div", { class: "values" });
    let n = 0;
    function add() {
      n += 1;
      const kid = prefix + "-k" + n;
      const vid = prefix + "-v" + n;
      box.append(
        h("div", { class: "row" },
          h("label", { for: kid }, "Key", h("input", { id: kid, class: "vk", pattern: "[A-Z_][A-Z0-9_]*", placeholder: "LLM_API_KEY" })),
          h("label", { for: vid }, "Value (write-only)", h("input", { id: vid, class: "vv", type: "password", autocomplete: "off" }))),
      );
    }
    add();
    return {
      el: h("div", {}, box, h("button", { type: "button", class: "quiet", onclick: add }, "Add a key")),
      values() {
        const out = {};
        for (const row of box.children) {
          const k = row.querySelector(".vk").value.trim();
          if (k) out[k] = row.querySelector(".vv").value;
        }
        return out;
      },
    };
  }

  async function renderBundles() {
    const root = main();
    const name = h("input", { id: "bundle-name", pattern: "[a-z0-9][a-z0-9\\-]{0,62}", required: true });
    const rows = valueRows("nb");
    const tbody = h("tbody", {});
    const editor = h("div", { id: "bundle-editor" });
    async function load() {
      const [bundles, sessions] = await Promise.all([api("GET", "/v1/tenants/me/secrets"), api("GET", "/v1/sessions")]);
      tbody.replaceChildren(
        ...bundles.secrets.map((b) => {
          const users = sessions.sessions.filter((s) => (s.secrets || []).includes(b.name) && s.state !== "ended");
          return h(
            "tr",
            { "data-bundle": b.name },
            h("td", { class: "mono" }, b.name),
            h("td", {}, b.keys.map((k) => h("span", { class: "tag" }, k))),
            h("td", {}, String(b.version)),
            h("td", {}, when(b.updated_at)),
            h("td", {}, users.length ? users.map((s) => h("a", { href: "#/session/" + q(s.chat_session_id), class: "tag" }, s.chat_session_id)) : "—"),
            h(
              "td",
              {},
              h("button", { type: "button", class: "quiet", "aria-label": "Replace the values of " + b.name, onclick: () => edit(b) }, "Replace values"),
              " ",
              h("button", {
                type: "button", class: "danger", "aria-label": "Delete bundle " + b.name,
                onclick: act(async () => {
                  if (!window.confirm("Delete bundle " + b.name + "?")) return;
                  await api("DELETE", "/v1/tenants/me/secrets/" + q(b.name));
                  await load();
                }),
              }, "Delete"),
            ),
          );
        }),
      );
    }
    function edit(b) {
      const r = valueRows("eb");
      editor.replaceChildren(
        h("h2", {}, "Replace the values of ", h("span", { class: "mono" }, b.name)),
        h("p", { class: "note" }, "Every key is replaced: give them all. Current keys: " + b.keys.join(", ")),
        h("form", {
          class: "row",
          onsubmit: act(async () => {
            await api("PUT", "/v1/tenants/me/secrets/" + q(b.name), { body: { values: r.values() } });
            editor.replaceChildren();
            await load();
          }),
        }, r.el, h("button", { type: "submit" }, "Save (version " + (b.version + 1) + ")")),
      );
      editor.querySelector("input").focus();
    }
    root.replaceChildren(
      h("h1", {}, "Secret bundles"),
      h("p", { class: "note" }, "Values are write-only: the API never returns them."),
      h("form", {
        id: "bundle-create",
        onsubmit: act(async () => {
          await api("POST", "/v1/tenants/me/secrets", { body: { name: name.value, values: rows.values() } });
          renderBundles().catch(showError);
        }),
      }, h("div", { class: "row" }, h("label", { for: "bundle-name" }, "Bundle name", name)), rows.el, h("div", { class: "row" }, h("button", { type: "submit" }, "Create the bundle"))),
      h("table", { id: "bundles" }, h("thead", {}, h("tr", {}, ["Name", "Keys", "Version", "Updated", "Used by", ""].map((x) => h("th", { scope: "col" }, x)))), tbody),
      editor,
    );
    await load();
  }

  // -- agent sessions ----------------------------------------------------------------------
  async function renderSessions() {
    const root = main();
    const tmpl = h("input", { id: "ses-template", value: "standard" });
    const kind = h("select", { id: "ses-kind" }, h("option", { value: "shell" }, "shell (no LLM: each task is a bash command)"), h("option", { value: "deictic" }, "deictic (the LLM agent)"));
    const vendor = h("select", { id: "ses-vendor" }, h("option", { value: "anthropic" }, "anthropic"), h("option", { value: "openai" }, "openai"));
    const model = h("input", { id: "ses-model", placeholder: "claude-sonnet-4-5" });
    const picks = h("fieldset", { class: "row" }, h("legend", {}, "Secret bundles"));
    const tbody = h("tbody", {});
    const [bundles, sessions] = await Promise.all([api("GET", "/v1/tenants/me/secrets"), api("GET", "/v1/sessions")]);
    for (const b of bundles.secrets) {
      const id = "ses-b-" + b.name;
      picks.append(h("label", { class: "inline", for: id }, h("input", { type: "checkbox", id, value: b.name }), b.name));
    }
    if (!bundles.secrets.length) picks.append(h("span", { class: "note" }, "none yet"));
    tbody.replaceChildren(
      ...sessions.sessions.map((s) =>
        h("tr", { "data-session": s.chat_session_id },
          h("td", {}, h("a", { href: "#/session/" + q(s.chat_session_id), class: "mono" }, s.chat_session_id)),
          h("td", {}, s.state),
          h("td", {}, (s.agent && s.agent.kind) || "—"),
          h("td", {}, s.template),
          h("td", {}, when(s.created_at)),
          h("td", {}, when(s.expires_at)),
          h("td", {}, String(s.last_seq)),
        ),
      ),
    );
    async function start() {
      const body = { agent: { kind: kind.value }, template: tmpl.value };
      if (kind.value !== "shell") body.llm = { vendor: vendor.value, model: model.value };
      body.secrets = [...picks.querySelectorAll("input:checked")].map((x) => x.value);
      const out = await api("POST", "/v1/sessions", { body });
      store.setItem(S.sess(out.chat_session_id), out.jwt);
      location.hash = "#/session/" + q(out.chat_session_id);
    }
    root.replaceChildren(
      h("h1", {}, "Agent sessions"),
      h("form", { id: "ses-start", onsubmit: act(start) },
        h("div", { class: "row" },
          h("label", { for: "ses-kind" }, "Agent", kind),
          h("label", { for: "ses-template" }, "Template", tmpl),
          h("label", { for: "ses-vendor" }, "LLM vendor", vendor),
          h("label", { for: "ses-model" }, "Model", model)),
        picks,
        h("div", { class: "row" }, h("button", { type: "submit" }, "Start a session"))),
      h("table", { id: "sessions" }, h("thead", {}, h("tr", {}, ["Session", "State", "Agent", "Template", "Created", "Expires", "Events"].map((x) => h("th", { scope: "col" }, x)))), tbody),
    );
  }

  function eventItem(ev) {
    const seq = h("span", { class: "seq" }, "#" + ev.seq);
    const li = (...c) => h("li", { class: "ev-" + ev.type, "data-seq": ev.seq }, seq, ...c);
    switch (ev.type) {
      case "task_started": return li("Task ", h("span", { class: "mono" }, ev.task_id), " started");
      case "stdout": return li(h("pre", {}, ev.data));
      case "stderr": return li(h("pre", { class: "stderr" }, ev.data));
      case "message": return li(h("b", {}, "Agent: "), ev.text);
      case "tool_call": return li(h("b", {}, "Tool " + ev.name + ": "), h("pre", {}, typeof ev.input === "string" ? ev.input : JSON.stringify(ev.input, null, 1)));
      case "exit": return li("Task ", h("span", { class: "mono" }, ev.task_id), " ended: exit code " + ev.exit_code + ", " + ev.stop_reason);
      case "error": return li(h("b", {}, "Error " + ev.code + ": "), ev.message);
      case "secrets_updated": return li("Bundle " + ev.name + " is now version " + ev.version);
      default: return li(ev.type + " " + JSON.stringify(ev));
    }
  }

  async function renderSession(id) {
    const root = main();
    const info = await api("GET", "/v1/sessions/" + q(id));
    const list = h("ol", { id: "transcript", class: "transcript", "aria-live": "polite", "aria-label": "Session transcript" });
    const state = h("span", { id: "ses-state" }, info.state);
    const conn = h("span", { id: "ses-conn", class: "note" });
    const prompt = h("input", { id: "task-prompt", size: "60", autocomplete: "off", spellcheck: "false" });
    let lastSeq = 0;
    let ws = null;
    let alive = true;
    // The session token of the tab that started the session; any other tab (or this one
    // after its token was refused) asks the API for its own, as a tenant may.
    let jwt = store.getItem(S.sess(id));
    let fresh = false; // the token was just asked for: a refusal of it is final
    async function newToken() {
      jwt = (await api("POST", "/v1/sessions/" + q(id) + "/token")).jwt;
      store.setItem(S.sess(id), jwt);
      fresh = true;
    }
    function ended() {
      state.textContent = "ended";
      conn.textContent = "ended";
      alive = false;
    }
    function add(ev) {
      // seq orders everything: a replayed or repeated event is drawn once, in its place.
      if (typeof ev.seq !== "number" || ev.seq <= lastSeq) return;
      lastSeq = ev.seq;
      list.append(eventItem(ev));
    }
    async function history() {
      for (;;) {
        const page = await api("GET", "/v1/sessions/" + q(id) + "/events?after=" + lastSeq);
        page.events.forEach(add);
        if (!page.has_more) return;
      }
    }
    function connect() {
      if (!alive) return;
      const base = (location.protocol === "https:" ? "wss://" : "ws://") + location.host;
      // The session JWT is the one token in a URL: WebSocket handshakes carry no headers a
      // page can set (v1 spec: ?token= for browsers).
      ws = new WebSocket(base + "/v1/sessions/" + q(id) + "/ws?last_seq=" + lastSeq + "&token=" + q(jwt));
      sockets.push(ws);
      ws.onopen = () => { conn.textContent = "live"; fresh = false; };
      ws.onmessage = (m) => {
        let ev;
        try { ev = JSON.parse(m.data); } catch (e) { return; }
        if (ev.type === "error" && ev.seq === undefined) showError(new Error(ev.message + " (" + ev.code + ")"));
        else add(ev);
      };
      ws.onclose = (c) => {
        conn.textContent = "disconnected (" + c.code + (c.reason ? ": " + c.reason : "") + ")";
        if (c.code === 4404) {
          ended();
        } else if ((c.code === 4401 || c.code === 4403) && !fresh && alive) {
          newToken().then(connect, (err) => {
            alive = false;
            if (err.status === 409) ended();
            else showError(err);
          });
        } else if (c.code === 4401 || c.code === 4403) {
          alive = false;
        } else if (alive) {
          timers.push(setTimeout(connect, 1000)); // resumes after the last seq seen
        }
      };
    }
    function send(frame) {
      if (!ws || ws.readyState !== WebSocket.OPEN) throw new Error("Not connected to the session");
      ws.send(JSON.stringify(frame));
    }
    const controls = info.state !== "ended"
      ? [
        h("form", { id: "task-form", class: "row", onsubmit: act(() => { send({ type: "task", prompt: prompt.value }); prompt.value = ""; }) },
          h("label", { for: "task-prompt" }, info.agent && info.agent.kind === "shell" ? "Task (a bash command)" : "Task", prompt),
          h("button", { type: "submit" }, "Send")),
        h("div", { class: "row" }, h("button", { type: "button", id: "task-cancel", class: "danger", onclick: act(() => send({ type: "cancel" })) }, "Cancel the running task")),
      ]
      : [];
    root.replaceChildren(
      h("h1", {}, "Agent session ", h("span", { class: "mono" }, id)),
      h("p", {}, "State ", state, ", agent ", (info.agent && info.agent.kind) || "—", ", template ", info.template, ", sandbox ",
        info.sandbox_id ? h("a", { href: "#/sandbox/" + q(info.sandbox_id), class: "mono" }, info.sandbox_id) : "—", ", expires ", when(info.expires_at), ". ", conn),
      ...controls,
      h("div", { class: "row" }, h("button", {
        type: "button", class: "danger",
        onclick: act(async () => { await api("DELETE", "/v1/sessions/" + q(id)); alive = false; store.removeItem(S.sess(id)); location.hash = "#/sessions"; }),
      }, "End the session")),
      h("h2", {}, "Transcript"),
      list,
    );
    await history();
    if (!live(root)) return;
    timers.push({ stop: () => { alive = false; } });
    if (info.state === "ended") {
      ended();
      return;
    }
    if (!jwt) {
      try {
        await newToken();
      } catch (err) {
        if (err.status !== 409) throw err;
        ended(); // it ended meanwhile: the history above is all there is
        return;
      }
    }
    if (alive) connect();
  }

  // -- usage and templates -----------------------------------------------------------------
  async function renderUsage() {
    const root = main();
    const [usage, templates] = await Promise.all([api("GET", "/v1/tenants/me/usage"), api("GET", "/v1/templates")]);
    root.replaceChildren(
      h("h1", {}, "Usage and templates"),
      h("h2", {}, "Quotas"),
      h("table", { id: "usage" }, h("thead", {}, h("tr", {}, ["Quota", "Used", "Limit", "Set by"].map((x) => h("th", { scope: "col" }, x)))),
        h("tbody", {}, Object.entries(usage.quotas).map(([name, u]) =>
          h("tr", {}, h("td", {}, name.replace(/_/g, " ")), h("td", {}, String(u.used)), h("td", {}, String(u.limit)), h("td", { class: "mono" }, u.setting))))),
      h("h2", {}, "Templates"),
      h("table", { id: "templates" }, h("thead", {}, h("tr", {}, ["Template", "Versions", "Size", "Built", "Hosts"].map((x) => h("th", { scope: "col" }, x)))),
        h("tbody", {}, templates.templates.map((t) =>
          h("tr", {}, h("td", { class: "mono" }, t.name), h("td", {}, tags(t.versions)), h("td", {}, (t.size_bytes / 1e6).toFixed(0) + " MB"),
            h("td", {}, when(t.built_at)), h("td", {}, (t.hosts || []).join(", ")))))),
    );
  }

  // -- routing -----------------------------------------------------------------------------
  function stopPage() {
    for (const t of timers) {
      if (t && t.stop) t.stop();
      else { clearInterval(t); clearTimeout(t); }
    }
    timers = [];
    for (const s of sockets) s.close(1000);
    sockets = [];
  }

  async function route() {
    stopPage();
    showError(null);
    pageRoot = h("div", {}, h("p", { class: "note" }, "Loading…"));
    const root = pageRoot;
    $("#main").replaceChildren(root);
    if (!loggedIn()) {
      renderLogin();
      return;
    }
    $("#nav").hidden = false;
    $("#logout").hidden = false;
    $("#who").textContent = store.getItem(S.email) || "";
    const [, page, arg] = (location.hash || "#/sandboxes").match(/^#\/([a-z]+)\/?(.*)$/) || [null, "sandboxes", ""];
    for (const a of document.querySelectorAll("#nav a")) {
      const here = a.getAttribute("href") === "#/" + page || a.getAttribute("href") === "#/" + page + "s";
      if (here) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    const pages = {
      sandboxes: renderSandboxes, sandbox: renderSandbox, keys: renderKeys, bundles: renderBundles,
      sessions: renderSessions, session: renderSession, usage: renderUsage,
    };
    try {
      await (pages[page] || renderSandboxes)(decodeURIComponent(arg || ""));
      // A new page: its heading names it in the title, and keyboard and screen-reader focus
      // moves to it (unless the page put focus on its first field).
      const h1 = root.querySelector("h1");
      if (h1 && live(root)) {
        document.title = h1.textContent + " · Paddock console";
        if (!root.contains(document.activeElement)) {
          h1.tabIndex = -1;
          h1.focus();
        }
      }
    } catch (err) {
      if (!live(root)) return;
      root.replaceChildren(h("p", { class: "note" }, "This page could not load."));
      showError(err);
    }
  }

  window.addEventListener("hashchange", route);
  window.addEventListener("DOMContentLoaded", () => {
    $("#logout").addEventListener("click", act(logout));
    route();
  });
})();
