// The sandbox page's terminal: xterm.js (web/console/vendor.py pins it, served from this
// origin) over the terminal WebSocket (web/terminal.py). Loaded by console.js on a sandbox's
// page only, after xterm.js and its addons, so the first page stays small.
//
// - The socket opens with a one-use ticket fetched just before with the API key (a browser
//   cannot put the key on a WebSocket handshake; the key itself is never in a URL).
// - Output comes as binary frames (the shell's bytes, decoded by xterm.js); keys go out as
//   {"type":"input"} frames, in pieces of PIECE characters; a paste over PASTE_MAX characters
//   is cut there (the file upload is the way for more); the size follows the box.
// - xterm.js draws on a canvas (its DOM renderer writes <style> elements, which the console's
//   Content-Security-Policy refuses); screenReaderMode keeps the screen's text in the page
//   for screen readers. F6 leaves the terminal (it takes Tab and Shift+Tab itself).
"use strict";

(function () {
  const PIECE = 1024;
  const PASTE_MAX = 64 * 1024;
  const NO_TERMINAL = 4501; // the sandbox backend has no terminals (docker)

  // opts: {path, ticket: async () => url with the ticket, onState(state, text), leave()}
  // state: "connecting", "open", "closed", "unsupported". Returns {close()}.
  function open(box, opts) {
    const term = new window.Terminal({
      screenReaderMode: true,
      cursorBlink: true,
      fontSize: 14,
      fontFamily: "ui-monospace, Menlo, Consolas, monospace",
      scrollback: 2000,
      theme: { background: "#0f1720", foreground: "#e6edf3" },
    });
    // Before open(): the canvas renderer replaces the DOM renderer from the start.
    term.loadAddon(new window.CanvasAddon.CanvasAddon());
    const fit = new window.FitAddon.FitAddon();
    term.loadAddon(fit);
    term.open(box);
    fit.fit();
    term.attachCustomKeyEventHandler((ev) => {
      if (ev.key === "F6" && ev.type === "keydown") {
        opts.leave();
        return false;
      }
      return true;
    });
    let ws = null;
    let closed = false;
    const send = (frame) => {
      if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(frame));
    };
    term.onData((data) => {
      if (data.length > PASTE_MAX) {
        term.write("\r\n\x1b[33m[console] paste cut to " + PASTE_MAX + " characters\x1b[0m\r\n");
        data = data.slice(0, PASTE_MAX);
      }
      for (let i = 0; i < data.length; i += PIECE) send({ type: "input", data: data.slice(i, i + PIECE) });
    });
    term.onBinary((data) => {
      if (!ws || ws.readyState !== WebSocket.OPEN) return;
      const bytes = new Uint8Array(data.length);
      for (let i = 0; i < data.length; i++) bytes[i] = data.charCodeAt(i) & 0xff;
      ws.send(bytes);
    });
    term.onResize(({ cols, rows }) => send({ type: "resize", cols, rows }));
    let pending = null;
    const resized = new ResizeObserver(() => {
      clearTimeout(pending);
      pending = setTimeout(() => { if (!closed) fit.fit(); }, 100);
    });
    resized.observe(box);

    async function connect() {
      opts.onState("connecting", "Connecting…");
      let url;
      try {
        url = await opts.ticket(term.cols, term.rows);
      } catch (err) {
        opts.onState("closed", "The terminal could not open: " + (err.message || err));
        return;
      }
      if (closed) return;
      const sock = new WebSocket(url);
      ws = sock;
      sock.binaryType = "arraybuffer";
      sock.onmessage = (m) => {
        if (ws !== sock) return; // a socket this terminal has left (reconnect)
        if (typeof m.data !== "string") {
          term.write(new Uint8Array(m.data));
          return;
        }
        let f;
        try { f = JSON.parse(m.data); } catch (e) { return; }
        if (f.type === "ready") {
          opts.onState("open", "Connected: a login shell in the sandbox (leaving this page ends it; F6 leaves the terminal).");
          // Into the terminal, unless the user is already at another control.
          const at = document.activeElement;
          if (!at || at === document.body || at.tagName === "H1") term.focus();
        } else if (f.type === "exit") {
          opts.onState("closed", "The shell exited" + (f.exit_code === null ? "." : " with code " + f.exit_code + "."));
        } else if (f.type === "error") {
          opts.onState(f.code === "backend_unsupported" ? "unsupported" : "closed", f.message);
        }
      };
      sock.onclose = (c) => {
        if (ws !== sock) return;
        ws = null;
        if (closed) return;
        if (c.code === NO_TERMINAL) {
          opts.onState("unsupported", "This sandbox's backend has no terminals (" + (c.reason || "docker") + "): use the command box below.");
        } else if (c.code !== 1000) {
          opts.onState("closed", "The terminal closed (" + c.code + (c.reason ? ": " + c.reason : "") + ").");
        } else {
          opts.onState("closed", c.reason ? "The terminal closed: " + c.reason + "." : "The terminal closed.");
        }
      };
    }

    connect();
    return {
      reconnect() {
        const old = ws;
        ws = null;
        if (old) old.close(1000);
        term.reset();
        connect();
      },
      close() {
        closed = true;
        resized.disconnect();
        if (ws) ws.close(1000);
        term.dispose();
      },
    };
  }

  window.PaddockTerminal = { open };
})();
