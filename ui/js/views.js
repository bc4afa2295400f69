// The three views (apps list, one app, one deployment) and the sign-in form. Each view renders
// into `main`, returns a cleanup function (closing its stream), and reads its state from the
// URL only, so every screen is bookmarkable. Routing and the session live in main.js.

import * as api from './api.js';
import { AppStream } from './stream.js';
import { LogView } from './logview.js';
import { h, replace, when, duration, badge, toast, TERMINAL } from './dom.js';

const PER_PAGE = 20;
const UNFINISHED = new Set(['queued', 'building', 'pushing', 'starting']);
const STATUSES = ['unfinished', 'queued', 'building', 'pushing', 'starting', 'success', 'aborted',
  'build-error', 'crashed-error', 'timeout-error', 'hook-error'];

// UUIDv7 ids share their time prefix within a minute: the random tail tells them apart.
const shortId = (id) => (id.length > 14 ? `${id.slice(0, 8)}…${id.slice(-4)}` : id);
const appPath = (app) => `/ui/apps/${encodeURIComponent(app)}`;
const deploymentPath = (app, id) => `${appPath(app)}/deployments/${encodeURIComponent(id)}`;

function link(href, text, attrs = {}) {
  return h('a', { href, dataset: { nav: '' }, ...attrs }, text);
}

function failure(main, err) {
  replace(main, h('div', { class: 'error-box', role: 'alert' },
    h('h1', { text: err.status === 404 ? 'Not found' : 'Something went wrong' }),
    h('p', { text: err.message }),
    link('/ui/', 'Back to the apps')));
}

export function crumbs(...parts) {
  replace(document.getElementById('crumbs'), parts.flatMap((p, i) => [i ? h('span', { class: 'sep', 'aria-hidden': 'true', text: '/' }) : null, p]));
}

// ---- sign in --------------------------------------------------------------------------

