// Shared helpers: DOM building (elements and text nodes only, never markup from strings), the API client, the error banner, the page
// lifecycle (timers, event sources), formatting, tables and pagers.

export const session = { key_id: null, tenant: null, scopes: [], csrf: null };
export const isAdmin = () => session.scopes.includes('admin');
export const canWrite = () => isAdmin() || session.scopes.includes('jobs:write');

export const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
export const JOB_STATES = ['waiting', 'queued', 'scheduled', 'running', 'retrying', 'succeeded', 'failed', 'cancelled'];
export const TIERS = ['high', 'default', 'low'];

// ---- DOM ----------------------------------------------------------------------------

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === 'testid') el.setAttribute('data-testid', v);
    else if (k === 'class') el.setAttribute('class', v);
    else if (k === 'text') el.textContent = v;
    else if (typeof v === 'function' && k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'value' || k === 'checked' || k === 'selected') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

function addKids(el, kids) {
  for (const k of kids.flat(Infinity)) {
    if (k == null || k === false) continue;
    el.append(typeof k === 'object' ? k : String(k));
  }
}

/** Replace `el`'s children (null and false left out, arrays flattened). */
export function fill(el, ...kids) {
  el.replaceChildren();
  addKids(el, kids);
  return el;
}

/** An HTML element: h('a', {href, testid, onclick}, 'text', child...). */
export function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  if (attrs) setAttrs(el, attrs);
  addKids(el, kids);
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
/** An SVG element (createElementNS). */
export function s(tag, attrs, ...kids) {
  const el = document.createElementNS(SVG_NS, tag);
  if (attrs) setAttrs(el, attrs);
  addKids(el, kids);
  return el;
}

const keyedState = new WeakMap();
/** Keep `parent`'s children in step with `items`: an item whose JSON did not change keeps
 * its node (a button in it stays clickable across refreshes), changed ones are rebuilt. */
function keyed(parent, items, key, render, extra = () => '') {
  const old = keyedState.get(parent) || new Map();
  const next = new Map();
  let i = 0;
  for (const it of items) {
    const k = key(it);
    const sig = JSON.stringify(it) + extra(it);
    const prev = old.get(k);
    const node = prev && prev.sig === sig ? prev.node : render(it);
    next.set(k, { sig, node });
    const at = parent.children[i] || null;
    if (at !== node) parent.insertBefore(node, at);
    i++;
  }
  while (parent.children.length > i) parent.lastElementChild.remove();
  keyedState.set(parent, next);
}

// ---- Banner & notices -----------------------------------------------------------------

const banner = h('div', { id: 'error', role: 'alert', testid: 'error', class: 'banner', hidden: true });
const bannerText = h('span', { testid: 'error-text' });
const bannerClose = h('button', {
  type: 'button', class: 'banner-close', testid: 'error-dismiss', 'aria-label': 'Dismiss error',
  onclick: () => clearError(),
}, '×');
banner.append(bannerText, bannerClose);
export const bannerEl = banner;

export function clearError() {
  banner.hidden = true;
  bannerText.textContent = '';
}

/** Show an error in the banner (`title: detail`); 401s are the sign-in screen's business. */
export function showError(err, force = false) {
  if (err instanceof ApiError && err.status === 401 && !force) return;
  const text = err instanceof ApiError ? err.message : `Error: ${err?.message || err}`;
  bannerText.textContent = text;
  banner.hidden = false;
}

const notice = h('div', { role: 'status', testid: 'notice', class: 'notice', hidden: true });
export const noticeEl = notice;
let noticeTimer = null;
/** A short-lived success message (may hold a link). */
export function notify(...kids) {
  notice.replaceChildren(...kids.filter(Boolean));
  notice.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { notice.hidden = true; }, 6000);
}

// ---- API ------------------------------------------------------------------------------

export class ApiError extends Error {
  constructor(status, title, detail, errors) {
    super(detail ? `${title}: ${detail}` : title);
    this.status = status;
    this.title = title;
    this.detail = detail;
    this.errors = Array.isArray(errors) ? errors : [];
  }
}

let unauthorized = () => {};
export function onUnauthorized(fn) { unauthorized = fn; }

/** fetch() same-origin with the CSRF header; JSON in and out; problems become ApiError. */
export async function api(method, path, body, extraHeaders = {}) {
  const headers = { Accept: 'application/json', ...extraHeaders };
  if (session.csrf) headers['X-CSRF-Token'] = session.csrf;
  const init = { method, credentials: 'same-origin', headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'Network error', `${method} ${path} failed (${e.message})`);
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (res.ok) return data;
  const err = new ApiError(res.status, data?.title || `HTTP ${res.status}`,
    data?.detail || (data ? '' : res.statusText), data?.errors);
  if (res.status === 401) unauthorized(err);
  throw err;
}
export const get = (path) => api('GET', path);

