// #/audit (admin): who did what, newest first.

import { badge, field, get, h, pageHeader, pager, setFilters, table, time, withQuery } from './lib.js';

export function auditPage({ view, query }) {
  const tenant = query.get('tenant') || '';
  const tenantInput = h('input', { testid: 'audit-tenant', value: tenant, placeholder: 'every tenant', autocomplete: 'off' });
  const rows = table('audit-row', [
    { key: 'at', label: 'At', render: (a) => time(a.at) },
    { key: 'key_id', label: 'Key', render: (a) => h('code', null, a.key_id ?? '—') },
    { key: 'tenant', label: 'Tenant', render: (a) => a.tenant ?? '—' },
    { key: 'action', label: 'Action', render: (a) => a.action },
    { key: 'target', label: 'Target', cls: 'wrap', render: (a) => (a.target == null ? '' : h('code', null, String(a.target))) },
    { key: 'outcome', label: 'Outcome', render: (a) => badge(a.outcome) },
    { key: 'status', label: 'Status', cls: 'num', render: (a) => String(a.status ?? '') },
    { key: 'via', label: 'Via', render: (a) => a.via },
  ], { key: (a) => a.id ?? `${a.at}|${a.action}|${a.target}`, empty: 'No audit records.' });
  const pg = pager(async (cursor) => {
    const page = await get(withQuery('/v1/audit', { limit: 50, cursor, tenant }));
    rows.update(page.items || []);
    return page;
  });
  const form = h('form', {
    class: 'filters', onsubmit: (e) => {
      e.preventDefault();
      setFilters('#/audit', { tenant: tenantInput.value.trim() }, () => pg.go(null, 1));
    },
  }, field('Tenant', tenantInput), h('div', { class: 'form-actions' }, h('button', { type: 'submit', testid: 'audit-apply' }, 'Apply')));
  view.append(pageHeader('Audit'), form, rows.el, pg.el);
  pg.go(null, 1);
}
