// #/dead-letters (admin): replay or purge one, a selection, or every dead letter.

import {
  actionButton, api, badge, enc, get, h, idLink, notify, num, pageHeader, pager, showError,
  table, time, withQuery,
} from './lib.js';

export function deadLettersPage({ view }) {
  const selected = new Set();
  let items = [];

  const count = h('span', { class: 'muted', testid: 'dl-selected-count' });
  const selectAll = h('input', { type: 'checkbox', testid: 'dl-select-all', 'aria-label': 'Select every dead letter on this page', onchange: () => {
    for (const it of items) { if (selectAll.checked) selected.add(it.id); else selected.delete(it.id); }
    sync();
  } });
  const replaySel = actionButton('Replay selected', 'dl-replay-selected', () => each('replay'));
  const purgeSel = actionButton('Purge selected', 'dl-purge-selected', () => each('purge'), 'danger');

  function sync() {
    for (const box of rows.el.querySelectorAll('input[data-testid="dl-select"]')) box.checked = selected.has(box.value);
    count.textContent = selected.size ? `${selected.size} selected` : 'None selected';
    replaySel.disabled = purgeSel.disabled = selected.size === 0;
    selectAll.checked = items.length > 0 && items.every((it) => selected.has(it.id));
  }

  const one = (op, id) => (op === 'replay'
    ? api('POST', `/v1/dead-letters/${enc(id)}/replay`)
    : api('DELETE', `/v1/dead-letters/${enc(id)}`));

  async function each(op) {
    const ids = [...selected];
    let done = 0;
    let failed = null;
    for (const id of ids) {
      try { await one(op, id); done += 1; selected.delete(id); } catch (e) { failed = e; }
    }
    if (failed) showError(failed);
    notify(`${op === 'replay' ? 'Replayed' : 'Purged'} ${done} of ${ids.length}.`);
    await pg.reload();
  }

  async function all(op) {
    if (!confirm(op === 'replay' ? 'Replay every dead letter?' : 'Purge every dead letter? This cannot be undone.')) return;
    const r = op === 'replay' ? await api('POST', '/v1/dead-letters/replay') : await api('DELETE', '/v1/dead-letters');
    notify(`${op === 'replay' ? 'Replayed' : 'Purged'} ${num(r?.count ?? 0)} dead letters.`);
    selected.clear();
    await pg.go(null, 1);
  }

  const rows = table('dead-letter-row', [
    { key: 'select', label: selectAll, render: (j) => h('input', {
      type: 'checkbox', testid: 'dl-select', value: j.id, 'aria-label': `Select ${j.id}`, checked: selected.has(j.id),
      onchange: (e) => { if (e.target.checked) selected.add(j.id); else selected.delete(j.id); sync(); },
    }) },
    { key: 'id', label: 'Job', render: (j) => idLink('jobs', j.id) },
    { key: 'task', label: 'Task', render: (j) => j.task },
    { key: 'state', label: 'State', render: (j) => badge(j.state) },
    { key: 'tenant', label: 'Tenant', render: (j) => j.tenant },
    { key: 'queue', label: 'Tier', render: (j) => j.queue },
    { key: 'error', label: 'Error', cls: 'wrap', render: (j) => (j.error ? `${j.error.type}: ${j.error.message}` : '') },
    { key: 'attempts', label: 'Attempts', cls: 'num', render: (j) => num(j.attempts) },
    { key: 'dead', label: 'Dead since', render: (j) => time(j.dead_lettered_at || j.finished_at) },
    { key: 'actions', label: '', cls: 'actions', render: (j) => [
      actionButton('Replay', 'dl-replay', async () => { await one('replay', j.id); notify(`Replayed ${j.id}.`); selected.delete(j.id); await pg.reload(); }, 'small'),
      ' ',
      actionButton('Purge', 'dl-purge', async () => { await one('purge', j.id); notify(`Purged ${j.id}.`); selected.delete(j.id); await pg.reload(); }, 'small danger'),
    ] },
  ], { rowAttrs: (j) => ({ 'data-job-id': j.id }), empty: 'No dead letters.' });

  const pg = pager(async (cursor) => {
    const page = await get(withQuery('/v1/dead-letters', { limit: 50, cursor }));
    items = page.items || [];
    for (const id of [...selected]) if (!items.some((it) => it.id === id)) selected.delete(id);
    rows.update(items, (j) => (selected.has(j.id) ? '+' : ''));
    sync();
    return page;
  });

  view.append(
    pageHeader('Dead letters',
      actionButton('Replay all', 'dl-replay-all', () => all('replay')),
      actionButton('Purge all', 'dl-purge-all', () => all('purge'), 'danger')),
    h('div', { class: 'selection-bar' }, count, replaySel, purgeSel),
    rows.el, pg.el);
  sync();
  pg.go(null, 1);
}
