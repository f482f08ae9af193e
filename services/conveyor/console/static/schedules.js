// #/schedules (list), #/schedules/<id> (one, with its next runs), #/schedules/new and
// #/schedules/<id>/edit (the form; 422 pointers shown beside their fields).

import {
  fill, actionButton, api, ApiError, attempt, badge, canWrite, dl, enc, field, get, h, isAdmin, json,
  notify, pageHeader, select, setFilters, showError, table, tasks, time, TIERS, unreadable, withQuery, zoned,
} from './lib.js';

// Every IANA zone the browser knows (Intl.supportedValuesOf), else a few common ones.
const ZONES = ['UTC', 'Europe/London', 'Europe/Paris', 'Europe/Berlin', 'America/New_York', 'America/Chicago',
  'America/Los_Angeles', 'America/Sao_Paulo', 'Asia/Kolkata', 'Asia/Shanghai', 'Asia/Tokyo', 'Australia/Sydney'];

const schedulePath = (id) => `/v1/schedules/${enc(id)}`;

function timing(sc) {
  if (sc.cron) return `${sc.cron} (${sc.timezone || 'UTC'})`;
  if (sc.interval_seconds != null) {
    const n = sc.interval_seconds;
    const human = n >= 86400 && n % 86400 === 0 ? ` (${n / 86400} d)` : n >= 3600 && n % 3600 === 0 ? ` (${n / 3600} h)` : n >= 60 && n % 60 === 0 ? ` (${n / 60} min)` : '';
    return `every ${n} s${human}`;
  }
  return '—';
}

const target = (sc) => (sc.workflow ? h('em', null, 'workflow') : sc.task || '—');

function lastRun(sc) {
  if (!sc.last_run_id) return time(sc.last_run_at);
  const href = sc.workflow ? `#/workflows/${enc(sc.last_run_id)}` : `#/jobs/${enc(sc.last_run_id)}`;
  return h('a', { href, title: sc.last_run_id, testid: 'schedule-last-run' }, sc.last_run_at ? time(sc.last_run_at) : sc.last_run_id);
}

/** The buttons of one schedule (file schedules: read-only, Trigger only). */
function scheduleActions(sc, after, onDelete) {
  if (!canWrite()) return [];
  const run = (path, message) => async () => {
    const r = await api('POST', `${schedulePath(sc.id)}/${path}`);
    notify(message(r));
    await after();
  };
  const trigger = actionButton('Trigger now', 'schedule-trigger', run('trigger', (r) => {
    if (r?.job_id) return h('span', null, 'Started job ', h('a', { href: `#/jobs/${enc(r.job_id)}` }, r.job_id), '.');
    if (r?.workflow_id) return h('span', null, 'Started workflow ', h('a', { href: `#/workflows/${enc(r.workflow_id)}` }, r.workflow_id), '.');
    return `Triggered ${sc.name}.`;
  }), 'small');
  if (sc.source === 'file') return [trigger, ' ', h('span', { class: 'muted', title: 'Defined in the schedule file' }, 'read-only')];
  return [
    sc.paused
      ? actionButton('Resume', 'schedule-resume', run('resume', () => `Resumed ${sc.name}.`), 'small')
      : actionButton('Pause', 'schedule-pause', run('pause', () => `Paused ${sc.name}.`), 'small secondary'),
    ' ', trigger, ' ',
    h('a', { href: `#/schedules/${enc(sc.id)}/edit`, class: 'button small secondary', testid: 'schedule-edit' }, 'Edit'),
    ' ',
    actionButton('Delete', 'schedule-delete', async () => {
      if (!confirm(`Delete schedule ${sc.name}?`)) return;
      await api('DELETE', schedulePath(sc.id));
      notify(`Deleted ${sc.name}.`);
      await onDelete();
    }, 'small danger'),
  ];
}

