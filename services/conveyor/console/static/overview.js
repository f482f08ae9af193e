// #/overview: tiers, delayed and dead counts, 15 minutes of outcomes, pauses (GET /v1/overview).

import {
  actionButton, api, attempt, badge, enc, field, get, h, hhmm, isAdmin, notify, num, pageHeader, s,
  select, table, tasks, TIERS,
} from './lib.js';

const pausePath = (kind, name) => `/v1/admin/pauses/${enc(kind)}/${enc(name)}`;

export function overviewPage({ view, life }) {
  const admin = isAdmin();
  let poller = null;
  const refresh = () => poller?.now();

  const pause = (kind, name) => api('PUT', pausePath(kind, name)).then(() => { notify(`Paused ${kind} ${name}.`); refresh(); });
  const resume = (kind, name) => api('DELETE', pausePath(kind, name)).then(() => { notify(`Resumed ${kind} ${name}.`); refresh(); });

  const tierCols = [
    { key: 'queue', label: 'Tier', render: (t) => h('strong', null, t.queue) },
    { key: 'waiting', label: 'Waiting', cls: 'num', render: (t) => num(t.waiting) },
    { key: 'running', label: 'Running', cls: 'num', render: (t) => num(t.running) },
    { key: 'held', label: 'Held', cls: 'num', render: (t) => num(t.held) },
    { key: 'workers', label: 'Workers', cls: 'num', render: (t) => num(t.workers) },
    { key: 'paused', label: 'Status', render: (t) => badge(t.paused ? 'paused' : 'active') },
  ];
  if (admin) {
    tierCols.push({
      key: 'actions', label: '', cls: 'actions', render: (t) => (t.paused
        ? actionButton('Resume', 'tier-resume', () => resume('tier', t.queue), 'small')
        : actionButton('Pause', 'tier-pause', () => pause('tier', t.queue), 'small secondary')),
    });
  }
  const tiers = table('tier-row', tierCols, { key: (t) => t.queue, rowAttrs: (t) => ({ 'data-queue': t.queue }) });

  const delayed = h('strong', { testid: 'overview-delayed' }, '—');
  const dead = h('strong', { testid: 'overview-dead' }, '—');
  const succeeded = h('strong', { testid: 'overview-succeeded' }, '—');
  const failRate = h('strong', { testid: 'failure-rate' }, '—');
  const scopeLine = h('p', { class: 'muted', testid: 'overview-scope' });
  const cards = h('div', { class: 'cards' },
    h('div', { class: 'card stat' }, h('span', { class: 'muted' }, 'Delayed'), delayed),
    h('div', { class: 'card stat' }, h('span', { class: 'muted' }, 'Dead letters'), admin ? h('a', { href: '#/dead-letters' }, dead) : dead),
    h('div', { class: 'card stat' }, h('span', { class: 'muted' }, 'Succeeded, 15 min'), succeeded),
    h('div', { class: 'card stat' }, h('span', { class: 'muted' }, 'Failure rate, 15 min'), failRate));

  const chartBox = h('div', { class: 'chart-box', testid: 'overview-chart' });
  const pausedTable = table('pause-row', [
    { key: 'kind', label: 'Kind', render: (p) => p.kind },
    { key: 'name', label: 'Name', render: (p) => h('code', null, p.name) },
    ...(admin ? [{ key: 'actions', label: '', cls: 'actions', render: (p) => actionButton('Resume', 'resume', () => resume(p.kind, p.name), 'small') }] : []),
  ], { key: (p) => `${p.kind}/${p.name}`, empty: 'Nothing is paused.', rowAttrs: (p) => ({ 'data-kind': p.kind, 'data-name': p.name }) });

  view.append(
    pageHeader('Overview', scopeLine),
    h('section', null, h('h2', null, 'Tiers'), tiers.el),
    cards,
    h('section', null, h('h2', null, 'Outcomes per minute'), chartBox),
    h('section', null, h('h2', null, 'Paused'), pausedTable.el, admin ? pauseForm(pause) : null),
  );

  let chartSig = '';
  poller = life.poll(2000, async () => {
    const o = await get('/v1/overview');
    if (!life.alive || !o) return;
    scopeLine.textContent = o.scope === 'tenant' && o.tenant ? `Tenant ${o.tenant}` : 'All tenants';
    tiers.update(o.tiers || []);
    delayed.textContent = num(o.delayed);
    dead.textContent = num(o.dead);
    const minutes = o.minutes || [];
    const ok = minutes.reduce((a, m) => a + (m.succeeded || 0), 0);
    const bad = minutes.reduce((a, m) => a + (m.failed || 0), 0);
    succeeded.textContent = num(ok);
    failRate.textContent = ok + bad ? `${((100 * bad) / (ok + bad)).toFixed(1)} %` : '—';
    failRate.title = `${num(bad)} failed of ${num(ok + bad)} finished`;
    const sig = JSON.stringify(minutes);
    if (sig !== chartSig) { chartSig = sig; chartBox.replaceChildren(chart(minutes)); }
    pausedTable.update(o.paused || []);
  });
}