export function signInView(main, done, reason) {
  crumbs();
  const input = h('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'off', required: true, spellcheck: 'false' });
  const error = h('p', { class: 'form-error', role: 'alert', id: 'signin-error' });
  const form = h('form', { class: 'card signin', onsubmit: async (e) => {
    e.preventDefault();
    error.textContent = '';
    try {
      await api.signIn(input.value.trim());
      input.value = '';
      done();
    } catch (err) {
      error.textContent = err.status === 401 ? 'This token was refused.' : err.message;
    }
  } },
  h('h1', { text: 'Sign in' }),
  reason ? h('p', { class: 'muted', text: reason }) : null,
  h('label', { for: 'token', text: 'API token' }),
  input,
  h('p', { class: 'hint', text: 'The token is exchanged for a one-hour session kept in this tab only; the token itself is not stored.' }),
  h('button', { type: 'submit', class: 'primary', text: 'Sign in' }),
  error);
  replace(main, form);
  input.focus();
  return () => {};
}

// ---- apps -----------------------------------------------------------------------------

export function appsView(main) {
  crumbs(h('span', { text: 'Apps' }));
  replace(main, h('h1', { text: 'Apps' }), h('p', { class: 'muted', text: 'Loading…' }));
  api.json('/v1/apps').then(({ apps }) => {
    apps.sort((a, b) => (b.last_deployed_at || b.created_at).localeCompare(a.last_deployed_at || a.created_at));
    const body = apps.map((app) => h('tr', { dataset: { app: app.name } },
      h('th', { scope: 'row' }, link(appPath(app.name), app.name)),
      h('td', {}, h('span', { class: `badge badge-app-${app.status}`, text: app.status })),
      h('td', {}, app.last_deployment_id ? link(deploymentPath(app.name, app.last_deployment_id), shortId(app.last_deployment_id), { class: 'mono', title: app.last_deployment_id }) : '-'),
      h('td', { text: app.last_deployed_by || '-' }),
      h('td', { text: when(app.last_deployed_at) })));
    replace(main, h('h1', { text: 'Apps' }),
      apps.length === 0 ? h('p', { class: 'muted', text: 'No apps yet. Create one with the API or `deployd push`.' })
        : h('div', { class: 'table-wrap' }, h('table', { class: 'list', id: 'apps' },
          h('caption', { class: 'sr-only', text: 'Your apps' }),
          h('thead', {}, h('tr', {}, ['Name', 'Status', 'Last deployment', 'By', 'When'].map((t) => h('th', { scope: 'col', text: t })))),
          h('tbody', {}, body))));
  }).catch((err) => failure(main, err));
  return () => {};
}

// ---- one app --------------------------------------------------------------------------

export function appView(main, app, params, navigate) {
  crumbs(link('/ui/', 'Apps'), h('span', { text: app }));
  const page = Math.max(1, Number(params.get('page')) || 1);
  const status = params.get('status') || '';
  let stream = null;
  let closed = false;
  const rows = new Map();

  const filter = h('select', { id: 'status-filter', onchange: (e) => {
    const qs = new URLSearchParams();
    if (e.target.value) qs.set('status', e.target.value);
    navigate(`${appPath(app)}${qs.toString() ? `?${qs}` : ''}`);
  } }, h('option', { value: '', text: 'all statuses' }), STATUSES.map((s) => h('option', { value: s, text: s, selected: s === status })));

  const fileInput = h('input', { id: 'archive', type: 'file', accept: '.tar.gz,.tgz,application/gzip,application/x-gzip', required: true });
  const refInput = h('input', { id: 'git-ref', type: 'text', placeholder: 'generated', autocomplete: 'off' });
  const trigger = h('form', { class: 'card trigger', onsubmit: async (e) => {
    e.preventDefault();
    const file = fileInput.files[0];
    if (!file) return;
    const button = trigger.querySelector('button');
    button.disabled = true;
    try {
      const { deployment } = await api.deployArchive(app, file, refInput.value.trim());
      navigate(deploymentPath(app, deployment.id));
    } catch (err) {
      toast(`Deploy failed: ${err.message}`, 'error');
      button.disabled = false;
    }
  } },
  h('h2', { text: 'Deploy an archive' }),
  h('div', { class: 'fields' },
    h('label', { for: 'archive', text: 'Archive (.tar.gz)' }), fileInput,
    h('label', { for: 'git-ref', text: 'Git ref (optional)' }), refInput,
    h('button', { type: 'submit', class: 'primary', id: 'deploy', text: 'Deploy' })));

  const table = h('tbody', {});
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' });
  const header = h('div', { class: 'app-head' });
  replace(main, header, h('div', { class: 'toolbar' }, h('label', { for: 'status-filter', text: 'Status ' }), filter),
    h('div', { class: 'table-wrap' }, h('table', { class: 'list', id: 'deployments' },
      h('caption', { class: 'sr-only', text: 'Deployments, newest first' }),
      h('thead', {}, h('tr', {}, ['Deployment', 'Status', 'Git ref', 'By', 'Created', 'Duration', 'Actions'].map((t) => h('th', { scope: 'col', text: t })))),
      table)),
    pager, trigger);

  function actions(d) {
    const cell = [];
    if (UNFINISHED.has(d.status)) {
      cell.push(h('button', { type: 'button', class: 'small cancel', onclick: async (e) => {
        e.target.disabled = true;
        try {
          await api.json(`/v1/apps/${api.enc(app)}/deployments/${api.enc(d.id)}/cancel`, { method: 'POST' });
          toast(`Cancelling ${shortId(d.id)}`);
        } catch (err) {
          toast(`Cancel failed: ${err.message}`, 'error');
          e.target.disabled = false;
        }
      }, text: 'Cancel', 'aria-label': `Cancel deployment ${d.id}` }));
    }
    if (d.image_kept) {
      cell.push(h('button', { type: 'button', class: 'small rollback', onclick: async (e) => {
        e.target.disabled = true;
        try {
          const res = await api.json(`/v1/apps/${api.enc(app)}/deployments/${api.enc(d.id)}/rollback`, { method: 'POST' });
          toast(`Rolling back to ${d.git_ref}`);
          navigate(deploymentPath(app, res.deployment.id));
        } catch (err) {
          toast(`Rollback failed: ${err.message}`, 'error');
          e.target.disabled = false;
        }
      }, text: 'Roll back', 'aria-label': `Roll back to deployment ${d.id}` }));
    }
    return cell;
  }

  function row(d) {
    const cells = h('td', { class: 'actions' }, actions(d));
    const tr = h('tr', { dataset: { id: d.id } },
      h('th', { scope: 'row' }, link(deploymentPath(app, d.id), shortId(d.id), { class: 'mono', title: d.id })),
      h('td', { class: 'status' }, badge(d.status)),
      h('td', { class: 'mono', text: d.git_ref }),
      h('td', { text: d.pusher ? d.pusher.username : '-' }),
      h('td', { text: when(d.created_at) }),
      h('td', { text: TERMINAL.has(d.status) ? duration(d.duration) : '…' }),
      cells);
    rows.set(d.id, { tr, d });
    return tr;
  }

  async function load() {
    const qs = new URLSearchParams({ page: String(page), per_page: String(PER_PAGE) });
    if (status) qs.set('status', status);
    const [appRes, list] = await Promise.all([
      api.json(`/v1/apps/${api.enc(app)}`),
      api.json(`/v1/apps/${api.enc(app)}/deployments?${qs}`),
    ]);
    if (closed) return;
    const a = appRes.app;
    replace(header, h('h1', { text: a.name }), h('p', { class: 'muted' },
      h('span', { class: `badge badge-app-${a.status}`, text: a.status }),
      ` owned by ${a.owner.username} · last deployed ${when(a.last_deployed_at)}${a.last_deployed_by ? ` by ${a.last_deployed_by}` : ''}`));
    rows.clear();
    replace(table, list.deployments.length ? list.deployments.map(row)
      : h('tr', {}, h('td', { colspan: '7', class: 'muted', text: 'No deployments.' })));
    const p = list.meta.pagination;
    const pageLink = (n, label) => {
      const q = new URLSearchParams(params);
      q.set('page', String(n));
      return link(`${appPath(app)}?${q}`, label);
    };
    replace(pager, p.prev_page ? pageLink(p.prev_page, '← Newer') : null,
      h('span', { class: 'muted', text: ` page ${p.current_page} of ${Math.max(1, p.total_pages)} (${p.total_count}) ` }),
      p.next_page ? pageLink(p.next_page, 'Older →') : null);
  }

  // Refreshing reloads from the API (one request) — the stream only says that something moved.
  let refreshTimer = null;
  const refresh = () => {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(() => load().catch(() => {}), 150);
  };

  load().then(() => {
    if (closed) return;
    stream = new AppStream(app, {
      query: { logs: 'none' },
      onEvent: (frame) => {
        if (frame.type === 'new') refresh();
        if (frame.type !== 'status') return;
        const known = rows.get(frame.id);
        if (!known) { if (page === 1) refresh(); return; }
        known.d.status = frame.data.status;
        replace(known.tr.querySelector('.status'), badge(frame.data.status));
        replace(known.tr.querySelector('.actions'), actions(known.d));
        // A terminal status fills duration and image_kept in: GET answers carry them.
        if (TERMINAL.has(frame.data.status)) refresh();
      },
      onState: () => {},
    });
  }).catch((err) => failure(main, err));

  return () => { closed = true; clearTimeout(refreshTimer); if (stream) stream.close(); };
}

// ---- one deployment -------------------------------------------------------------------

export function deploymentView(main, app, id) {
  crumbs(link('/ui/', 'Apps'), link(appPath(app), app), h('span', { class: 'mono', text: shortId(id) }));
  let view = null;
  let closed = false;
  replace(main, h('p', { class: 'muted', text: 'Loading…' }));
  const statusCell = h('dd', { id: 'deployment-status' });
  const durationCell = h('dd', { id: 'deployment-duration' });
  let d = null;
  let timer = null;

  function tick() {
    if (!d) return;
    const end = d.finished_at ? Date.parse(d.finished_at) : Date.now();
    durationCell.textContent = duration((end - Date.parse(d.created_at)) / 1000) + (TERMINAL.has(d.status) ? '' : ' (running)');
  }

  api.json(`/v1/apps/${api.enc(app)}/deployments/${api.enc(id)}`).then(async ({ deployment }) => {
    if (closed) return;
    d = deployment;
    replace(statusCell, badge(d.status));
    tick();
    timer = setInterval(tick, 1000);
    view = new LogView(app, d, (status) => {
      d.status = status;
      replace(statusCell, badge(status));
      if (TERMINAL.has(status)) {
        api.json(`/v1/apps/${api.enc(app)}/deployments/${api.enc(id)}`).then((r) => { d = r.deployment; tick(); }).catch(() => {});
      }
    });
    replace(main,
      h('div', { class: 'dep-head' },
        h('h1', {}, 'Deployment ', h('span', { class: 'mono', text: d.id })),
        h('dl', { class: 'facts' },
          h('dt', { text: 'Status' }), statusCell,
          h('dt', { text: 'Git ref' }), h('dd', { class: 'mono', id: 'deployment-ref', text: d.git_ref }),
          h('dt', { text: 'Pushed by' }), h('dd', { id: 'deployment-pusher', text: d.pusher ? d.pusher.username : '-' }),
          h('dt', { text: 'Created' }), h('dd', { text: when(d.created_at) }),
          h('dt', { text: 'Duration' }), durationCell)),
      view.root);
    const m = /^#L(\d+)$/.exec(location.hash);
    await view.open(m ? Number(m[1]) : 0);
  }).catch((err) => failure(main, err));

  const onHash = () => {
    const m = /^#L(\d+)$/.exec(location.hash);
    if (m && view) view.goto(Number(m[1]));
  };
  window.addEventListener('hashchange', onHash);
  return () => {
    closed = true;
    clearInterval(timer);
    window.removeEventListener('hashchange', onHash);
    if (view) view.close();
  };
}
