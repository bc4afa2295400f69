// The log viewer of one deployment. Owns the virtualised rendering (only the rows in view plus
// a margin are in the DOM; fixed row height unless wrap is on), the line cache (chunks loaded by
// range from `/lines`, tail first, evicted when far away), the live follow over the stream
// (resume from the last line it has: lines are keyed by number, so none is lost or doubled),
// search through the search endpoint, steps (`-----> ` markers) with their durations and
// collapsing, permalinks (#L123), copy and the raw download. Log text only ever goes in as text
// (ansi.render); it never reads the whole log into the tab.

import * as api from './api.js';
import { AppStream } from './stream.js';
import { plain, render } from './ansi.js';
import { h, replace, reconcile, toast, duration, TERMINAL } from './dom.js';

// Lines per ranged read and cache chunk (the API's default page; max is 5000).
const CHUNK = 1000;
// Chunks kept in memory (100k lines): enough for fast back-and-forth scrolling, bounded for a
// 1 M-line log.
const MAX_CHUNKS = 100;
// Lines of the first read: more than any screen, small enough to be instant.
const TAIL = 300;
// Rows rendered above and below the visible ones, so a fast scroll rarely shows gaps.
const MARGIN = 30;
// Browsers stop honouring element heights around 33 M px; past this the scroll position maps
// proportionally to lines instead of one row per ROW px.
const MAX_SPACER_PX = 15_000_000;
// Search page size (the endpoint's max is 1000).
const SEARCH_PAGE = 1000;
// Steps inspected for titles and durations (a log with more markers lists the first ones).
const MAX_STEPS = 200;
const STEP_MARK = '-----> ';
const ERROR_MARK = '!     ';

export class LogView {
  /** `deployment`: the API object; `onStatus(status)` is called on live status changes. */
  constructor(app, deployment, onStatus) {
    this.app = app;
    this.id = deployment.id;
    this.status = deployment.status;
    this.onStatus = onStatus || (() => {});
    this.total = 0;
    this.chunks = new Map();
    this.inflight = new Set();
    this.rowCache = new Map();
    this.hidden = [];
    this.steps = [];
    this.matches = [];
    this.matchSet = new Set();
    this.matchTotal = 0;
    this.matchCapped = false;
    this.cur = -1;
    this.query = '';
    this.target = 0;
    this.follow = true;
    this.wrap = false;
    this.times = false;
    this.row = 18;
    this.liveQueue = [];
    this.filling = false;
    this.stream = null;
    this.frame = 0;
    this.root = this.build();
  }

  // ---- layout ---------------------------------------------------------------------------

