// app.js - the sbx console: sandboxes (list, create, remove), a terminal into
// one, one-shot commands, and its execs (list, re-attach).  Talks only to the
// public API (api.js); builds the DOM with textContent, never from HTML strings.

import { Api } from './api.js';
import { TermSession } from './terminal.js';

const $ = (id) => document.getElementById(id);
const api = new Api();
const KEY_STORE = 'sbx.console.key'; // sessionStorage: gone with the tab

const state = {
  sandboxes: [],
  selected: null, // sandbox id
  term: null,     // TermSession
};

// ------------------------------------------------------------------ helpers

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') e.className = v;
    else if (k === 'data') Object.assign(e.dataset, v);
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c ?? '')));
  return e;
}

function notice(msg, kind = 'error') {
  const n = $('notice');
  if (!msg) { n.hidden = true; return; }
  n.textContent = msg;
  n.className = kind === 'info' ? 'info' : '';
  n.hidden = false;
}

function describe(err) {
  if (err.kind === 'unauthorized') return 'The server wants an API key: enter one above. (' + err.message + ')';
  if (err.kind === 'forbidden') return 'This key may not do that: ' + err.message;
  return (err.kind ? err.kind + ': ' : '') + err.message;
}

// Run an async action; report its failure in the notice bar.
async function guarded(fn) {
  try {
    const r = await fn();
    return r;
  } catch (e) {
    notice(describe(e));
    return undefined;
  }
}

function shortTime(t) {
  if (!t) return '';
  const d = new Date(t);
  return isNaN(d) ? t : d.toLocaleTimeString();
}

function selectedSandbox() {
  return state.sandboxes.find((s) => s.id === state.selected) || null;
}

// ---------------------------------------------------------------- sandboxes

async function loadSandboxes() {
  const list = await guarded(() => api.listSandboxes());
  if (!list) return;
  notice(null);
  state.sandboxes = list.data || [];
  renderSandboxes();
  if (state.selected && !selectedSandbox()) select(null);
  else if (state.selected) renderDetail();
}

function renderSandboxes() {
  const body = $('sandboxes').tBodies[0];
  body.replaceChildren(...state.sandboxes.map((sb) => el('tr', {
    class: sb.id === state.selected ? 'selected' : '', data: { id: sb.id },
    onclick: () => select(sb.id),
  },
  el('td', { title: sb.id }, sb.name || sb.id),
  el('td', { class: 'state-' + sb.state }, sb.state),
  el('td', {}, sb.image),
  el('td', {},
    el('button', {
      type: 'button', class: 'open', textContent: 'Terminal', disabled: sb.state !== 'running',
      onclick: (ev) => { ev.stopPropagation(); select(sb.id); openTerminal(); },
    }),
    ' ',
    el('button', {
      type: 'button', class: 'danger remove', textContent: 'Remove',
      onclick: (ev) => { ev.stopPropagation(); removeSandbox(sb); },
    })))));
  $('sandboxes-empty').hidden = state.sandboxes.length > 0;
}

async function createSandbox(ev) {
  ev.preventDefault();
  const fields = {};
  const name = $('create-name').value.trim();
  const image = $('create-image').value.trim();
  if (name) fields.name = name;
  if (image) fields.image = image;
  $('create').disabled = true;
  notice('creating a sandbox…', 'info');
  const sb = await guarded(() => api.createSandbox(fields));
  $('create').disabled = false;
  if (!sb) return;
  notice(null);
  $('create-name').value = '';
  await loadSandboxes();
  select(sb.id);
}

async function removeSandbox(sb) {
  if (!confirm('Remove sandbox ' + (sb.name || sb.id) + ' with its files and exec history?')) return;
  if (state.term && state.term.sandboxId === sb.id) closeTerminal();
  const ok = await guarded(() => api.removeSandbox(sb.id).then(() => true));
  if (ok) {
    if (state.selected === sb.id) select(null);
    await loadSandboxes();
  }
}

function select(id) {
  state.selected = id;
  renderSandboxes();
  $('detail-panel').hidden = !id;
  if (!id) return;
  $('run-result').hidden = true;
  renderDetail();
  loadExecs();
}

function renderDetail() {
  const sb = selectedSandbox();
  if (!sb) return;
  $('detail-name').textContent = sb.name || '';
  $('detail-id').textContent = sb.id + ' · ' + sb.state;
  const running = sb.state === 'running';
  $('open-terminal').disabled = !running;
  $('run').disabled = !running;
}

// -------------------------------------------------------------- run command

async function runCommand(ev) {
  ev.preventDefault();
  const sb = selectedSandbox();
  const command = $('run-command').value;
  if (!sb || !command.trim()) return;
  $('run').disabled = true;
  $('run-status').textContent = 'running…';
  $('run-status').className = 'mono';
  $('run-stdout').textContent = '';
  $('run-stderr').textContent = '';
  $('run-result').hidden = false;
  try {
    const out = await api.shell(sb.id, command);
    showOutput(out);
  } catch (e) {
    const d = e.detail || {};
    if (e.kind === 'exec_timeout') {
      showOutput(d, 'timed out');
    } else {
      const f = d.failure ? ' (' + d.failure.kind + (d.failure.path ? ' ' + d.failure.path : '') + ')' : '';
      $('run-status').textContent = describe(e) + f;
      $('run-status').className = 'mono bad';
    }
  } finally {
    $('run').disabled = false;
    loadExecs();
  }
}