export function schedulesPage({ view, query }) {
  const admin = isAdmin();
  const tenant = admin ? query.get('tenant') || '' : '';
  const tenantInput = admin ? h('input', { testid: 'schedules-tenant', value: tenant, placeholder: 'every tenant', autocomplete: 'off' }) : null;
  const rows = table('schedule-row', [
    { key: 'name', label: 'Name', render: (sc) => h('a', { href: `#/schedules/${enc(sc.id)}` }, sc.name) },
    { key: 'tenant', label: 'Tenant', render: (sc) => sc.tenant },
    { key: 'source', label: 'Source', render: (sc) => h('span', { class: `badge source-${sc.source}` }, sc.source) },
    { key: 'target', label: 'Runs', render: target },
    { key: 'timing', label: 'When', render: (sc) => h('code', null, timing(sc)) },
    { key: 'next', label: 'Next run', render: (sc) => time(sc.next_run_at) },
    { key: 'last', label: 'Last run', render: lastRun },
    { key: 'paused', label: 'Status', render: (sc) => badge(sc.paused ? 'paused' : 'active') },
    { key: 'actions', label: '', cls: 'actions', render: (sc) => scheduleActions(sc, load, load) },
  ], { rowAttrs: (sc) => ({ 'data-schedule-id': sc.id, 'data-name': sc.name, 'data-source': sc.source }), empty: 'No schedules.' });
  async function load() {
    const page = await get(withQuery('/v1/schedules', { tenant }));
    rows.update(page.items || []);
  }
  fill(view,
    pageHeader('Schedules', canWrite() ? h('a', { href: '#/schedules/new', class: 'button', testid: 'schedule-new' }, 'New schedule') : null),
    admin ? h('form', {
      class: 'filters', onsubmit: (e) => {
        e.preventDefault();
        setFilters('#/schedules', { tenant: tenantInput.value.trim() }, () => attempt(load));
      },
    }, field('Tenant', tenantInput), h('div', { class: 'form-actions' }, h('button', { type: 'submit', testid: 'schedules-filter-apply' }, 'Apply'))) : null,
    rows.el);
  attempt(load);
}

export async function schedulePage({ view, id, life }) {
  let sc;
  try { sc = await get(schedulePath(id)); } catch (e) {
    showError(e);
    unreadable(view, 'schedule');
    return;
  }
  const box = h('div');
  view.append(box);
  const render = () => {
    const zone = sc.timezone || 'UTC';
    fill(box,
      pageHeader(['Schedule ', h('span', { testid: 'schedule-name' }, sc.name), ' ',
        h('span', { class: `badge source-${sc.source}`, testid: 'schedule-source' }, sc.source), ' ',
        badge(sc.paused ? 'paused' : 'active', 'schedule-status')],
      ...scheduleActions(sc, reload, () => { location.hash = '#/schedules'; })),
      h('div', { class: 'columns' },
        h('section', null, h('h2', null, 'Definition'), dl([
          ['Id', h('code', null, sc.id)],
          ['Tenant', sc.tenant],
          ['Runs', target(sc)],
          ['Tier', sc.queue || (sc.workflow ? '—' : "task's default")],
          ['When', h('code', null, timing(sc)), 'schedule-timing'],
          ['Overlap', sc.overlap],
          ['Catch up', sc.catch_up],
          ['Jitter', `${sc.jitter_seconds ?? 0} s`],
          ['Last run', lastRun(sc)],
          ['Created', time(sc.created_at)],
          ['Updated', time(sc.updated_at)],
        ])),
        h('section', null, h('h2', null, 'Next runs'),
          sc.paused ? h('p', { class: 'muted' }, 'Paused: no next run.') : null,
          h('ol', { class: 'next-runs', testid: 'schedule-next-runs' }, (sc.next_runs || []).slice(0, 5).map((at) =>
            h('li', { testid: 'schedule-next-run' }, time(at), zone !== 'UTC' ? h('span', { class: 'muted' }, ` — ${zoned(at, zone)}`) : null))))),
      sc.workflow
        ? h('section', null, h('h2', null, 'Workflow'), h('pre', { testid: 'schedule-workflow' }, json(sc.workflow)))
        : h('section', null, h('h2', null, 'Arguments'), h('pre', { testid: 'schedule-args' }, json(sc.args ?? {}))));
  };
  async function reload() {
    sc = await get(schedulePath(id));
    if (life.alive) render();
  }
  render();
}

// ---- the form ------------------------------------------------------------------------

let zoneList = null;
function zoneDatalist() {
  if (!zoneList) {
    let zones = ZONES;
    try { const all = Intl.supportedValuesOf?.('timeZone'); if (all?.length) zones = ['UTC', ...all.filter((z) => z !== 'UTC')]; } catch { /* old browser */ }
    zoneList = zones;
  }
  return h('datalist', { id: 'sf-zones' }, zoneList.map((z) => h('option', { value: z })));
}

const FIELDS = ['name', 'kind', 'task', 'args', 'workflow', 'queue', 'timing', 'cron', 'interval_seconds', 'timezone', 'overlap', 'catch_up', 'jitter_seconds', 'paused'];