/** Run an action: errors go to the banner; resolves to the result or undefined. */
export async function attempt(fn) {
  try { return await fn(); } catch (e) { showError(e); return undefined; }
}

/** A path with a query string from an object (empty values left out). */
export function withQuery(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v != null && v !== '') q.set(k, String(v));
  const qs = q.toString();
  return qs ? `${path}?${qs}` : path;
}
export const enc = encodeURIComponent;

let tasksPromise = null;
/** The catalogued tasks (GET /v1/tasks), read once per session. */
export function tasks() {
  if (!tasksPromise) {
    tasksPromise = get('/v1/tasks').then((t) => (Array.isArray(t) ? t : t?.items || []));
    tasksPromise.catch(() => { tasksPromise = null; });
  }
  return tasksPromise;
}
export function forgetSession() {
  Object.assign(session, { key_id: null, tenant: null, scopes: [], csrf: null });
  tasksPromise = null;
}

// ---- Page lifecycle ---------------------------------------------------------------------

/** What a page started (pollers, event sources): all stopped when the page is left. */
export class Life {
  alive = true;
  #ends = [];
  onEnd(fn) { this.#ends.push(fn); }
  end() {
    this.alive = false;
    for (const fn of this.#ends.splice(0)) { try { fn(); } catch { /* already gone */ } }
  }
  /** Call `fn` now and then every `ms` after it finished, while the tab is visible. */
  poll(ms, fn) {
    let timer = null;
    let running = false;
    let stopped = false;
    let again = false;
    const tick = async () => {
      clearTimeout(timer);
      timer = null;
      if (stopped || !this.alive) return;
      if (running) { again = true; return; }
      if (document.hidden) return; // visibilitychange starts it again
      running = true;
      try { await fn(); } catch (e) { showError(e); }
      running = false;
      if (stopped || !this.alive) return;
      if (again) { again = false; tick(); return; }
      timer = setTimeout(tick, ms);
    };
    const onVisible = () => { if (!document.hidden && timer === null && !running) tick(); };
    document.addEventListener('visibilitychange', onVisible);
    const stop = () => {
      stopped = true;
      clearTimeout(timer);
      document.removeEventListener('visibilitychange', onVisible);
    };
    this.onEnd(stop);
    tick();
    return { stop, now: tick, get stopped() { return stopped; } };
  }
}

// ---- Formatting ---------------------------------------------------------------------------

const dateFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
const pad = (n) => String(n).padStart(2, '0');

/** A <time> showing a local date and time, the ISO instant in its tooltip. */
export function time(iso, testid) {
  if (!iso) return h('span', { class: 'muted', testid }, '—');
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return h('span', { testid }, String(iso));
  return h('time', { datetime: d.toISOString(), title: d.toISOString(), testid }, dateFmt.format(d));
}

/** A time in a given IANA zone (falls back to local). */
export function zoned(iso, zone) {
  const d = new Date(iso);
  try {
    return new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'long', timeZone: zone }).format(d);
  } catch { return dateFmt.format(d); }
}

/** datetime-local value (local time) -> ISO UTC, and back. */
export const localToIso = (v) => { const d = new Date(v); return v && !Number.isNaN(d.getTime()) ? d.toISOString() : ''; };
export function isoToLocal(iso) {
  const d = new Date(iso);
  if (!iso || Number.isNaN(d.getTime())) return '';
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}
export const hhmm = (iso) => { const d = new Date(iso); return `${pad(d.getHours())}:${pad(d.getMinutes())}`; };

export const json = (v) => JSON.stringify(v, null, 2);
export const num = (n) => (n == null ? '—' : Number(n).toLocaleString());

export function badge(state, testid) {
  return h('span', { class: `badge state-${String(state).replace(/[^a-z_]/gi, '')}`, testid, 'data-state': state }, String(state));
}

/** A link to a job or workflow page, showing a short id. */
export function idLink(kind, id) {
  return h('a', { href: `#/${kind}/${enc(id)}`, title: id, class: 'mono' }, shortId(id));
}

/** Put filters in the hash (shareable); the same hash again just reloads. */
export function setFilters(base, params, reload) {
  const target = withQuery(base, params);
  if (location.hash === target) reload(); else location.hash = target;
}

export const unreadable = (view, what) => view.append(h('p', { class: 'muted', testid: 'load-failed' }, `This ${what} could not be read.`));

/** A short id (full one in the tooltip). */
export function shortId(id) { return id && id.length > 13 ? `${id.slice(0, 8)}…` : id; }

