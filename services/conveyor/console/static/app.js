// Conveyor operator console: sign-in, header, navigation and the hash router.
// Plain ES modules, no build step, no third-party code; written for the page's CSP
// (script-src 'self', style-src 'self', connect-src 'self': no inline code or styles).
//
// data-testid attributes (for browser tests). Every table: rows "<row>", cells "<row>-<column>",
// the <table> "<row>s", its empty-state cell "<row>-empty"; rows also carry data-* ids.
//   global:    error (role=alert banner), error-text, error-dismiss, notice (role=status), page-title,
//              next-page, first-page, page-number, load-failed, state badges carry data-state
//   sign-in:   signin-form, signin-key, signin-submit, signin-message
//   header:    session-tenant, session-key-id, session-scopes, signout
//   nav:       nav-overview, nav-jobs, nav-dead-letters (admin), nav-workflows, nav-schedules, nav-audit (admin)
//   overview:  overview-scope, tier-row (-queue -waiting -running -held -workers -paused -actions),
//              tier-pause, tier-resume, overview-delayed, overview-dead, overview-succeeded, failure-rate,
//              overview-chart, chart-bar, pause-row (-kind -name), resume, pause-form, pause-kind,
//              pause-name, pause-submit
//   jobs:      jobs-filters, filter-state, filter-task, filter-queue, filter-tenant, filter-since,
//              filter-until, filter-apply, filter-reset, find-input, find-id, find-key, jobs-live,
//              job-row[data-job-id] (-id -task -state -tenant -queue -progress -attempts -created)
//   job page:  job-id, job-state, job-progress (<progress>, aria-valuenow), job-progress-text, job-live,
//              job-props, job-task, job-tenant, job-queue, job-attempts, job-workflow, job-args,
//              job-result, job-error, job-events, job-event[data-kind], cancel, terminate, retry
//   dead:      dl-replay-all, dl-purge-all, dl-selected-count, dl-replay-selected, dl-purge-selected,
//              dl-select-all, dead-letter-row[data-job-id] (-select -id -task -state -tenant -queue
//              -error -attempts -dead -actions), dl-select, dl-replay, dl-purge
//   workflows: workflows-filters, wf-filter-state, wf-filter-tenant, wf-filter-apply,
//              workflow-row[data-workflow-id] (-id -name -tenant -state -steps -outcomes -created -finished),
//              workflow-state, workflow-props, workflow-counts, workflow-cancel, workflow-dag,
//              dag-node[data-step][data-state] (an SVG link to the step's job), dag-edge[data-from][data-to],
//              step-row[data-step] (-name -state -task -job -parents -progress -attempts -error -actions),
//              step-rerun
//   schedules: schedules-tenant, schedules-filter-apply, schedule-new, schedule-row[data-schedule-id]
//              (-name -tenant -source -target -timing -next -last -paused -actions), schedule-last-run,
//              schedule-pause, schedule-resume, schedule-trigger, schedule-edit, schedule-delete;
//              page: schedule-name, schedule-source, schedule-status, schedule-timing,
//              schedule-next-runs, schedule-next-run, schedule-args, schedule-workflow;
//              form: schedule-form, sf-name, sf-kind, sf-task, sf-args, sf-workflow, sf-queue, sf-timing,
//              sf-cron, sf-interval, sf-timezone, sf-overlap, sf-catch-up, sf-jitter, sf-paused, sf-submit,
//              sf-cancel, form-errors, field-error[data-field][data-pointer], schedule-read-only
//   audit:     audit-tenant, audit-apply, audit-row (-at -key_id -tenant -action -target -outcome -status -via)

import {
  ApiError, Life, api, bannerEl, clearError, forgetSession, h, isAdmin, noticeEl,
  onUnauthorized, session, showError,
} from './lib.js';
import { overviewPage } from './overview.js';
import { jobsPage } from './jobs.js';
import { jobPage } from './job.js';
import { deadLettersPage } from './dead-letters.js';
import { workflowPage, workflowsPage } from './workflows.js';
import { scheduleFormPage, schedulePage, schedulesPage } from './schedules.js';
import { auditPage } from './audit.js';

const root = document.getElementById('root') || document.body.appendChild(h('div', { id: 'root' }));
let life = null;

// ---- Routes --------------------------------------------------------------------------

const NAV = [
  ['overview', 'Overview', false],
  ['jobs', 'Jobs', false],
  ['dead-letters', 'Dead letters', true],
  ['workflows', 'Workflows', false],
  ['schedules', 'Schedules', false],
  ['audit', 'Audit', true],
];

function resolve(parts) {
  const [top, id, sub] = parts;
  switch (top) {
    case 'overview': case 'pauses': return [overviewPage];
    case 'jobs': return id ? [jobPage, id] : [jobsPage];
    case 'dead-letters': return [deadLettersPage, null, true];
    case 'workflows': return id ? [workflowPage, id] : [workflowsPage];
    case 'schedules':
      if (id === 'new') return [scheduleFormPage, null];
      if (id && sub === 'edit') return [scheduleFormPage, id];
      return id ? [schedulePage, id] : [schedulesPage];
    case 'audit': return [auditPage, null, true];
    default: return null;
  }
}

