// api.js - the public sbx REST and WebSocket API, as the console uses it.
// A key, when set, goes as `Authorization: Bearer <key>` on REST and as the
// `sbx.token.<key>` subprotocol on WebSockets (browsers cannot set headers there).

export class ApiError extends Error {
  constructor(status, kind, message, detail) {
    super(message);
    this.status = status;
    this.kind = kind;
    this.detail = detail || {};
  }
}

// RFC 7230 token characters: what a WebSocket subprotocol may contain
const TOKEN_RE = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

export class Api {
  constructor(base = '') {
    this.base = base;
    this.key = '';
  }

  setKey(key) {
    key = (key || '').trim();
    if (key && !TOKEN_RE.test(key))
      throw new Error('the key has characters a WebSocket subprotocol cannot carry');
    this.key = key;
  }

  // One REST call; resolves to the parsed JSON (null for 204), throws ApiError.
  async request(method, path, body) {
    const headers = { 'Accept': 'application/json' };
    if (this.key) headers['Authorization'] = 'Bearer ' + this.key;
    const init = { method, headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(this.base + path, init);
    } catch (e) {
      throw new ApiError(0, 'network', 'cannot reach the server: ' + e.message);
    }
    if (resp.status === 204) return null;
    const text = await resp.text();
    let obj = null;
    try { obj = text ? JSON.parse(text) : null; } catch (e) { /* not JSON: reported below */ }
    if (!resp.ok) {
      const err = obj && obj.error;
      if (err) throw new ApiError(resp.status, err.kind, err.message, err);
      throw new ApiError(resp.status, 'http_' + resp.status, text.slice(0, 200) || resp.statusText);
    }
    return obj;
  }

  version() { return this.request('GET', '/v1/version'); }
  listSandboxes() { return this.request('GET', '/v1/sandboxes?limit=500'); }
  createSandbox(fields) { return this.request('POST', '/v1/sandboxes', fields); }
  removeSandbox(ref) { return this.request('DELETE', '/v1/sandboxes/' + encodeURIComponent(ref)); }
  shell(ref, command) {
    return this.request('POST', '/v1/sandboxes/' + encodeURIComponent(ref) + '/shell', { command });
  }
  listExecs(ref) {
    return this.request('GET', '/v1/sandboxes/' + encodeURIComponent(ref) + '/execs?limit=100');
  }

  // A WebSocket on path; the server picks sbx.v1.json, never echoes the token.
  socket(path) {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = proto + '//' + location.host + this.base + path;
    const protocols = ['sbx.v1.json'];
    if (this.key) protocols.push('sbx.token.' + this.key);
    return new WebSocket(url, protocols);
  }
}