/** A <progress> for a job's progress (indeterminate when the total is unknown). */
export function progressBar(progress, state, testid) {
  const el = h('progress', { testid, class: 'bar' });
  let label;
  if (progress && progress.total) {
    el.max = progress.total;
    el.value = Math.min(progress.current, progress.total);
    label = `${num(progress.current)} / ${num(progress.total)}`;
    el.setAttribute('aria-valuenow', String(progress.current));
  } else if (progress) {
    label = num(progress.current);
    el.setAttribute('aria-valuenow', String(progress.current));
    el.max = 1;
    if (TERMINAL.has(state)) el.value = 1; else el.removeAttribute('value');
  } else {
    el.max = 1;
    el.value = state === 'succeeded' ? 1 : 0;
    el.setAttribute('aria-valuenow', String(el.value));
    label = state === 'succeeded' ? 'done' : '';
  }
  el.setAttribute('aria-valuemin', '0');
  el.setAttribute('aria-valuemax', String(el.max));
  const title = [label, progress?.message].filter(Boolean).join(' — ');
  if (title) el.title = title;
  return el;
}

// ---- Tables, pagers, forms --------------------------------------------------------------

/** A table: `cols` = [{key, label, render(item), cls?}]; rows `testid`, cells `testid-key`.
 * Returns {el, update(items)}; update keeps unchanged rows' nodes. */
export function table(testid, cols, { key = (it) => it.id, rowAttrs = () => ({}), empty = 'Nothing here.' } = {}) {
  const tbody = h('tbody');
  const emptyRow = h('tr', { class: 'empty' }, h('td', { colspan: cols.length, testid: `${testid}-empty` }, empty));
  const el = h('div', { class: 'table-wrap' }, h('table', { class: 'grid', testid: `${testid}s` },
    h('thead', null, h('tr', null, cols.map((c) => h('th', { scope: 'col', class: c.cls }, c.label)))),
    tbody));
  const render = (it) => h('tr', { testid, ...rowAttrs(it) },
    cols.map((c) => h('td', { testid: `${testid}-${c.key}`, class: c.cls }, c.render(it))));
  return {
    el,
    update(items, extra) {
      if (!items.length) { keyedState.delete(tbody); tbody.replaceChildren(emptyRow); return; }
      if (tbody.firstChild === emptyRow) emptyRow.remove();
      keyed(tbody, items, key, render, extra);
    },
  };
}

/** Cursor pagination: `load(cursor)` returns a page; Next / First page buttons. */
export function pager(load) {
  let cursor = null;
  let next = null;
  let pageNo = 1;
  const first = h('button', { type: 'button', testid: 'first-page', class: 'secondary', onclick: () => go(null, 1) }, 'First page');
  const nextBtn = h('button', { type: 'button', testid: 'next-page', class: 'secondary', onclick: () => go(next, pageNo + 1) }, 'Next page');
  const label = h('span', { class: 'muted', testid: 'page-number' });
  const el = h('div', { class: 'pager' }, first, label, nextBtn);
  async function go(c, n) {
    const page = await attempt(() => load(c));
    if (!page) return;
    cursor = c;
    pageNo = n;
    next = page.next_cursor || null;
    first.disabled = cursor === null;
    nextBtn.disabled = !next;
    label.textContent = `Page ${pageNo}`;
  }
  return {
    el,
    go,
    /** Reload the page shown (first page when on it). */
    reload: () => go(cursor, pageNo),
    get onFirst() { return cursor === null; },
  };
}

/** A labelled form field. */
export function field(label, control, hint) {
  return h('label', { class: 'field' }, h('span', { class: 'label' }, label), control,
    hint ? h('small', { class: 'muted' }, hint) : null);
}

export function select(attrs, options, value) {
  const el = h('select', attrs, options.map((o) => {
    const [v, t] = Array.isArray(o) ? o : [o, o];
    return h('option', { value: v }, t);
  }));
  if (value != null) el.value = value;
  return el;
}

export function button(text, testid, onclick, cls) {
  return h('button', { type: 'button', testid, class: cls, onclick }, text);
}

/** A button that is disabled while its async action runs. */
export function actionButton(text, testid, action, cls) {
  const b = button(text, testid, async () => {
    b.disabled = true;
    try { await attempt(action); } finally { b.disabled = false; }
  }, cls);
  return b;
}

export function pageHeader(title, ...actions) {
  return h('div', { class: 'page-head' }, h('h1', { testid: 'page-title' }, title), actions.length ? h('div', { class: 'actions' }, actions) : null);
}

export function dl(pairs, testid) {
  return h('dl', { class: 'props', testid }, pairs.filter(Boolean).map(([k, v, tid]) =>
    [h('dt', null, k), h('dd', { testid: tid }, v ?? h('span', { class: 'muted' }, '—'))]));
}