/** The hash as route parts and query: "#/jobs/abc?x=1" -> {parts:['jobs','abc'], query}. */
function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const q = raw.indexOf('?');
  const path = q < 0 ? raw : raw.slice(0, q);
  const query = new URLSearchParams(q < 0 ? '' : raw.slice(q + 1));
  const parts = path.split('/').filter(Boolean).map((p) => { try { return decodeURIComponent(p); } catch { return p; } });
  return { parts, query };
}

// ---- Shell ---------------------------------------------------------------------------

const view = h('main', { id: 'view', class: 'view', tabindex: '-1' });
const navEl = h('nav', { class: 'nav', 'aria-label': 'Sections' });
const who = h('div', { class: 'who' });
const header = h('header', { class: 'top' },
  h('a', { class: 'brand', href: '#/overview' }, 'Conveyor'), navEl, who);

function renderHeader() {
  navEl.replaceChildren(...NAV.filter(([, , admin]) => !admin || isAdmin()).map(([route, label]) =>
    h('a', { href: `#/${route}`, testid: `nav-${route}`, 'data-route': route }, label)));
  who.replaceChildren(
    h('span', { class: 'who-item' }, h('span', { class: 'muted' }, 'tenant '), h('strong', { testid: 'session-tenant' }, session.tenant ?? '—')),
    h('span', { class: 'who-item' }, h('span', { class: 'muted' }, 'key '), h('code', { testid: 'session-key-id' }, session.key_id ?? '—')),
    h('span', { class: 'who-item scopes', testid: 'session-scopes' }, session.scopes.flatMap((sc, i) => [i ? ' ' : null, h('span', { class: 'scope' }, sc)])),
    h('button', { type: 'button', class: 'secondary', testid: 'signout', onclick: signOut }, 'Sign out'),
  );
}

function markNav(top) {
  for (const a of navEl.querySelectorAll('a')) {
    if (a.dataset.route === top) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

function route() {
  if (!session.csrf) return;
  if (life) life.end();
  life = new Life();
  const { parts, query } = parseHash();
  if (!parts.length) { location.replace('#/overview'); return; }
  markNav(parts[0]);
  view.replaceChildren();
  const found = resolve(parts);
  if (!found) {
    view.append(h('h1', { testid: 'page-title' }, 'Not found'), h('p', null, 'No such page. ', h('a', { href: '#/overview' }, 'Go to the overview.')));
    return;
  }
  const [page, id, adminOnly] = found;
  if (adminOnly && !isAdmin()) {
    view.append(h('h1', { testid: 'page-title' }, 'Admin only'), h('p', null, 'This page needs a key with the admin scope.'));
    return;
  }
  try {
    const done = page({ view, id, query, life });
    if (done?.catch) done.catch(showError);
  } catch (e) { showError(e); }
}

// ---- Session ---------------------------------------------------------------------------

const keyInput = h('input', {
  type: 'password', id: 'signin-key', name: 'api_key', autocomplete: 'off', required: true,
  spellcheck: 'false', testid: 'signin-key', placeholder: 'cvk_…',
});
const signinMsg = h('p', { class: 'muted', testid: 'signin-message', 'aria-live': 'polite' });
const signinBtn = h('button', { type: 'submit', testid: 'signin-submit' }, 'Sign in');
const signinForm = h('form', { class: 'signin card', testid: 'signin-form', onsubmit: signIn },
  h('h1', null, 'Conveyor console'),
  h('label', { for: 'signin-key' }, 'API key'), keyInput, signinMsg, signinBtn);
const signinScreen = h('div', { class: 'signin-screen' }, signinForm);

function adopt(body) {
  Object.assign(session, {
    key_id: body.key_id, tenant: body.tenant,
    scopes: Array.isArray(body.scopes) ? body.scopes : [], csrf: body.csrf_token,
  });
}

function showSignin(message = '') {
  if (life) { life.end(); life = null; }
  forgetSession();
  signinMsg.textContent = message;
  root.replaceChildren(bannerEl, signinScreen);
  keyInput.focus();
}

function showApp() {
  renderHeader();
  root.replaceChildren(header, bannerEl, noticeEl, view);
  route();
}

async function signIn(event) {
  event.preventDefault();
  clearError();
  signinBtn.disabled = true;
  signinMsg.textContent = 'Signing in…';
  try {
    // The key goes once, in Authorization, never in a body or URL: the answer is a session
    // cookie (HttpOnly) and the CSRF token, which the page keeps in memory only.
    const key = keyInput.value.trim();
    adopt(await api('POST', '/ui/session', undefined, { Authorization: `Bearer ${key}` }));
    keyInput.value = '';
    signinMsg.textContent = '';
    showApp();
  } catch (e) {
    signinMsg.textContent = e.status === 401 ? 'That key was not accepted.' : '';
    showError(e, true);
  } finally {
    signinBtn.disabled = false;
  }
}

async function signOut() {
  try { await api('DELETE', '/ui/session'); } catch (e) { if (e.status !== 401) showError(e); }
  showSignin('Signed out.');
}

onUnauthorized(() => { if (session.csrf) showSignin('Your session has ended: sign in again.'); });
window.addEventListener('hashchange', () => { clearError(); route(); });

async function boot() {
  try {
    adopt(await api('GET', '/ui/session'));
    showApp();
  } catch (e) {
    showSignin();
    if (!(e instanceof ApiError) || e.status !== 401) showError(e);
  }
}

boot();
