// #/jobs/<id>: one job, followed live through its event stream (GET /v1/jobs/<id>/events:
// `job` snapshot first and last, `state` and `progress` changes in between).

import {
  fill, actionButton, api, badge, canWrite, dl, enc, get, h, json, num, progressBar, showError,
  TERMINAL, time, unreadable,
} from './lib.js';

const MAX_EVENTS = 300;

export async function jobPage({ view, id, life }) {
  const path = `/v1/jobs/${enc(id)}`;
  let job = null;
  let es = null;
  let poller = null;

  const stateBox = h('span', { class: 'state-box' });
  const liveEl = h('span', { class: 'live muted', testid: 'job-live' });
  const actions = h('div', { class: 'actions' });
  const progressBox = h('div', { class: 'progress-box' });
  const props = h('div');
  const body = h('div', { class: 'job-body' });
  const events = h('ol', { class: 'timeline', testid: 'job-events' });
  view.append(
    h('div', { class: 'page-head' },
      h('h1', { testid: 'page-title' }, 'Job ', h('code', { testid: 'job-id' }, id), ' ', stateBox),
      h('div', { class: 'actions' }, liveEl, actions)),
    progressBox,
    h('div', { class: 'columns' },
      h('section', null, h('h2', null, 'Details'), props),
      h('section', null, h('h2', null, 'Timeline'), events)),
    body);

  const setLive = (text) => { liveEl.textContent = text; };

  // ---- rendering ----
  let actionSig = '';
  function renderHead() {
    stateBox.replaceChildren(badge(job.state, 'job-state'));
    const p = job.progress;
    const text = p ? [p.total ? `${num(p.current)} / ${num(p.total)}` : num(p.current), p.message].filter(Boolean).join(' — ') : '';
    progressBox.replaceChildren(progressBar(p, job.state, 'job-progress'),
      h('span', { class: 'muted', testid: 'job-progress-text' }, text));
    const attemptsEl = props.querySelector('[data-testid="job-attempts"]');
    if (attemptsEl) attemptsEl.textContent = attemptsText();
    const sig = `${job.state}`;
    if (sig !== actionSig) { actionSig = sig; renderActions(); }
  }

  const attemptsText = () => `${num(job.attempts)}${job.max_retries != null ? ` (max retries ${job.max_retries})` : ''}`;

  function renderBody() {
    const wf = job.workflow_id ?? job.workflow;
    props.replaceChildren(dl([
      ['Task', job.task, 'job-task'],
      ['Tenant', job.tenant, 'job-tenant'],
      ['Tier', job.queue, 'job-queue'],
      ['Attempts', attemptsText(), 'job-attempts'],
      job.deaths ? ['Worker deaths', num(job.deaths)] : null,
      wf ? ['Workflow', h('span', null, h('a', { href: `#/workflows/${enc(wf)}`, testid: 'job-workflow' }, wf), job.step ? ` step ${job.step}` : '')] : null,
      ['Created', time(job.created_at)],
      job.scheduled_for ? ['Scheduled for', time(job.scheduled_for)] : null,
      ['Started', time(job.started_at)],
      ['Finished', time(job.finished_at)],
      job.dead_lettered_at ? ['Dead-lettered', time(job.dead_lettered_at)] : null,
      job.idempotency_key ? ['Idempotency key', h('code', null, job.idempotency_key)] : null,
      job.concurrency_key ? ['Concurrency key', h('code', null, job.concurrency_key)] : null,
      job.timeout_seconds ? ['Timeout', `${job.timeout_seconds} s`] : null,
      job.callback_url ? ['Callback', h('code', null, job.callback_url)] : null,
    ], 'job-props'));
    fill(body,
      h('section', null, h('h2', null, 'Arguments'), h('pre', { testid: 'job-args' }, json(job.args ?? {}))),
      job.error ? h('section', null, h('h2', null, 'Error'),
        h('pre', { class: 'error-text', testid: 'job-error' }, `${job.error.type}: ${job.error.message}`)) : null,
      job.state === 'succeeded' || job.result != null
        ? h('section', null, h('h2', null, 'Result'), h('pre', { testid: 'job-result' }, json(job.result ?? null))) : null);
  }

  function renderActions() {
    if (!canWrite()) { actions.replaceChildren(); return; }
    const open = !TERMINAL.has(job.state);
    fill(actions,
      open ? actionButton('Cancel', 'cancel', () => act(`${path}/cancel?terminate=false`), 'secondary') : null,
      open ? actionButton('Cancel & terminate', 'terminate', () => {
        if (!confirm(`Cancel job ${id} and kill the process running it?`)) return undefined;
        return act(`${path}/cancel?terminate=true`);
      }, 'danger') : null,
      job.state === 'failed' ? actionButton('Retry', 'retry', () => act(`${path}/retry`)) : null);
  }

  const renderAll = () => { renderHead(); renderBody(); };

  // ---- timeline ----
  let lastProgress = null;
  function addEvent(kind, text, at = new Date().toISOString()) {
    if (kind === 'progress' && lastProgress) {
      const fresh = time(at);
      lastProgress.time.replaceWith(fresh);
      lastProgress.time = fresh;
      lastProgress.text.textContent = text;
      lastProgress.count += 1;
      lastProgress.n.textContent = `×${lastProgress.count}`;
      return;
    }
    const entry = { time: time(at), text: h('span', { class: 'event-text' }, text), n: h('span', { class: 'muted' }), count: 1 };
    events.append(h('li', { testid: 'job-event', 'data-kind': kind }, entry.time, ' ', h('span', { class: `kind kind-${kind}` }, kind), ' ', entry.text, ' ', entry.n));
    lastProgress = kind === 'progress' ? entry : null;
    while (events.children.length > MAX_EVENTS) events.firstElementChild.remove();
  }
  const progressText = (p) => (p ? `${num(p.current)}${p.total ? ` / ${num(p.total)}` : ''}${p.message ? ` — ${p.message}` : ''}` : 'no progress');

  // ---- following ----
  function stopStream() {
    if (es) { es.close(); es = null; }
  }
  function ended() {
    stopStream();
    poller?.stop();
    poller = null;
    setLive('Ended');
  }
  function follow() {
    if (!life.alive || es || poller || TERMINAL.has(job.state)) return;
    const src = new EventSource(`${path}/events`);
    es = src;
    setLive('Connecting…');
    const parse = (e) => { try { return JSON.parse(e.data); } catch { return null; } };
    src.onopen = () => setLive('Live');
    src.addEventListener('job', (e) => {
      const j = parse(e);
      if (!j) return;
      job = j;
      renderAll();
      addEvent('job', TERMINAL.has(j.state) ? `finished: ${j.state}` : `snapshot: ${j.state}`);
      if (TERMINAL.has(j.state)) ended();
    });
    const change = (kind) => (e) => {
      const c = parse(e);
      if (!c) return;
      job = { ...job, state: c.state ?? job.state, attempts: c.attempts ?? job.attempts };
      if ('progress' in c) job.progress = c.progress;
      renderHead();
      addEvent(kind, kind === 'state' ? `${c.state} (attempt ${c.attempts})` : progressText(c.progress));
    };
    src.addEventListener('state', change('state'));
    src.addEventListener('progress', change('progress'));
    src.onerror = () => {
      if (src.readyState !== EventSource.CLOSED) { setLive('Reconnecting…'); return; }
      // The stream was refused (too many streams, signed out...): poll the job instead.
      if (es === src) es = null;
      if (!life.alive || TERMINAL.has(job.state)) return;
      setLive('Polling');
      poller = life.poll(2000, async () => {
        job = await get(path);
        renderAll();
        if (TERMINAL.has(job.state)) ended();
      });
    };
  }
  life.onEnd(stopStream);

  async function act(url) {
    await api('POST', url);
    addEvent('action', url.includes('retry') ? 'retry requested' : url.includes('terminate=true') ? 'cancel & terminate requested' : 'cancel requested');
    job = await get(path);
    if (!life.alive) return;
    renderAll();
    if (TERMINAL.has(job.state)) ended(); else follow();
  }

  // ---- start ----
  try {
    job = await get(path);
  } catch (e) {
    showError(e);
    if (life.alive) unreadable(view, 'job');
    return;
  }
  if (!life.alive) return;
  renderAll();
  for (const [k, label] of [['created_at', 'created'], ['scheduled_for', 'scheduled for'], ['started_at', 'started'], ['finished_at', 'finished']]) {
    if (job[k]) addEvent('record', label, job[k]);
  }
  if (TERMINAL.has(job.state)) setLive('Ended'); else follow();
}
