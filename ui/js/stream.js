// The app's deployments stream (WebSocket `/apps/{app}`) with reconnection. Owns the socket,
// the auth frame, the resume points (last line seen per deployment) and the reconnect policy:
// back-off after a drop, an immediate retry when the tab becomes visible or the network comes
// back, and a watchdog that treats a silent socket (a sleeping tab, a dead peer) as dropped.
// It hands events to its owner and never touches the DOM.

import { jwt } from './api.js';

// The server pings every 30 s by default; three missed pings mean the socket is dead.
const SILENCE_MS = 95_000;
// How often the silence is checked: a dead socket is noticed at most this long after SILENCE_MS.
const WATCHDOG_EVERY_MS = 5_000;
// Back-off between reconnects: doubling from the first to the last, so a restart is caught fast
// and a long outage does not hammer the server.
const RETRY_FIRST_MS = 250;
const RETRY_MAX_MS = 5_000;
// Close codes after which retrying cannot help (README: 4001 bad token, 4004 no such app).
const FATAL = new Set([4001, 4004, 1008]);

export class AppStream {
  /**
   * `app`: name or id. `options.query`: extra URL parameters (`logs=none`, `tail=0`,
   * `batch=lines` for `log_batch` frames…).
   * `options.resumeOf`: deployment id whose last line (from `lastLine()`) is sent as the
   * resume point. Callbacks: `onEvent(frame)`, `onState('connecting'|'live'|'reconnecting'|
   * 'closed', detail)`.
   */
  constructor(app, { query = {}, resumeOf = null, lastLine = () => 0, onEvent, onState }) {
    this.app = app;
    this.query = query;
    this.resumeOf = resumeOf;
    this.lastLine = lastLine;
    this.onEvent = onEvent;
    this.onState = onState || (() => {});
    this.retry = RETRY_FIRST_MS;
    this.stopped = false;
    this.ws = null;
    this.timer = null;
    this.watchdog = null;
    this.lastFrame = Date.now();
    this.wake = () => {
      if (!this.stopped && document.visibilityState === 'visible') this.kick();
    };
    document.addEventListener('visibilitychange', this.wake);
    window.addEventListener('online', this.wake);
    this.connect('connecting');
  }

  url() {
    const params = new URLSearchParams(this.query);
    if (this.resumeOf) {
      params.set('deployment', this.resumeOf);
      params.set('after', String(this.lastLine()));
    }
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const qs = params.toString();
    return `${scheme}//${location.host}/apps/${encodeURIComponent(this.app)}${qs ? `?${qs}` : ''}`;
  }

  connect(state) {
    clearTimeout(this.timer);
    if (this.stopped) return;
    this.onState(state);
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch (err) {
      this.schedule(String(err));
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      ws.send(JSON.stringify({ type: 'auth', data: { token: jwt() || '' } }));
      this.retry = RETRY_FIRST_MS;
      this.onState('live');
      this.feed();
    };
    ws.onmessage = (msg) => {
      this.feed();
      let frame;
      try { frame = JSON.parse(msg.data); } catch { return; }
      this.onEvent(frame);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.stopWatchdog();
      if (this.stopped) return;
      if (FATAL.has(ev.code)) {
        this.stopped = true;
        this.onState('closed', ev.code);
        return;
      }
      this.schedule(`closed (${ev.code})`);
    };
  }

  /**
   * Notes that the socket is alive (any frame proves it). Called per frame, so it only stores
   * the time: one interval per socket checks it, rather than a timer re-armed per line.
   */
  feed() {
    this.lastFrame = Date.now();
    if (this.watchdog) return;
    this.watchdog = setInterval(() => {
      if (Date.now() - this.lastFrame > SILENCE_MS) this.drop();
    }, WATCHDOG_EVERY_MS);
  }

  stopWatchdog() {
    clearInterval(this.watchdog);
    this.watchdog = null;
  }

  /** Treats the current socket as dead and reconnects. */
  drop() {
    this.stopWatchdog();
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onclose = null;
      ws.onmessage = null;
      try { ws.close(); } catch { /* already closed */ }
    }
    this.schedule('silent');
  }

  schedule(detail) {
    if (this.stopped) return;
    this.onState('reconnecting', detail);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect('reconnecting'), this.retry);
    this.retry = Math.min(this.retry * 2, RETRY_MAX_MS);
  }

  /** Reconnects now if the socket is not open (tab woke up, network is back). */
  kick() {
    // A socket silent for longer than the ping interval allows is dead even if it looks open
    // (a laptop that slept keeps a half-open TCP connection).
    if (this.ws && this.ws.readyState === WebSocket.OPEN && Date.now() - this.lastFrame > SILENCE_MS) {
      this.drop();
      return;
    }
    if (!this.ws || this.ws.readyState > WebSocket.OPEN) {
      this.retry = RETRY_FIRST_MS;
      this.connect('reconnecting');
    }
  }

  /** Closes for good (the view is left). */
  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.stopWatchdog();
    document.removeEventListener('visibilitychange', this.wake);
    window.removeEventListener('online', this.wake);
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onclose = null;
      ws.close();
    }
  }
}
