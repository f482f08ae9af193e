// #/workflows: the listing; #/workflows/<id>: the DAG (SVG, layered), steps, cancel and rerun.

import {
  fill, actionButton, api, badge, canWrite, dl, enc, field, get, h, isAdmin, num, pager,
  idLink, pageHeader, progressBar, s, select, setFilters, shortId, showError, table, time, unreadable, withQuery,
} from './lib.js';

const WF_STATES = ['running', 'succeeded', 'failed', 'cancelled'];

export function workflowsPage({ view, query }) {
  const admin = isAdmin();
  const filters = { state: query.get('state') || '', tenant: admin ? query.get('tenant') || '' : '' };
  const state = select({ testid: 'wf-filter-state' }, [['', 'Any state'], ...WF_STATES], filters.state);
  const tenant = admin ? h('input', { testid: 'wf-filter-tenant', value: filters.tenant, placeholder: 'every tenant', autocomplete: 'off' }) : null;
  const form = h('form', {
    class: 'filters', testid: 'workflows-filters',
    onsubmit: (e) => {
      e.preventDefault();
      setFilters('#/workflows', { state: state.value, tenant: tenant?.value.trim() }, () => pg.go(null, 1));
    },
  }, field('State', state), tenant ? field('Tenant', tenant) : null,
  h('div', { class: 'form-actions' }, h('button', { type: 'submit', testid: 'wf-filter-apply' }, 'Apply')));

  const rows = table('workflow-row', [
    { key: 'id', label: 'Workflow', render: (w) => idLink('workflows', w.id) },
    { key: 'name', label: 'Name', render: (w) => w.name || '' },
    { key: 'tenant', label: 'Tenant', render: (w) => w.tenant },
    { key: 'state', label: 'State', render: (w) => badge(w.state) },
    { key: 'steps', label: 'Steps', render: (w) => [progressBar({ current: w.steps_done, total: w.steps_total }, w.state), ` ${num(w.steps_done)} / ${num(w.steps_total)}`] },
    { key: 'outcomes', label: 'OK / failed / cancelled', cls: 'num', render: (w) => `${num(w.steps_succeeded)} / ${num(w.steps_failed)} / ${num(w.steps_cancelled)}` },
    { key: 'created', label: 'Created', render: (w) => time(w.created_at) },
    { key: 'finished', label: 'Finished', render: (w) => time(w.finished_at) },
  ], { rowAttrs: (w) => ({ 'data-workflow-id': w.id, 'data-state': w.state }), empty: 'No workflows.' });
  const pg = pager(async (cursor) => {
    const page = await get(withQuery('/v1/workflows', { ...filters, limit: 50, cursor }));
    rows.update(page.items || []);
    return page;
  });
  view.append(pageHeader('Workflows'), form, rows.el, pg.el);
  pg.go(null, 1);
}

export async function workflowPage({ view, id, life }) {
  const path = `/v1/workflows/${enc(id)}`;
  let wf = null;
  let poller = null;

  const title = h('span', null, shortId(id));
  const stateBox = h('span');
  const actions = h('div', { class: 'actions' });
  const summary = h('div');
  const dag = h('div', { class: 'dag', testid: 'workflow-dag' });
  const steps = table('step-row', [
    { key: 'name', label: 'Step', render: (st) => h('strong', null, st.name) },
    { key: 'state', label: 'State', render: (st) => badge(st.state) },
    { key: 'task', label: 'Task', render: (st) => st.task },
    { key: 'job', label: 'Job', render: (st) => idLink('jobs', st.job_id) },
    { key: 'parents', label: 'After', render: (st) => parentsOf(st).join(', ') },
    { key: 'progress', label: 'Progress', render: (st) => progressBar(st.progress, st.state) },
    { key: 'attempts', label: 'Attempts', cls: 'num', render: (st) => num(st.attempts) },
    { key: 'error', label: 'Error', cls: 'wrap', render: (st) => (st.error ? `${st.error.type}: ${st.error.message}` : '') },
    { key: 'actions', label: '', cls: 'actions', render: (st) => (canWrite() && st.state === 'failed' && wf?.state !== 'cancelled'
      ? actionButton('Rerun', 'step-rerun', () => act(`${path}/steps/${enc(st.name)}/rerun`), 'small') : '') },
  ], { key: (st) => st.name, rowAttrs: (st) => ({ 'data-step': st.name, 'data-state': st.state }), empty: 'No steps.' });

  view.append(
    pageHeader(['Workflow ', title, ' ', stateBox], actions),
    summary,
    h('section', null, h('h2', null, 'Graph'), dag),
    h('section', null, h('h2', null, 'Steps'), steps.el));

  let dagSig = '';
  function render() {
    title.textContent = wf.name || shortId(wf.id);
    title.title = wf.id;
    stateBox.replaceChildren(badge(wf.state, 'workflow-state'));
    fill(actions, canWrite() && wf.state === 'running'
      ? actionButton('Cancel workflow', 'workflow-cancel', () => act(`${path}/cancel`), 'danger') : null);
    summary.replaceChildren(dl([
      ['Id', h('code', null, wf.id)],
      ['Tenant', wf.tenant],
      ['Failure policy', wf.failure_policy],
      ['Steps', `${num(wf.steps_done)} of ${num(wf.steps_total)} done: ${num(wf.steps_succeeded)} succeeded, ${num(wf.steps_failed)} failed, ${num(wf.steps_cancelled)} cancelled or skipped`, 'workflow-counts'],
      ['Created', time(wf.created_at)],
      ['Finished', time(wf.finished_at)],
      wf.idempotency_key ? ['Idempotency key', h('code', null, wf.idempotency_key)] : null,
    ], 'workflow-props'));
    const list = wf.steps || [];
    const sig = JSON.stringify(list.map((st) => [st.name, st.state, st.job_id, parentsOf(st)]));
    if (sig !== dagSig) { dagSig = sig; dag.replaceChildren(drawDag(list)); }
    steps.update(list, () => wf.state);
  }

  async function load() {
    wf = await get(path);
    if (!life.alive) return;
    render();
    if (wf.state !== 'running') { poller?.stop(); }
  }
  function watch() {
    if (!poller || poller.stopped) poller = life.poll(2000, load);
  }
  async function act(url) {
    await api('POST', url);
    await load();
    if (wf.state === 'running') watch();
  }

  try {
    await load();
  } catch (e) {
    showError(e);
    unreadable(view, 'workflow');
    return;
  }
  if (life.alive && wf.state === 'running') watch();
}

