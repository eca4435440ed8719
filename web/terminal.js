// terminal.js - one xterm.js terminal bound to one exec WebSocket: a new tty
// exec (`start`) or a re-attached one (/v1/execs/{id}/ws).  Keys go out as
// `stdin`, size changes as `resize`, output comes back as `stdout`/`stderr`.

/* global Terminal, FitAddon */

const THEME = { background: '#111111', foreground: '#e6e6e6', cursor: '#e6e6e6' };

function b64ToBytes(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export class TermSession {
  // container: the element the terminal fills; onStatus(text), onEnd() report back.
  constructor(container, api, { onStatus = () => {}, onEnd = () => {} } = {}) {
    if (typeof Terminal !== 'function' || !globalThis.FitAddon)
      throw new Error('xterm.js did not load');
    this.api = api;
    this.onStatus = onStatus;
    this.onEnd = onEnd;
    this.ws = null;
    this.execId = null;
    this.ended = false;
    this.live = false;     // `started` seen: the exec takes resize messages
    this.sentSize = '';    // the size the exec last heard of, "rowsxcols"

    this.term = new Terminal({
      cursorBlink: true, convertEol: false, scrollback: 5000, theme: THEME,
      fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, monospace', fontSize: 14,
    });
    this.fit = new FitAddon.FitAddon();
    this.term.loadAddon(this.fit);
    container.replaceChildren();
    this.term.open(container);
    this.fitNow();
    this.term.onData((d) => this.send({ type: 'stdin', data: d }));
    this.term.onResize(() => this.syncSize());
    // the page, the panel or the window changes size: refit, which resizes the pty
    this.observer = new ResizeObserver(() => this.fitNow());
    this.observer.observe(container);
    this.term.focus();
  }

  fitNow() {
    try { this.fit.fit(); } catch (e) { /* not laid out yet */ }
  }

  // Tell the exec the terminal's size if it changed.  Before `started` a
  // resize would find no running exec, so it waits for `started`.
  syncSize() {
    const size = this.rows + 'x' + this.cols;
    if (!this.live || size === this.sentSize) return;
    this.sentSize = size;
    this.send({ type: 'resize', rows: this.rows, cols: this.cols });
  }

  get rows() { return this.term.rows; }
  get cols() { return this.term.cols; }

  // Start a new interactive shell in sandbox sb (its own shell, on a pty).
  start(sb, { detach = false } = {}) {
    this.onStatus('connecting…');
    this.connect('/v1/sandboxes/' + encodeURIComponent(sb.id) + '/exec/ws', () => {
      this.sentSize = this.rows + 'x' + this.cols;
      return {
        type: 'start', cmd: sb.shell || '/bin/sh', args: ['-i'], tty: true,
        rows: this.rows, cols: this.cols, detach,
      };
    });
  }

  // Re-attach to exec id: replays its retained output, then goes live.
  attach(execId) {
    this.execId = execId;
    this.onStatus('attaching…');
    this.connect('/v1/execs/' + encodeURIComponent(execId) + '/ws', null);
  }

  connect(path, startMsg) {
    let ws;
    try {
      ws = this.api.socket(path);
    } catch (e) {
      this.finish('cannot open a WebSocket: ' + e.message);
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (startMsg) this.send(startMsg());
    };
    ws.onmessage = (ev) => this.onMessage(ev.data);
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (!this.ended) {
        const why = ev.code === 1000 ? 'closed' : 'closed (' + ev.code + (ev.reason ? ': ' + ev.reason : '') + ')';
        this.finish(why);
      }
    };
  }

  onMessage(raw) {
    if (typeof raw !== 'string') return; // sbx.v1.json sends text frames only
    let m;
    try { m = JSON.parse(raw); } catch (e) { return; }
    switch (m.type) {
      case 'started':
        this.execId = m.exec_id;
        this.live = true;
        this.syncSize(); // a re-attached exec, or one that was resized while starting
        this.onStatus('running, exec ' + m.exec_id + (m.pid ? ' (pid ' + m.pid + ')' : ''));
        break;
      case 'stdout':
      case 'stderr':
        if (m.data !== undefined) this.term.write(m.data);
        else if (m.data_b64 !== undefined) this.term.write(b64ToBytes(m.data_b64));
        break;
      case 'gap':
        this.term.write('\r\n\x1b[33m[' + (m.to - m.from) + ' bytes of ' + m.stream + ' no longer retained]\x1b[0m\r\n');
        break;
      case 'stdin_error':
        this.onStatus('stdin refused: ' + ((m.failure && m.failure.message) || 'unknown'));
        break;
      case 'error':
        // a resize that met an exec which had just ended: nothing to show
        if (m.error && m.error.kind === 'sandbox_not_running') break;
        this.term.write('\r\n\x1b[31m[' + ((m.error && (m.error.kind + ': ' + m.error.message)) || 'error') + ']\x1b[0m\r\n');
        break;
      case 'exited': {
        this.live = false;
        const how = m.signal ? 'killed by signal ' + m.signal : 'exit code ' + m.exit_code;
        this.term.write('\r\n\x1b[90m[' + how + ']\x1b[0m\r\n');
        this.finish(how);
        break;
      }
      case 'failed': {
        this.live = false;
        const f = m.failure || {};
        this.term.write('\r\n\x1b[31m[did not start: ' + (f.kind || '') + ' ' + (f.message || '') + ']\x1b[0m\r\n');
        this.finish('failed: ' + (f.kind || 'unknown'));
        break;
      }
      case 'done':
        break;
    }
  }

  send(obj) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(obj));
  }

  signal(name) { this.send({ type: 'signal', signal: name }); }
  kill() { this.send({ type: 'kill' }); }

  finish(status) {
    if (this.ended) return;
    this.ended = true;
    this.onStatus(status);
    this.onEnd();
  }

  // Close the socket (a started, non-detached exec dies with it) and the terminal.
  dispose() {
    this.ended = true;
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000);
    this.observer.disconnect();
    this.term.dispose();
  }
}