/** Stacked bars of succeeded (bottom) and failed (top) per minute, oldest left. */
function chart(minutes) {
  const W = 640, H = 180, L = 40, B = 24, T = 10;
  const n = Math.max(minutes.length, 1);
  const max = Math.max(1, ...minutes.map((m) => (m.succeeded || 0) + (m.failed || 0)));
  const slot = (W - L - 4) / n;
  const bw = Math.max(2, slot * 0.7);
  const y = (v) => H - B - ((H - B - T) * v) / max;
  const g = s('g');
  minutes.forEach((m, i) => {
    const x = L + i * slot + (slot - bw) / 2;
    const ok = m.succeeded || 0;
    const bad = m.failed || 0;
    const bar = s('g', { class: 'bar-group', testid: 'chart-bar', 'data-at': m.at },
      s('title', null, `${hhmm(m.at)} — ${ok} succeeded, ${bad} failed, ${m.retried || 0} retried`),
      s('rect', { class: 'bar-ok', x, y: y(ok), width: bw, height: Math.max(0, H - B - y(ok)) }),
      s('rect', { class: 'bar-fail', x, y: y(ok + bad), width: bw, height: Math.max(0, y(ok) - y(ok + bad)) }));
    g.append(bar);
    if (i % 3 === 0 || i === n - 1) {
      g.append(s('text', { class: 'axis', x: x + bw / 2, y: H - 6, 'text-anchor': 'middle' }, hhmm(m.at)));
    }
  });
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': 'Succeeded and failed jobs per minute, last 15 minutes' },
    s('line', { class: 'grid-line', x1: L, x2: W, y1: y(max), y2: y(max) }),
    s('line', { class: 'axis-line', x1: L, x2: W, y1: H - B, y2: H - B }),
    s('text', { class: 'axis', x: L - 6, y: y(max) + 4, 'text-anchor': 'end' }, num(max)),
    s('text', { class: 'axis', x: L - 6, y: H - B + 4, 'text-anchor': 'end' }, '0'),
    g);
  const legend = h('div', { class: 'legend' },
    h('span', { class: 'key key-ok' }), 'succeeded ', h('span', { class: 'key key-fail' }), 'failed');
  return h('div', null, svg, legend);
}

/** Pause a tier, task or tenant (admin). */
function pauseForm(pause) {
  const list = h('datalist', { id: 'pause-names' });
  const kind = select({ testid: 'pause-kind', name: 'kind' }, ['tier', 'task', 'tenant'], 'tier');
  const name = h('input', { testid: 'pause-name', name: 'name', required: true, list: 'pause-names', autocomplete: 'off' });
  const fill = async () => {
    const names = kind.value === 'tier' ? TIERS
      : kind.value === 'task' ? ((await attempt(tasks)) || []).map((t) => t.name) : [];
    list.replaceChildren(...names.map((n) => h('option', { value: n })));
  };
  kind.addEventListener('change', fill);
  fill();
  const submit = h('button', { type: 'submit', testid: 'pause-submit' }, 'Pause');
  return h('form', {
    class: 'inline-form', testid: 'pause-form',
    onsubmit: async (e) => {
      e.preventDefault();
      if (!name.value.trim()) return;
      submit.disabled = true;
      await attempt(() => pause(kind.value, name.value.trim()));
      submit.disabled = false;
      name.value = '';
    },
  }, field('Kind', kind), field('Name', name), list, submit);
}
