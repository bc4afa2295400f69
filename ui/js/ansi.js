// ANSI SGR parsing for log lines. Owns turning one line into styled segments: 16 colours as
// classes (fg-N / bg-N), 256 and true colour as rgb() values for element.style, bold, dim,
// italic, underline as classes. Every other escape sequence (cursor moves, OSC titles) and
// control character is dropped, so raw escapes never reach the page. State is per line: a
// virtualised viewer renders lines out of order, and build tools reset at line ends anyway.
// It never builds HTML strings.

// The xterm 6x6x6 cube levels, for 256-colour indices 16–231.
const CUBE = [0, 95, 135, 175, 215, 255];

/** The CSS colour of a 256-colour index 16–255 (0–15 are classes). */
function color256(n) {
  if (n >= 232) {
    const v = 8 + (n - 232) * 10;
    return `rgb(${v}, ${v}, ${v})`;
  }
  const i = n - 16;
  return `rgb(${CUBE[Math.floor(i / 36)]}, ${CUBE[Math.floor(i / 6) % 6]}, ${CUBE[i % 6]})`;
}

// CSI: ESC [ params intermediates final; OSC: ESC ] … BEL or ESC \; other ESC X pairs.
// eslint-disable-next-line no-control-regex
const ESCAPE = /\x1b\[([0-9;:?]*)[ -/]*([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]?/g;
// eslint-disable-next-line no-control-regex
const CONTROL = /[\x00-\x08\x0b-\x1f\x7f]/g;

/** The line without any escape sequence or control character (for copy and search). */
export function plain(line) {
  return line.replace(ESCAPE, '').replace(CONTROL, '');
}

function fresh() {
  return { fg: null, bg: null, bold: false, dim: false, italic: false, underline: false };
}

/** Applies one SGR parameter list to `st`. */
function apply(st, params) {
  const p = params === '' ? [0] : params.split(/[;:]/).map((x) => (x === '' ? 0 : Number(x)));
  for (let i = 0; i < p.length; i++) {
    const c = p[i];
    if (c === 0) Object.assign(st, fresh());
    else if (c === 1) st.bold = true;
    else if (c === 2) st.dim = true;
    else if (c === 3) st.italic = true;
    else if (c === 4) st.underline = true;
    else if (c === 22) { st.bold = false; st.dim = false; }
    else if (c === 23) st.italic = false;
    else if (c === 24) st.underline = false;
    else if (c >= 30 && c <= 37) st.fg = c - 30;
    else if (c >= 90 && c <= 97) st.fg = c - 90 + 8;
    else if (c === 39) st.fg = null;
    else if (c >= 40 && c <= 47) st.bg = c - 40;
    else if (c >= 100 && c <= 107) st.bg = c - 100 + 8;
    else if (c === 49) st.bg = null;
    else if (c === 38 || c === 48) {
      const key = c === 38 ? 'fg' : 'bg';
      if (p[i + 1] === 5 && i + 2 < p.length) {
        const n = p[i + 2] & 255;
        st[key] = n < 16 ? n : color256(n);
        i += 2;
      } else if (p[i + 1] === 2 && i + 4 < p.length) {
        const [r, g, b] = [p[i + 2], p[i + 3], p[i + 4]].map((v) => Math.max(0, Math.min(255, v | 0)));
        st[key] = `rgb(${r}, ${g}, ${b})`;
        i += 4;
      } else {
        break;
      }
    }
  }
}

/**
 * Segments of a line: `[{text, cls, fg, bg}]` where `cls` is a class list and `fg`/`bg` are
 * CSS colours for element.style (256 and true colour) or null.
 */
export function parse(line) {
  const out = [];
  const st = fresh();
  let last = 0;
  const push = (text) => {
    text = text.replace(CONTROL, '');
    if (!text) return;
    const cls = [];
    if (typeof st.fg === 'number') cls.push(`fg-${st.fg}`);
    if (typeof st.bg === 'number') cls.push(`bg-${st.bg}`);
    if (st.bold) cls.push('sgr-bold');
    if (st.dim) cls.push('sgr-dim');
    if (st.italic) cls.push('sgr-italic');
    if (st.underline) cls.push('sgr-underline');
    out.push({
      text,
      cls: cls.join(' '),
      fg: typeof st.fg === 'string' ? st.fg : null,
      bg: typeof st.bg === 'string' ? st.bg : null,
    });
  };
  ESCAPE.lastIndex = 0;
  for (let m = ESCAPE.exec(line); m; m = ESCAPE.exec(line)) {
    push(line.slice(last, m.index));
    last = ESCAPE.lastIndex;
    if (m[2] === 'm') apply(st, m[1]);
  }
  push(line.slice(last));
  return out;
}

/** Appends the styled segments of `line` to `el` as text spans (never HTML). */
export function render(el, line) {
  if (line.indexOf('\x1b') < 0) {
    el.textContent = line.replace(CONTROL, '');
    return;
  }
  for (const seg of parse(line)) {
    if (!seg.cls && !seg.fg && !seg.bg) {
      el.append(document.createTextNode(seg.text));
      continue;
    }
    const span = document.createElement('span');
    if (seg.cls) span.className = seg.cls;
    if (seg.fg) span.style.color = seg.fg;
    if (seg.bg) span.style.backgroundColor = seg.bg;
    span.textContent = seg.text;
    el.append(span);
  }
}