const parentsOf = (st) => st.depends_on ?? st.parents ?? [];

/** Layered layout: a step's layer is 1 + the largest of its parents' (roots: 0), layers left
 * to right; within a layer, steps are ordered by their parents' mean position. */
function layout(list) {
  const byName = new Map(list.map((st) => [st.name, st]));
  const layerOf = new Map();
  const visiting = new Set();
  const depth = (st) => {
    if (layerOf.has(st.name)) return layerOf.get(st.name);
    if (visiting.has(st.name)) return 0; // a cycle cannot be accepted; do not loop on one
    visiting.add(st.name);
    let d = 0;
    for (const p of parentsOf(st)) if (byName.has(p)) d = Math.max(d, 1 + depth(byName.get(p)));
    layerOf.set(st.name, d);
    return d;
  };
  const layers = [];
  for (const st of list) (layers[depth(st)] ||= []).push(st);
  const row = new Map();
  layers.forEach((layer, i) => {
    if (i > 0) {
      const center = (st) => {
        const ps = parentsOf(st).filter((p) => row.has(p));
        return ps.length ? ps.reduce((a, p) => a + row.get(p), 0) / ps.length : 0;
      };
      const ranked = layer.map((st) => [center(st), st]);
      ranked.sort((a, b) => a[0] - b[0]); // stable: ties keep the API's order
      layers[i] = ranked.map(([, st]) => st);
    }
    layers[i].forEach((st, r) => row.set(st.name, r));
  });
  return { layers: layers.map((l) => l || []), layerOf, row };
}

const NODE_W = 168, NODE_H = 46, GAP_X = 60, GAP_Y = 16, PAD = 12;
const clip = (t, n) => (t.length > n ? `${t.slice(0, n - 1)}…` : t);

function drawDag(list) {
  if (!list.length) return h('p', { class: 'muted' }, 'No steps.');
  const { layers, layerOf, row } = layout(list);
  const tallest = Math.max(...layers.map((l) => l.length));
  const width = PAD * 2 + layers.length * NODE_W + (layers.length - 1) * GAP_X;
  const height = PAD * 2 + tallest * NODE_H + (tallest - 1) * GAP_Y;
  const pos = new Map();
  for (const st of list) {
    const li = layerOf.get(st.name);
    const offset = ((tallest - layers[li].length) * (NODE_H + GAP_Y)) / 2;
    pos.set(st.name, { x: PAD + li * (NODE_W + GAP_X), y: PAD + offset + row.get(st.name) * (NODE_H + GAP_Y) });
  }
  const edges = s('g', { class: 'edges' });
  const nodes = s('g', { class: 'nodes' });
  for (const st of list) {
    const to = pos.get(st.name);
    for (const p of parentsOf(st)) {
      const from = pos.get(p);
      if (!from) continue;
      const x1 = from.x + NODE_W, y1 = from.y + NODE_H / 2, x2 = to.x - 2, y2 = to.y + NODE_H / 2;
      const dx = Math.max(20, (x2 - x1) / 2);
      edges.append(s('path', {
        class: 'edge', testid: 'dag-edge', 'data-from': p, 'data-to': st.name,
        d: `M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}`, 'marker-end': 'url(#dag-arrow)',
      }));
    }
    nodes.append(s('a', {
      href: `#/jobs/${enc(st.job_id)}`, class: `node state-${st.state}`, testid: 'dag-node',
      'data-step': st.name, 'data-state': st.state, transform: `translate(${to.x},${to.y})`,
    },
    s('title', null, `${st.name} (${st.task}): ${st.state}`),
    s('rect', { width: NODE_W, height: NODE_H, rx: 9, ry: 9 }),
    s('text', { class: 'node-name', x: 12, y: 19 }, clip(st.name, 22)),
    s('text', { class: 'node-state', x: 12, y: 36 }, `${st.state}${st.progress?.total ? ` · ${Math.round((100 * st.progress.current) / st.progress.total)} %` : ''}`)));
  }
  return s('svg', { width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': 'Workflow graph' },
    s('defs', null, s('marker', { id: 'dag-arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
      s('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrow' }))),
    edges, nodes);
}
