// #/jobs: filtered listing (filters live in the hash query), find by id or idempotency key,
// live refresh of the first page.

import {
  attempt, badge, enc, field, get, h, isAdmin, isoToLocal, JOB_STATES, localToIso, num,
  idLink, pageHeader, pager, progressBar, select, setFilters, showError, table, tasks, time, TIERS, withQuery,
} from './lib.js';

let live = true; // kept across re-renders of the page

const jobColumns = [
  { key: 'id', label: 'Job', render: (j) => idLink('jobs', j.id) },
  { key: 'task', label: 'Task', render: (j) => j.task },
  { key: 'state', label: 'State', render: (j) => badge(j.state) },
  { key: 'tenant', label: 'Tenant', render: (j) => j.tenant },
  { key: 'queue', label: 'Tier', render: (j) => j.queue },
  { key: 'progress', label: 'Progress', render: (j) => progressBar(j.progress, j.state) },
  { key: 'attempts', label: 'Attempts', cls: 'num', render: (j) => num(j.attempts) },
  { key: 'created', label: 'Created', render: (j) => time(j.created_at) },
];

export function jobsPage({ view, query, life }) {
  const admin = isAdmin();
  const q = (k) => query.get(k) || '';

  const state = select({ testid: 'filter-state', name: 'state' }, [['', 'Any state'], ...JOB_STATES], q('state'));
  const task = select({ testid: 'filter-task', name: 'task' }, [['', 'Any task']]);
  if (q('task')) { task.append(h('option', { value: q('task') }, q('task'))); task.value = q('task'); }
  tasks().then((ts) => {
    for (const t of ts) if (t.name !== q('task')) task.append(h('option', { value: t.name }, t.name));
  }).catch(showError);
  const queue = select({ testid: 'filter-queue', name: 'queue' }, [['', 'Any tier'], ...TIERS], q('queue'));
  const tenant = admin ? h('input', { testid: 'filter-tenant', name: 'tenant', value: q('tenant'), placeholder: 'every tenant', autocomplete: 'off' }) : null;
  const since = h('input', { type: 'datetime-local', testid: 'filter-since', name: 'since', value: isoToLocal(q('since')) });
  const until = h('input', { type: 'datetime-local', testid: 'filter-until', name: 'until', value: isoToLocal(q('until')) });

  const filters = {
    state: q('state'), task: q('task'), queue: q('queue'), tenant: admin ? q('tenant') : '',
    since: q('since'), until: q('until'),
  };
  const form = h('form', {
    class: 'filters', testid: 'jobs-filters',
    onsubmit: (e) => {
      e.preventDefault();
      setFilters('#/jobs', {
        state: state.value, task: task.value, queue: queue.value, tenant: tenant?.value.trim(),
        since: localToIso(since.value), until: localToIso(until.value),
      }, () => pg.go(null, 1));
    },
  },
  field('State', state), field('Task', task), field('Tier', queue),
  tenant ? field('Tenant', tenant) : null,
  field('Created after', since), field('Created before', until),
  h('div', { class: 'form-actions' },
    h('button', { type: 'submit', testid: 'filter-apply' }, 'Apply'),
    h('a', { href: '#/jobs', class: 'button secondary', testid: 'filter-reset' }, 'Reset')));

  const findInput = h('input', { testid: 'find-input', placeholder: 'Job id or idempotency key', autocomplete: 'off', 'aria-label': 'Job id or idempotency key' });
  const findById = () => { const v = findInput.value.trim(); if (v) location.hash = `#/jobs/${enc(v)}`; };
  const findByKey = async () => {
    const v = findInput.value.trim();
    if (!v) return;
    const page = await attempt(() => get(withQuery('/v1/jobs', { idempotency_key: v, tenant: tenant?.value.trim() })));
    if (!page) return;
    const job = page.items?.[0];
    if (job) location.hash = `#/jobs/${enc(job.id)}`;
    else showError(new Error(`No job has the idempotency key ${JSON.stringify(v)}.`));
  };
  const find = h('form', { class: 'inline-form find', onsubmit: (e) => { e.preventDefault(); findById(); } },
    findInput,
    h('button', { type: 'submit', testid: 'find-id' }, 'Open job'),
    h('button', { type: 'button', testid: 'find-key', class: 'secondary', onclick: findByKey }, 'Find by idempotency key'));

  const liveBox = h('input', { type: 'checkbox', testid: 'jobs-live', checked: live, onchange: () => { live = liveBox.checked; } });
  const rows = table('job-row', jobColumns, { rowAttrs: (j) => ({ 'data-job-id': j.id, 'data-state': j.state }), empty: 'No jobs match.' });
  const pg = pager(async (cursor) => {
    const page = await get(withQuery('/v1/jobs', { ...filters, limit: 50, cursor }));
    if (life.alive) rows.update(page.items || []);
    return page;
  });

  view.append(
    pageHeader('Jobs', h('label', { class: 'toggle' }, liveBox, ' Live (first page, every 2 s)')),
    find, form, rows.el, pg.el);

  let loaded = false;
  life.poll(2000, async () => {
    if (!loaded || (live && pg.onFirst)) { loaded = true; await pg.reload(); }
  });
}
