// The HTTP API client. Owns the session: the JWT (from POST /v1/tokens/exchange) lives in
// sessionStorage only; the API token is used once for the exchange and never kept. Every call
// goes to this origin. It must not build DOM.

const JWT_KEY = 'deployd.jwt';

/** An API error: `status` (HTTP) and a human `message` from the JSON body. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function jwt() {
  return sessionStorage.getItem(JWT_KEY);
}

export function signedIn() {
  return Boolean(jwt());
}

export function signOut() {
  sessionStorage.removeItem(JWT_KEY);
}

/** Listeners called when the server refuses the session (401): the page shows the sign-in. */
const onExpired = [];
export function whenExpired(fn) {
  onExpired.push(fn);
}

/** Exchanges an API token for a JWT and keeps only the JWT. */
export async function signIn(token) {
  const res = await fetch('/v1/tokens/exchange', {
    method: 'POST',
    headers: { Authorization: `Basic ${btoa(`:${token}`)}` },
  });
  if (!res.ok) throw new ApiError(res.status, await errorMessage(res));
  const body = await res.json();
  if (!body.token) throw new ApiError(500, 'the server sent no token');
  sessionStorage.setItem(JWT_KEY, body.token);
}

/** The text of an error response: `error`, or the first of `errors`, or the status line. */
export async function errorMessage(res) {
  try {
    const body = await res.json();
    if (body.error) return body.error;
    if (body.errors) {
      const [field, messages] = Object.entries(body.errors)[0] || [];
      if (field) return `${field}: ${[].concat(messages).join(', ')}`;
    }
  } catch { /* not JSON */ }
  return `${res.status} ${res.statusText}`;
}

/** A raw authenticated request; throws ApiError on a non-2xx answer. */
export async function request(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  const token = jwt();
  if (token) headers.Authorization = `Bearer ${token}`;
  const res = await fetch(path, { ...options, headers });
  if (res.status === 401) {
    signOut();
    onExpired.forEach((fn) => fn());
  }
  if (!res.ok) throw new ApiError(res.status, await errorMessage(res));
  return res;
}

/** GET/POST a JSON resource. */
export async function json(path, options = {}) {
  const opts = { ...options };
  if (opts.body !== undefined && typeof opts.body !== 'string' && !(opts.body instanceof Blob)) {
    opts.body = JSON.stringify(opts.body);
    opts.headers = { 'Content-Type': 'application/json', ...(opts.headers || {}) };
  }
  const res = await request(path, opts);
  if (res.status === 204) return null;
  return res.json();
}

export const enc = encodeURIComponent;

/**
 * Ranged log read (`/lines`): resolves to `{lines: [{n, at, text}], lastLine, status}`.
 * `query` is `{from, limit}` or `{tail}`.
 */
export async function lines(app, id, query, signal) {
  const qs = new URLSearchParams(Object.entries(query).map(([k, v]) => [k, String(v)]));
  const res = await request(`/v1/apps/${enc(app)}/deployments/${enc(id)}/lines?${qs}`, { signal });
  const text = await res.text();
  const out = [];
  for (const row of text.split('\n')) {
    if (row) out.push(JSON.parse(row));
  }
  return {
    lines: out,
    lastLine: Number(res.headers.get('X-Last-Line') || 0),
    status: res.headers.get('X-Deployment-Status') || '',
  };
}

/** Uploads an archive (POST /v1/sources, PUT upload_url) and triggers a deployment with it. */
export async function deployArchive(app, file, gitRef) {
  const { source } = await json('/v1/sources', { method: 'POST' });
  // The upload URL is pre-authenticated; keep it on this origin whatever public URL it names.
  const upload = new URL(source.upload_url, location.origin);
  const put = await fetch(upload.pathname + upload.search, {
    method: 'PUT',
    headers: { 'Content-Type': 'application/x-gzip' },
    body: file,
  });
  if (!put.ok) throw new ApiError(put.status, await errorMessage(put));
  const body = { deployment: { source_url: source.download_url, git_ref: gitRef || null } };
  return json(`/v1/apps/${enc(app)}/deployments`, { method: 'POST', body });
}