function showOutput(out, why) {
  const how = why || (out.signal ? 'killed by signal ' + out.signal : 'exit code ' + out.exit_code);
  const trunc = (out.stdout_truncated || out.stderr_truncated) ? ' · output truncated' : '';
  $('run-status').textContent = how + (out.duration_ms !== undefined ? ' · ' + out.duration_ms + ' ms' : '') +
    (out.exec_id ? ' · ' + out.exec_id : '') + trunc;
  $('run-status').className = 'mono ' + (out.success ? 'ok' : 'bad');
  const text = (s) => (out.encoding === 'base64' ? atob(s || '') : (s || ''));
  $('run-stdout').textContent = text(out.stdout);
  $('run-stderr').textContent = text(out.stderr);
}

// -------------------------------------------------------------------- execs

async function loadExecs() {
  const sb = selectedSandbox();
  if (!sb) return;
  let list;
  try {
    list = await api.listExecs(sb.id);
  } catch (e) {
    if (e.status !== 404) notice(describe(e));
    return;
  }
  if (state.selected !== sb.id) return;
  const body = $('execs').tBodies[0];
  body.replaceChildren(...(list.data || []).map((x) => {
    const cmd = [x.cmd, ...(x.args || [])].join(' ');
    const exit = x.state === 'running' ? '' : x.signal ? 'sig ' + x.signal : (x.exit_code ?? '');
    // the action first: it stays visible when the table scrolls sideways
    return el('tr', { data: { id: x.exec_id } },
      el('td', {}, x.state === 'running'
        ? el('button', { type: 'button', class: 'attach', textContent: 'Attach', onclick: () => attachExec(x) })
        : ''),
      el('td', { class: 'state-' + x.state }, x.state),
      el('td', {}, exit),
      el('td', { class: 'mono cmd', title: cmd }, cmd),
      el('td', {}, x.tty ? 'yes' : ''),
      el('td', {}, shortTime(x.started_at)),
      el('td', { class: 'mono' }, x.exec_id));
  }));
}

// ----------------------------------------------------------------- terminal

function newTerminal(title, sandboxId) {
  closeTerminal();
  $('terminal-panel').hidden = false;
  $('term-title').textContent = title;
  let session;
  try {
    session = new TermSession($('terminal'), api, {
      onStatus: (s) => { $('term-status').textContent = s; },
      onEnd: () => { loadExecs(); },
    });
  } catch (e) {
    notice(e.message);
    $('terminal-panel').hidden = true;
    return null;
  }
  session.sandboxId = sandboxId;
  state.term = session;
  return session;
}

function openTerminal() {
  const sb = selectedSandbox();
  if (!sb || sb.state !== 'running') return;
  const t = newTerminal((sb.name || sb.id) + ' — ' + (sb.shell || '/bin/sh'), sb.id);
  if (t) {
    t.start(sb, { detach: $('detach').checked });
    setTimeout(loadExecs, 500);
  }
}

function attachExec(x) {
  const t = newTerminal('attached to ' + x.exec_id + ' — ' + x.cmd, x.sandbox_id);
  if (t) t.attach(x.exec_id);
}

function closeTerminal() {
  if (state.term) {
    state.term.dispose();
    state.term = null;
    setTimeout(loadExecs, 300);
  }
  $('terminal-panel').hidden = true;
}

// --------------------------------------------------------------------- boot

function useKey(ev) {
  if (ev) ev.preventDefault();
  try {
    api.setKey($('key').value);
  } catch (e) {
    notice(e.message);
    return;
  }
  if (api.key) sessionStorage.setItem(KEY_STORE, api.key);
  else sessionStorage.removeItem(KEY_STORE);
  boot();
}

async function boot() {
  const v = await guarded(() => api.version());
  $('server').textContent = v ? 'sbxd ' + v.version + ' · driver ' + v.default_driver : 'server unreachable';
  await loadSandboxes();
}

$('key').value = sessionStorage.getItem(KEY_STORE) || '';
try { api.setKey($('key').value); } catch (e) { $('key').value = ''; }
$('key-form').addEventListener('submit', useKey);
$('create-form').addEventListener('submit', createSandbox);
$('refresh').addEventListener('click', loadSandboxes);
$('refresh-execs').addEventListener('click', loadExecs);
$('run-form').addEventListener('submit', runCommand);
$('open-terminal').addEventListener('click', openTerminal);
$('term-close').addEventListener('click', closeTerminal);
$('term-interrupt').addEventListener('click', () => { if (state.term) { state.term.signal('SIGINT'); state.term.term.focus(); } });
$('term-kill').addEventListener('click', () => { if (state.term) state.term.kill(); });
// keep the lists current without a push channel: poll while the tab is visible
setInterval(() => {
  if (document.hidden) return;
  loadSandboxes();
  if (state.selected) loadExecs();
}, 5000);

// a read-only handle for tests and debugging: the terminal's text, its size
window.sbxConsole = {
  screen() {
    const t = state.term && state.term.term;
    if (!t) return '';
    const b = t.buffer.active, lines = [];
    for (let i = 0; i < b.length; i++) lines.push(b.getLine(i).translateToString(true));
    return lines.join('\n');
  },
  size() { return state.term ? { rows: state.term.rows, cols: state.term.cols } : null; },
  execId() { return state.term ? state.term.execId : null; },
};

boot();
