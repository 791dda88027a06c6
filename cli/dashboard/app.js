// The live line view: one EventSource on /events, each message a whole snapshot
// (see dash_model.h), rendered into the tables and the SVG chart. No library,
// nothing fetched from anywhere but this server.
'use strict';

const token = new URLSearchParams(location.search).get('token') || '';
const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function bar(done, total) {
  const pct = total > 0 ? Math.min(100, (100 * done) / total) : 0;
  const inner = el('div');
  inner.style.width = pct.toFixed(1) + '%';
  return el('div', { class: 'bar', title: done + ' of ' + total }, inner);
}

function duration(s) {
  if (s === null || s === undefined) return '—';
  if (s < 60) return s + ' s';
  if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
  return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
}

function ago(ms, now) {
  if (!ms) return 'never';
  return duration(Math.max(0, Math.round((now - ms) / 1000))) + ' ago';
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function renderJobs(s) {
  fill($('#jobs tbody'), s.jobs.map((j) => el('tr', { 'data-job': j.job },
    el('td', {}, j.job), el('td', { class: 'status' }, j.status), el('td', {}, bar(j.issued, j.quota)),
    el('td', { class: 'num issued' }, j.issued), el('td', { class: 'num quota' }, j.quota),
    el('td', { class: 'num remaining' }, j.remaining), el('td', { class: 'num refused' }, j.refused),
    el('td', { class: 'num rate' }, j.rate_per_min), el('td', { class: 'eta' }, duration(j.eta_s)))));
}

function renderProgrammers(s) {
  fill($('#programmers tbody'), s.programmers.map((p) => el('tr', { 'data-programmer': p.programmer },
    el('td', {}, p.programmer),
    el('td', {}, el('span', { class: 'online badge ' + (p.online ? 'on' : 'off') }, p.online ? 'online' : 'offline')),
    el('td', { class: 'state' }, p.state), el('td', {}, p.job || '—'),
    el('td', {}, bar(p.counter, p.limit), ' ', el('span', { class: 'counter' }, p.counter), ' / ', p.limit),
    el('td', { class: 'num done' }, p.done), el('td', { class: 'num failed' }, p.failed),
    el('td', { class: 'seen' }, ago(p.last_seen_ms, s.now_ms)))));
}

function renderFailures(s) {
  const rows = s.failures.map((f) => el('tr', {}, el('td', {}, f.job), el('td', {}, f.reason),
    el('td', { class: 'num' }, f.count)));
  if (!rows.length) rows.push(el('tr', {}, el('td', { colspan: 3 }, 'none')));
  fill($('#failures tbody'), rows);
}

function renderChart(s) {
  const svg = $('#chart');
  const ns = 'http://www.w3.org/2000/svg';
  const max = Math.max(1, ...s.per_minute);
  const w = 600 / s.per_minute.length;
  const parts = s.per_minute.map((n, i) => {
    const r = document.createElementNS(ns, 'rect');
    const h = (140 * n) / max;
    r.setAttribute('x', (i * w + 1).toFixed(1));
    r.setAttribute('y', (145 - h).toFixed(1));
    r.setAttribute('width', (w - 2).toFixed(1));
    r.setAttribute('height', h.toFixed(1));
    const t = document.createElementNS(ns, 'title');
    t.textContent = n + ' devices, ' + (s.per_minute.length - 1 - i) + ' min ago';
    r.append(t);
    return r;
  });
  const label = document.createElementNS(ns, 'text');
  label.setAttribute('x', '4');
  label.setAttribute('y', '12');
  label.textContent = 'max ' + max + '/min';
  svg.replaceChildren(label, ...parts);
}

function render(s) {
  renderJobs(s);
  renderProgrammers(s);
  renderFailures(s);
  renderChart(s);
  fill($('#recent'), s.recent.map((line) => el('li', {}, line)));
  $('#updated').textContent = 'updated ' + new Date(s.now_ms).toLocaleTimeString();
  document.body.dataset.snapshots = String(Number(document.body.dataset.snapshots || 0) + 1);
}

function connect() {
  const source = new EventSource('/events?token=' + encodeURIComponent(token));
  source.onopen = () => { $('#link').textContent = 'live'; $('#link').className = 'badge on'; };
  source.onerror = () => { $('#link').textContent = 'reconnecting…'; $('#link').className = 'badge off'; };
  source.onmessage = (e) => render(JSON.parse(e.data));
}

connect();
