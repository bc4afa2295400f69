// Entry point: the router (History API; every view has its own URL under /ui/, the back button
// works), the session gate (no JWT → the sign-in form, then the requested view) and sign-out.
// Views live in views.js; this module only picks one.

import * as api from './api.js';
import { appsView, appView, deploymentView, signInView } from './views.js';

const main = document.getElementById('main');
const signout = document.getElementById('signout');
let cleanup = () => {};

// The path and query of the view on screen: a fragment-only change (#L123) keeps the view.
let current = '';

function route() {
  current = location.pathname + location.search;
  cleanup();
  cleanup = () => {};
  signout.hidden = !api.signedIn();
  if (!api.signedIn()) {
    cleanup = signInView(main, route, route.reason);
    route.reason = '';
    return;
  }
  const path = location.pathname.replace(/\/+$/, '');
  const params = new URLSearchParams(location.search);
  let m;
  if ((m = /^\/ui\/apps\/([^/]+)\/deployments\/([^/]+)$/.exec(path))) {
    cleanup = deploymentView(main, decodeURIComponent(m[1]), decodeURIComponent(m[2]));
    document.title = `${decodeURIComponent(m[1])} · deployment · deployd`;
  } else if ((m = /^\/ui\/apps\/([^/]+)$/.exec(path))) {
    cleanup = appView(main, decodeURIComponent(m[1]), params, navigate);
    document.title = `${decodeURIComponent(m[1])} · deployd`;
  } else {
    cleanup = appsView(main);
    document.title = 'Apps · deployd';
  }
}

/** Goes to `href` (same origin) without a page load; the back button comes back. */
export function navigate(href) {
  history.pushState(null, '', href);
  route();
  main.focus({ preventScroll: true });
  window.scrollTo(0, 0);
}

document.addEventListener('click', (e) => {
  const a = e.target.closest('a[href]');
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith('/ui/') || a.hasAttribute('download')) return;
  if (url.pathname === location.pathname && url.search === location.search && url.hash) return;
  e.preventDefault();
  navigate(url.pathname + url.search + url.hash);
});

window.addEventListener('popstate', () => {
  if (location.pathname + location.search !== current) route();
});

signout.addEventListener('click', () => {
  api.signOut();
  route.reason = 'Signed out.';
  history.pushState(null, '', '/ui/');
  route();
});

api.whenExpired(() => {
  route.reason = 'Your session ended: sign in again.';
  route();
});

route();