export async function scheduleFormPage({ view, id, life }) {
  let sc = null;
  if (id) {
    try { sc = await get(schedulePath(id)); } catch (e) {
      showError(e);
      unreadable(view, 'schedule');
      return;
    }
    if (!life.alive) return;
    if (sc.source === 'file') {
      view.append(h('h1', { testid: 'page-title' }, `Schedule ${sc.name}`),
        h('p', { testid: 'schedule-read-only' }, 'This schedule comes from the schedule file: it is read-only here. ', h('a', { href: `#/schedules/${enc(id)}` }, 'Back')));
      return;
    }
  }
  if (!canWrite()) {
    view.append(h('h1', { testid: 'page-title' }, 'Schedules'), h('p', null, 'Changing schedules needs the jobs:write scope.'));
    return;
  }

  const c = {
    name: h('input', { testid: 'sf-name', name: 'name', required: true, maxlength: 100, pattern: '[A-Za-z0-9][A-Za-z0-9_.\\-]*', autocomplete: 'off', value: sc?.name ?? '' }),
    kind: select({ testid: 'sf-kind', name: 'kind' }, [['task', 'Task'], ['workflow', 'Workflow']], sc?.workflow ? 'workflow' : 'task'),
    task: select({ testid: 'sf-task', name: 'task' }, [['', 'Choose a task…']]),
    args: h('textarea', { testid: 'sf-args', name: 'args', rows: 5, spellcheck: 'false', class: 'mono', value: json(sc?.args ?? {}) }),
    workflow: h('textarea', { testid: 'sf-workflow', name: 'workflow', rows: 10, spellcheck: 'false', class: 'mono',
      placeholder: '{"steps": [{"name": "a", "task": "…", "args": {}}]}', value: sc?.workflow ? json(sc.workflow) : '' }),
    queue: select({ testid: 'sf-queue', name: 'queue' }, [['', "Task's default"], ...TIERS], sc?.queue ?? ''),
    timing: select({ testid: 'sf-timing', name: 'timing' }, [['cron', 'Cron expression'], ['interval', 'Fixed interval']], sc?.interval_seconds != null ? 'interval' : 'cron'),
    cron: h('input', { testid: 'sf-cron', name: 'cron', placeholder: '*/5 * * * *', autocomplete: 'off', class: 'mono', value: sc?.cron ?? '' }),
    interval_seconds: h('input', { testid: 'sf-interval', name: 'interval_seconds', type: 'number', min: '0', step: 'any', value: sc?.interval_seconds ?? '' }),
    timezone: h('input', { testid: 'sf-timezone', name: 'timezone', list: 'sf-zones', autocomplete: 'off', value: sc?.timezone ?? 'UTC' }),
    overlap: select({ testid: 'sf-overlap', name: 'overlap' }, [['allow', 'Allow overlapping runs'], ['skip', 'Skip a tick while a run is unfinished']], sc?.overlap ?? 'allow'),
    catch_up: select({ testid: 'sf-catch-up', name: 'catch_up' }, [['run_once', 'Run the latest missed tick once'], ['skip', 'Skip missed ticks']], sc?.catch_up ?? 'run_once'),
    jitter_seconds: h('input', { testid: 'sf-jitter', name: 'jitter_seconds', type: 'number', min: '0', max: '3600', step: 'any', value: sc?.jitter_seconds ?? 0 }),
    paused: h('input', { testid: 'sf-paused', name: 'paused', type: 'checkbox', checked: !!sc?.paused }),
  };
  if (sc?.task) { c.task.append(h('option', { value: sc.task }, sc.task)); c.task.value = sc.task; }
  tasks().then((ts) => { for (const t of ts) if (t.name !== sc?.task) c.task.append(h('option', { value: t.name }, t.name)); }).catch(showError);

  const errs = Object.fromEntries(FIELDS.map((f) => [f, h('small', { class: 'field-error', testid: 'field-error', 'data-field': f, hidden: true })]));
  const wrap = (label, f, hint) => { const el = field(label, c[f], hint); el.append(errs[f]); return el; };
  const formErrors = h('ul', { class: 'form-errors', testid: 'form-errors', 'aria-live': 'polite', hidden: true });

  const taskPart = h('div', { class: 'form-grid' }, wrap('Task', 'task'), wrap('Tier', 'queue'), wrap('Arguments (JSON object)', 'args'));
  const workflowPart = h('div', { class: 'form-grid wide' }, wrap('Workflow (JSON, as POST /v1/workflows takes it)', 'workflow'));
  const cronPart = wrap('Cron (minute hour day month weekday)', 'cron');
  const intervalPart = wrap('Every (seconds)', 'interval_seconds');
  const zonePart = wrap('Time zone (IANA)', 'timezone');
  const toggle = () => {
    const wfKind = c.kind.value === 'workflow';
    taskPart.hidden = wfKind;
    workflowPart.hidden = !wfKind;
    const cron = c.timing.value === 'cron';
    cronPart.hidden = !cron;
    zonePart.hidden = !cron;
    intervalPart.hidden = cron;
  };
  c.kind.addEventListener('change', toggle);
  c.timing.addEventListener('change', toggle);
  toggle();

  const submit = h('button', { type: 'submit', testid: 'sf-submit' }, sc ? 'Save changes' : 'Create schedule');
  const form = h('form', { class: 'schedule-form card', testid: 'schedule-form', novalidate: true, onsubmit: save },
    formErrors,
    h('div', { class: 'form-grid' }, wrap('Name', 'name', 'Letters, digits, _ . - (unique per tenant)'), wrap('Runs', 'kind')),
    taskPart, workflowPart,
    h('div', { class: 'form-grid' }, wrap('Timing', 'timing'), cronPart, intervalPart, zonePart, zoneDatalist()),
    h('div', { class: 'form-grid' }, wrap('Overlap', 'overlap'), wrap('Catch up', 'catch_up'), wrap('Jitter (seconds)', 'jitter_seconds'),
      h('label', { class: 'field check' }, c.paused, h('span', null, ' Paused'), errs.paused)),
    h('div', { class: 'form-actions' }, submit,
      h('a', { href: sc ? `#/schedules/${enc(sc.id)}` : '#/schedules', class: 'button secondary', testid: 'sf-cancel' }, 'Cancel')));

  view.append(pageHeader(sc ? `Edit schedule ${sc.name}` : 'New schedule'), form);

  function clearErrors() {
    for (const e of Object.values(errs)) { e.hidden = true; e.textContent = ''; e.removeAttribute('data-pointer'); }
    formErrors.hidden = true;
    formErrors.replaceChildren();
  }
  function fieldError(pointer, detail) {
    const parts = String(pointer || '').replace(/^#\/?/, '').split('/').filter(Boolean);
    if (parts[0] === 'body') parts.shift();
    const slot = errs[parts[0]];
    const text = parts.length > 1 ? `${parts.slice(1).join('/')}: ${detail}` : detail;
    if (slot && !(parts[0] === 'args' && c.kind.value === 'workflow')) {
      slot.textContent = slot.textContent ? `${slot.textContent} ${text}` : text;
      slot.setAttribute('data-pointer', pointer);
      slot.hidden = false;
    } else {
      formErrors.append(h('li', { 'data-pointer': pointer || '#' }, pointer && pointer !== '#' ? `${pointer}: ${detail}` : detail));
      formErrors.hidden = false;
    }
  }
  function parseJson(f) {
    try {
      const v = JSON.parse(c[f].value || (f === 'args' ? '{}' : ''));
      if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('expected a JSON object');
      return v;
    } catch (e) {
      fieldError(`#/${f}`, `Not a JSON object (${e.message}).`);
      return undefined;
    }
  }

  async function save(event) {
    event.preventDefault();
    clearErrors();
    const body = {
      name: c.name.value.trim(), timezone: c.timezone.value.trim() || 'UTC', overlap: c.overlap.value,
      catch_up: c.catch_up.value, jitter_seconds: Number(c.jitter_seconds.value || 0), paused: c.paused.checked,
    };
    if (c.kind.value === 'workflow') {
      body.workflow = parseJson('workflow');
      if (body.workflow === undefined) return;
      Object.assign(body, { task: null, args: {}, queue: null });
    } else {
      body.args = parseJson('args');
      if (body.args === undefined) return;
      Object.assign(body, { task: c.task.value || null, queue: c.queue.value || null, workflow: null });
      if (!body.task) { fieldError('#/task', 'Choose a task.'); return; }
    }
    if (c.timing.value === 'cron') Object.assign(body, { cron: c.cron.value.trim(), interval_seconds: null });
    else Object.assign(body, { interval_seconds: c.interval_seconds.value === '' ? null : Number(c.interval_seconds.value), cron: null });
    if (!sc) {
      // A new schedule: leave out what is unset (the API's defaults apply).
      for (const k of Object.keys(body)) if (body[k] === null) delete body[k];
      if (body.workflow) delete body.args;
    }
    submit.disabled = true;
    try {
      // If-Match: the version this form was filled from; a change made meanwhile (a pause,
      // another operator's edit) is a 412, never silently undone.
      const saved = sc
        ? await api('PATCH', schedulePath(sc.id), body, { 'If-Match': String(sc.version) })
        : await api('POST', '/v1/schedules', body);
      notify(sc ? `Saved ${saved?.name ?? body.name}.` : `Created ${saved?.name ?? body.name}.`);
      location.hash = `#/schedules/${enc(saved?.id ?? sc?.id)}`;
    } catch (e) {
      showError(e);
      if (e instanceof ApiError && e.errors.length) for (const fe of e.errors) fieldError(fe.pointer, fe.detail);
      else if (e instanceof ApiError && e.status === 422) fieldError('#', e.detail || e.title);
    } finally {
      submit.disabled = false;
    }
  }
}