  build() {
    this.searchInput = h('input', { id: 'log-search', type: 'search', placeholder: 'Search the whole log', autocomplete: 'off' });
    this.count = h('span', { class: 'count', 'aria-live': 'polite', id: 'search-count' });
    const form = h('form', { class: 'search', role: 'search', onsubmit: (e) => { e.preventDefault(); this.search(this.searchInput.value, e.submitter && e.submitter.dataset.dir === 'prev' ? -1 : 1); } },
      h('label', { for: 'log-search', class: 'sr-only', text: 'Search the log' }),
      this.searchInput,
      h('button', { type: 'submit', text: 'Find' }),
      h('button', { type: 'button', 'aria-label': 'Previous match', text: '↑', onclick: () => this.step(-1) }),
      h('button', { type: 'button', 'aria-label': 'Next match', text: '↓', onclick: () => this.step(1) }),
      this.count);
    this.searchInput.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && e.shiftKey) { e.preventDefault(); this.search(this.searchInput.value, -1); }
    });
    const toggle = (id, label, fn) => {
      const box = h('input', { type: 'checkbox', id, onchange: (e) => fn(e.target.checked) });
      return h('label', { class: 'toggle', for: id }, box, ` ${label}`);
    };
    this.endButton = h('button', { type: 'button', class: 'jump-end', hidden: true, text: 'Jump to end ↓', onclick: () => this.jumpEnd() });
    this.state = h('span', { class: 'stream-state', id: 'stream-state', 'aria-live': 'polite' });
    const tools = h('div', { class: 'log-tools' },
      form,
      h('div', { class: 'log-buttons' },
        toggle('opt-times', 'Timestamps', (on) => { this.times = on; this.rerender(); }),
        toggle('opt-wrap', 'Wrap', (on) => { this.wrap = on; this.scroller.classList.toggle('wrap', on); this.rerender(); }),
        h('button', { type: 'button', id: 'first-error', text: 'First error', onclick: () => this.firstError() }),
        h('button', { type: 'button', id: 'copy', text: 'Copy', onclick: () => this.copy() }),
        h('button', { type: 'button', id: 'download', text: 'Download raw', onclick: () => this.download() }),
        this.state));
    this.stepsList = h('ol', { class: 'steps-list' });
    this.stepsBox = h('details', { class: 'steps', hidden: true }, h('summary', { text: 'Steps' }), this.stepsList);
    this.rows = h('div', { class: 'log-rows' });
    this.spacer = h('div', { class: 'log-spacer' }, this.rows);
    this.scroller = h('div', { class: 'log-scroll', tabindex: '0', role: 'log', 'aria-label': 'Deployment log', id: 'log' }, this.spacer);
    this.scroller.addEventListener('scroll', () => this.onScroll(), { passive: true });
    this.scroller.addEventListener('wheel', (e) => { if (e.deltaY < 0) this.setFollow(false); }, { passive: true });
    this.scroller.addEventListener('keydown', (e) => this.onKey(e));
    this.scroller.addEventListener('click', (e) => this.onClick(e));
    // The view's height, kept from the observer: reading clientHeight in every render forced a
    // layout per live frame (the spacer's height had just changed).
    this.viewHeight = 0;
    this.resize = new ResizeObserver((entries) => {
      this.viewHeight = entries[entries.length - 1].contentRect.height;
      this.rerender();
    });
    this.resize.observe(this.scroller);
    return h('section', { class: 'logview', 'aria-label': 'Log' }, tools, this.stepsBox,
      h('div', { class: 'log-frame' }, this.scroller, this.endButton));
  }

  // ---- data -----------------------------------------------------------------------------

  get(n) {
    const chunk = this.chunks.get(Math.floor((n - 1) / CHUNK));
    return chunk ? chunk[(n - 1) % CHUNK] : undefined;
  }

  put(line) {
    const k = Math.floor((line.n - 1) / CHUNK);
    let chunk = this.chunks.get(k);
    if (!chunk) {
      chunk = new Array(CHUNK);
      this.chunks.set(k, chunk);
    }
    chunk[(line.n - 1) % CHUNK] = line;
  }

  /** Loads the chunks holding missing lines among `from..to`, then re-renders. */
  ensure(from, to) {
    const want = new Set();
    for (let n = from; n <= to; n++) {
      if (!this.get(n)) want.add(Math.floor((n - 1) / CHUNK));
    }
    for (const k of want) {
      if (this.inflight.has(k)) continue;
      this.inflight.add(k);
      this.loadChunk(k)
        .then(() => {
          this.evict(k);
          this.rerender();
        })
        .catch((err) => toast(`Could not load lines: ${err.message}`, 'error'))
        .finally(() => this.inflight.delete(k));
    }
  }

  /**
   * Reads chunk `k` whole: the server ends a range early past MAX_RANGE_BYTES (4 MiB of long
   * lines), so a short answer is continued from the line after its last one.
   */
  async loadChunk(k) {
    const end = (k + 1) * CHUNK;
    let from = k * CHUNK + 1;
    while (from <= end) {
      const res = await api.lines(this.app, this.id, { from, limit: end - from + 1 });
      for (const line of res.lines) this.put(line);
      const last = res.lines.length ? res.lines[res.lines.length - 1].n : 0;
      if (last < from || last >= Math.min(end, res.lastLine)) return;
      from = last + 1;
    }
  }

  /** Drops the chunks farthest from chunk `near` past MAX_CHUNKS. */
  evict(near) {
    if (this.chunks.size <= MAX_CHUNKS) return;
    const keep = Math.floor((this.total - 1) / CHUNK);
    const far = [...this.chunks.keys()].filter((k) => k !== keep)
      .sort((a, b) => Math.abs(b - near) - Math.abs(a - near));
    while (this.chunks.size > MAX_CHUNKS && far.length) this.chunks.delete(far.shift());
  }

  /** First screen: the tail, then the stream for a running deployment. */
  async open(hashLine) {
    const res = await api.lines(this.app, this.id, { tail: TAIL });
    for (const line of res.lines) this.put(line);
    this.total = res.lastLine;
    // The deployment may have moved on since its JSON was read: the header follows.
    if (res.status && res.status !== this.status) {
      this.status = res.status;
      this.onStatus(res.status);
    }
    this.measure();
    if (hashLine) this.goto(hashLine);
    else this.jumpEnd();
    if (!TERMINAL.has(this.status)) this.live();
    else this.setState('');
    this.loadSteps();
  }

  live() {
    this.stream = new AppStream(this.app, {
      // tail=0: no replay of the app's other deployments; ours resumes after our last line.
      // batch=lines: a segment's lines in one message (the browser's cost is per message).
      query: { tail: '0', batch: 'lines' },
      resumeOf: this.id,
      lastLine: () => this.total,
      onEvent: (frame) => this.onFrame(frame),
      onState: (state) => this.setState(state),
    });
  }

  setState(state) {
    const text = { connecting: 'Connecting…', live: 'Live', reconnecting: 'Reconnecting…', closed: 'Disconnected' }[state] || '';
    this.state.textContent = text;
    this.state.dataset.state = state;
  }

  onFrame(frame) {
    if (frame.id !== this.id) return;
    if (frame.type === 'log_batch') {
      // Line i of the batch is line seq + i; each goes through the same gap and dedup rules.
      const lines = (frame.data && frame.data.lines) || [];
      for (let i = 0; i < lines.length; i++) this.liveQueue.push({ n: frame.seq + i, at: frame.at, text: lines[i] });
      this.drain();
    } else if (frame.type === 'log') {
      this.liveQueue.push({ n: frame.seq, at: frame.at, text: frame.data ? frame.data.content : '' });
      this.drain();
    } else if (frame.type === 'status') {
      this.liveQueue.push({ status: frame.data.status });
      this.drain();
    }
  }

  /** Applies live frames in order; a gap (lines the stream skipped) is read by range first. */
  async drain() {
    if (this.filling) return;
    let grew = false;
    while (this.liveQueue.length) {
      const item = this.liveQueue[0];
      if (item.status) {
        this.liveQueue.shift();
        this.status = item.status;
        this.onStatus(item.status);
        if (TERMINAL.has(item.status)) {
          this.stream.close();
          this.setState('');
          this.loadSteps();
        }
        continue;
      }
      if (item.n <= this.total) { this.liveQueue.shift(); continue; }
      if (item.n > this.total + 1) {
        this.filling = true;
        try {
          const res = await api.lines(this.app, this.id, { from: this.total + 1, limit: Math.min(item.n - this.total - 1, 5000) });
          for (const line of res.lines) {
            if (line.n === this.total + 1) { this.put(line); this.total = line.n; }
          }
        } catch (err) {
          toast(`Could not load lines: ${err.message}`, 'error');
        } finally {
          this.filling = false;
        }
        grew = true;
        continue;
      }
      this.liveQueue.shift();
      this.put(item);
      this.total = item.n;
      grew = true;
    }
    if (grew) this.scheduleRender();
  }

  /**
   * One render per animation frame however many live lines arrived (a fast log sends thousands
   * a second); following keeps the end in view.
   */
  scheduleRender() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.evict(Math.floor((this.total - 1) / CHUNK));
      if (this.follow) this.jumpEnd();
      else this.rerender();
    });
  }

  // ---- collapsed steps: visible index <-> line number -------------------------------------

  rangeLen(r) {
    return Math.max(0, Math.min(r.end, this.total) - r.start + 1);
  }

  visibleCount() {
    let n = this.total;
    for (const r of this.hidden) n -= this.rangeLen(r);
    return Math.max(0, n);
  }

  lineAt(idx) {
    let n = idx + 1;
    for (const r of this.hidden) {
      if (r.start <= n) n += this.rangeLen(r);
      else break;
    }
    return n;
  }

  indexOf(n) {
    let idx = n - 1;
    for (const r of this.hidden) {
      if (Math.min(r.end, this.total) < n) idx -= this.rangeLen(r);
      else break;
    }
    return idx;
  }

  // ---- rendering ------------------------------------------------------------------------

  measure() {
    const probe = h('div', { class: 'log-line' }, h('span', { class: 'tx', text: 'x' }));
    this.rows.append(probe);
    this.row = probe.getBoundingClientRect().height || 18;
    probe.remove();
  }

  geometry() {
    const count = this.visibleCount();
    const full = count * this.row;
    const height = Math.min(full, MAX_SPACER_PX);
    const view = this.viewHeight || this.scroller.clientHeight || 400;
    const inView = Math.ceil(view / this.row) + 1;
    // Rows that fit whole: the scaled mapping puts the last line at the bottom edge, not past it.
    const fit = Math.max(1, Math.floor(view / this.row));
    return { count, height, scaled: full > MAX_SPACER_PX, view, inView, fit };
  }

  rerender() {
    this.onScroll(true);
  }

  onScroll(forced) {
    // Whether the user is at the end is judged against the height they scrolled in: lines that
    // arrived since the last render must not turn following off.
    if (forced !== true) {
      const el = this.scroller;
      this.setFollow(el.scrollTop + el.clientHeight >= el.scrollHeight - this.row);
    }
    const g = this.geometry();
    if (this.spacer.style.height !== `${g.height}px`) this.spacer.style.height = `${g.height}px`;
    const top = this.scroller.scrollTop;
    const maxScroll = Math.max(1, g.height - g.view);
    let first;
    if (g.scaled) first = Math.round((top / maxScroll) * Math.max(0, g.count - g.fit));
    else first = Math.floor(top / this.row);
    first = Math.max(0, Math.min(first, Math.max(0, g.count - 1)));
    // Wrapped rows have their own heights: at the bottom, render the last ones and anchor them
    // to the bottom edge, so the end of the log is always reachable.
    const bottomWrap = this.wrap && g.count > 0 && top >= maxScroll - 1 && g.height > g.view;
    if (bottomWrap) first = Math.max(0, g.count - g.inView - MARGIN);
    const above = g.scaled || this.wrap ? 0 : Math.min(MARGIN, first);
    const start = first - above;
    const end = bottomWrap ? g.count : Math.min(g.count, first + g.inView + MARGIN);
    const offset = g.scaled || this.wrap ? top : first * this.row;
    const nodes = [];
    let lo = Infinity;
    let hi = 0;
    const keep = new Map();
    for (let i = start; i < end; i++) {
      const n = this.lineAt(i);
      const line = this.get(n);
      if (!line) { lo = Math.min(lo, n); hi = Math.max(hi, n); }
      const key = `${line ? 1 : 0}${this.times ? 1 : 0}${this.rowFlags(n)}`;
      let el = this.rowCache.get(n);
      if (!el || el.dataset.key !== key) el = this.renderRow(n, line, key);
      keep.set(n, el);
      nodes.push(el);
    }
    this.rowCache = keep;
    reconcile(this.rows, nodes);
    let y = Math.max(0, offset - above * this.row);
    if (bottomWrap) y = Math.max(0, top + g.view - this.rows.offsetHeight);
    this.rows.style.transform = `translateY(${y}px)`;
    if (hi) this.ensure(lo, hi);
  }

  rowFlags(n) {
    let f = '';
    if (this.matchSet.has(n)) f += 'm';
    if (this.cur >= 0 && this.matches[this.cur] === n) f += 'c';
    if (this.target === n) f += 't';
    if (this.hidden.some((r) => r.start === n + 1)) f += 'f';
    return f;
  }

  renderRow(n, line, key) {
    const el = h('div', { class: 'log-line', dataset: { n: String(n), key } });
    el.append(h('a', { class: 'ln', href: `#L${n}`, tabindex: '-1', text: String(n) }));
    if (!line) {
      el.classList.add('pending');
      el.append(h('span', { class: 'tx', text: '…' }));
      return el;
    }
    if (this.times) el.append(h('span', { class: 'ts', text: (line.at || '').slice(11, 23) }));
    const text = plain(line.text);
    if (text.startsWith(STEP_MARK)) {
      el.classList.add('step');
      const folded = key.includes('f');
      el.append(h('button', { type: 'button', class: 'fold', 'aria-expanded': folded ? 'false' : 'true', 'aria-label': folded ? 'Expand step' : 'Collapse step', dataset: { fold: String(n) }, text: folded ? '▸' : '▾' }));
    } else if (text.startsWith(ERROR_MARK)) {
      el.classList.add('err');
    }
    if (key.includes('m')) el.classList.add('match');
    if (key.includes('c')) el.classList.add('match-current');
    if (key.includes('t')) el.classList.add('target');
    const tx = h('span', { class: 'tx' });
    render(tx, line.text);
    el.append(tx);
    return el;
  }

  // ---- navigation -----------------------------------------------------------------------

  setFollow(on) {
    this.follow = on;
    this.endButton.hidden = on;
  }

  jumpEnd() {
    const g = this.geometry();
    this.spacer.style.height = `${g.height}px`;
    this.scroller.scrollTop = g.height;
    this.setFollow(true);
    this.rerender();
  }

  /** Scrolls line `n` to the middle of the view (expanding its step if collapsed). */
  scrollToLine(n) {
    n = Math.max(1, Math.min(n, this.total));
    const before = this.hidden.length;
    this.hidden = this.hidden.filter((r) => !(r.start <= n && n <= r.end));
    if (before !== this.hidden.length) this.renderSteps();
    const g = this.geometry();
    const idx = this.indexOf(n);
    let top;
    if (g.scaled) top = ((idx - Math.floor(g.fit / 2)) / Math.max(1, g.count - g.fit)) * (g.height - g.view);
    else top = idx * this.row - g.view / 2 + this.row / 2;
    this.spacer.style.height = `${g.height}px`;
    this.setFollow(false);
    this.scroller.scrollTop = Math.max(0, top);
    this.rerender();
    this.setFollow(this.total === n && !TERMINAL.has(this.status));
  }

  /** A permalink: highlight and scroll to line `n`. */
  goto(n) {
    this.target = n;
    this.scrollToLine(n);
  }

  onKey(e) {
    if (e.key === 'End' && (e.ctrlKey || e.metaKey || !e.shiftKey)) { e.preventDefault(); this.jumpEnd(); }
    else if (e.key === 'Home') { e.preventDefault(); this.setFollow(false); this.scroller.scrollTop = 0; }
    else if (e.key === 'n') this.step(1);
    else if (e.key === 'N') this.step(-1);
    else if (e.key === '/') { e.preventDefault(); this.searchInput.focus(); }
    else if (['ArrowUp', 'PageUp'].includes(e.key)) this.setFollow(false);
  }

  onClick(e) {
    const fold = e.target.closest('button.fold');
    if (fold) { this.toggleStep(Number(fold.dataset.fold)); return; }
    const ln = e.target.closest('a.ln');
    if (ln) {
      e.preventDefault();
      const n = Number(ln.textContent);
      history.replaceState(history.state, '', `#L${n}`);
      this.target = n;
      this.rerender();
    }
  }

  // ---- search ---------------------------------------------------------------------------

  async fetchMatches(after) {
    const qs = new URLSearchParams({ q: this.query, after: String(after), limit: String(SEARCH_PAGE) });
    const res = await api.json(`/v1/apps/${api.enc(this.app)}/deployments/${api.enc(this.id)}/search?${qs}`);
    return res;
  }

  async search(q, dir) {
    if (!q) return;
    if (q === this.query && this.matches.length) { this.step(dir); return; }
    this.query = q;
    this.count.textContent = 'Searching…';
    try {
      const res = await this.fetchMatches(0);
      this.matches = res.matches;
      this.matchSet = new Set(res.matches);
      this.matchTotal = res.total;
      this.matchCapped = res.total_capped;
      this.cur = -1;
      if (!this.matches.length) { this.count.textContent = 'No match'; this.rerender(); return; }
      await this.step(1);
    } catch (err) {
      this.count.textContent = '';
      toast(`Search failed: ${err.message}`, 'error');
    }
  }

  async step(dir) {
    if (!this.matches.length) return;
    let next = this.cur + dir;
    if (next >= this.matches.length && this.matches.length < this.matchTotal) {
      const more = await this.fetchMatches(this.matches[this.matches.length - 1]);
      for (const m of more.matches) { this.matches.push(m); this.matchSet.add(m); }
    }
    next = Math.max(0, Math.min(next, this.matches.length - 1));
    this.cur = next;
    const total = `${this.matchTotal.toLocaleString('en-US')}${this.matchCapped ? '+' : ''}`;
    this.count.textContent = `${(next + 1).toLocaleString('en-US')} of ${total}`;
    this.scrollToLine(this.matches[next]);
  }

  async firstError() {
    try {
      const qs = new URLSearchParams({ q: ERROR_MARK, after: '0', limit: '1' });
      const res = await api.json(`/v1/apps/${api.enc(this.app)}/deployments/${api.enc(this.id)}/search?${qs}`);
      if (!res.matches.length) { toast('No error line in this log'); return; }
      this.goto(res.matches[0]);
    } catch (err) {
      toast(`Search failed: ${err.message}`, 'error');
    }
  }

  // ---- steps ----------------------------------------------------------------------------

  async loadSteps() {
    try {
      const qs = new URLSearchParams({ q: STEP_MARK, after: '0', limit: String(MAX_STEPS) });
      const res = await api.json(`/v1/apps/${api.enc(this.app)}/deployments/${api.enc(this.id)}/search?${qs}`);
      const lines = await Promise.all(res.matches.map((n) => this.get(n) ? Promise.resolve(this.get(n))
        : api.lines(this.app, this.id, { from: n, limit: 1 }).then((r) => r.lines[0])));
      const last = this.get(this.total) || (await api.lines(this.app, this.id, { tail: 1 })).lines[0];
      const steps = lines.filter((l) => l && plain(l.text).startsWith(STEP_MARK));
      this.steps = steps.map((l, i) => {
        const end = steps[i + 1] || last;
        const secs = end && end.at && l.at ? (Date.parse(end.at) - Date.parse(l.at)) / 1000 : null;
        return { n: l.n, title: plain(l.text).slice(STEP_MARK.length), secs, end: steps[i + 1] ? steps[i + 1].n - 1 : Infinity };
      });
      this.renderSteps();
    } catch (err) {
      // Steps are a convenience: a log without the endpoint's answer still shows.
      this.stepsBox.hidden = true;
    }
  }

  renderSteps() {
    this.stepsBox.hidden = this.steps.length === 0;
    replace(this.stepsList, this.steps.map((s) => {
      const folded = this.hidden.some((r) => r.start === s.n + 1);
      return h('li', {},
        h('button', { type: 'button', class: 'link', onclick: () => this.goto(s.n), text: s.title }),
        h('span', { class: 'muted', text: ` ${s.secs === null ? '' : duration(s.secs)} ` }),
        h('button', { type: 'button', class: 'small', 'aria-expanded': folded ? 'false' : 'true', onclick: () => this.toggleStep(s.n), text: folded ? 'Expand' : 'Collapse' }));
    }));
    this.rerender();
  }

  toggleStep(n) {
    const i = this.hidden.findIndex((r) => r.start === n + 1);
    if (i >= 0) this.hidden.splice(i, 1);
    else {
      const step = this.steps.find((s) => s.n === n);
      const nextMark = this.steps.find((s) => s.n > n);
      const end = step ? step.end : (nextMark ? nextMark.n - 1 : Infinity);
      if (end >= n + 1) this.hidden.push({ start: n + 1, end });
      this.hidden.sort((a, b) => a.start - b.start);
    }
    this.renderSteps();
  }

  // ---- copy and download ----------------------------------------------------------------

  async copy() {
    const text = [...this.rows.children].map((row) => {
      const line = this.get(Number(row.dataset.n));
      return line ? plain(line.text) : '';
    }).join('\n');
    try {
      await navigator.clipboard.writeText(text);
      toast(`Copied ${this.rows.children.length} lines`);
    } catch {
      const range = document.createRange();
      range.selectNodeContents(this.rows);
      const sel = getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      toast('Lines selected: press Ctrl+C to copy');
    }
  }

  async download() {
    try {
      const res = await api.request(`/v1/apps/${api.enc(this.app)}/deployments/${api.enc(this.id)}/output`);
      const url = URL.createObjectURL(await res.blob());
      const a = h('a', { href: url, download: `${this.app}-${this.id}.log` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (err) {
      toast(`Download failed: ${err.message}`, 'error');
    }
  }

  close() {
    if (this.stream) this.stream.close();
    cancelAnimationFrame(this.frame);
    this.resize.disconnect();
  }
}
