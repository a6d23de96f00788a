// Drives the CMA emulator (`cma-emulator`) with the official `contentful-management`
// client, the way applications use it, and checks that the client understands
// every answer: entities, collections, versions, publishing, bulk actions, and
// the error shapes (names and statuses) the real API sends.
//
// Run: CMA_EMULATOR_BIN=target/debug/cma-emulator node --test examples/cma-fidelity/

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createClient } from 'contentful-management';

const BIN = process.env.CMA_EMULATOR_BIN ?? new URL('../../target/debug/cma-emulator', import.meta.url).pathname;
const TOKEN = 'fidelity-token';

async function startEmulator(rateLimit) {
  const dir = mkdtempSync(join(tmpdir(), 'cma-fidelity-'));
  const portFile = join(dir, 'port');
  const child = spawn(
    BIN,
    ['--addr', '127.0.0.1:0', '--port-file', portFile, '--locales', 'en-US,de-DE', '--rate-limit', String(rateLimit)],
    { env: { ...process.env, CMA_EMULATOR_TOKEN: TOKEN }, stdio: ['ignore', 'ignore', 'inherit'] },
  );
  for (let i = 0; i < 200 && !existsSync(portFile); i++) {
    await new Promise((r) => setTimeout(r, 50));
  }
  const port = readFileSync(portFile, 'utf8').trim();
  return { child, host: `127.0.0.1:${port}` };
}

function client(host, token = TOKEN) {
  // The default ("plain") client, scoped to the emulator's space environment.
  return createClient(
    { accessToken: token, host, insecure: true, retryOnError: false },
    { defaults: { spaceId: 'space1', environmentId: 'master' } },
  );
}

async function rejects(promise, name, status) {
  try {
    await promise;
  } catch (err) {
    assert.equal(err.name, name, `error name (${err.message})`);
    assert.equal(JSON.parse(err.message).status, status);
    return JSON.parse(err.message);
  }
  assert.fail(`expected ${name}`);
}

let emulator;
let cma;

before(async () => {
  emulator = await startEmulator(1000);
  cma = client(emulator.host);
});

after(() => emulator.child.kill());

test('spaces, environments and locales', async () => {
  const spaces = await cma.space.getMany({});
  assert.equal(spaces.total, 1);
  assert.equal(spaces.items[0].sys.id, 'space1');
  const env = await cma.environment.get({});
  assert.equal(env.sys.id, 'master');
  const locales = await cma.locale.getMany({});
  assert.deepEqual(locales.items.map((l) => [l.code, l.default]), [['en-US', true], ['de-DE', false]]);
});

test('a wrong token is AccessTokenInvalid', async () => {
  await rejects(client(emulator.host, 'nope').space.get({}), 'AccessTokenInvalid', 401);
});

test('content types, entries, versions, queries, publishing', async () => {
  const ct = await cma.contentType.createWithId(
    { contentTypeId: 'product' },
    {
      name: 'Product',
      displayField: 'name',
      fields: [
        { id: 'sku', name: 'SKU', type: 'Symbol', required: true },
        { id: 'name', name: 'Name', type: 'Symbol', localized: true },
        { id: 'price', name: 'Price', type: 'Number' },
        { id: 'tags', name: 'Tags', type: 'Array', items: { type: 'Symbol' } },
      ],
    },
  );
  await cma.contentType.publish({ contentTypeId: 'product' }, ct);
  assert.equal((await cma.contentType.get({ contentTypeId: 'product' })).name, 'Product');

  const a = await cma.entry.createWithId(
    { contentTypeId: 'product', entryId: 'prod-a' },
    { fields: { sku: { 'en-US': 'A' }, name: { 'en-US': 'Alpha', 'de-DE': 'Alfa' }, price: { 'en-US': 1.5 } } },
  );
  assert.equal(a.sys.version, 1);
  assert.equal(a.sys.contentType.sys.id, 'product');
  assert.equal(a.sys.publishedVersion, undefined);
  const b = await cma.entry.create({ contentTypeId: 'product' }, { fields: { sku: { 'en-US': 'B' }, name: { 'en-US': 'Beta' } } });
  assert.match(b.sys.id, /^[A-Za-z0-9]{22}$/);

  a.fields.price['en-US'] = 2.5;
  const updated = await cma.entry.update({ entryId: 'prod-a' }, a);
  assert.equal(updated.sys.version, 2);
  assert.equal(updated.fields.price['en-US'], 2.5);
  const published = await cma.entry.publish({ entryId: 'prod-a' }, updated);
  assert.equal(published.sys.publishedVersion, 2);
  assert.equal(published.sys.version, 3);
  assert.equal(published.sys.publishedCounter, 1);

  const found = await cma.entry.getMany({ query: { content_type: 'product', 'fields.sku[in]': 'A,B,C', order: '-fields.sku' } });
  assert.equal(found.total, 2);
  assert.deepEqual(found.items.map((e) => e.fields.sku['en-US']), ['B', 'A']);
  const paged = await cma.entry.getMany({
    query: { content_type: 'product', order: 'fields.sku', limit: 1, skip: 1, select: 'sys.id,fields.sku' },
  });
  assert.equal(paged.total, 2);
  assert.equal(paged.items.length, 1);
  assert.deepEqual(paged.items[0].fields, { sku: { 'en-US': 'B' } });
  const byId = await cma.entry.getMany({ query: { 'sys.id[in]': `prod-a,${b.sys.id}` } });
  assert.equal(byId.total, 2);
  const notA = await cma.entry.getMany({ query: { content_type: 'product', 'fields.sku[ne]': 'A' } });
  assert.deepEqual(notA.items.map((e) => e.sys.id), [b.sys.id]);

  await rejects(cma.entry.getMany({ query: { 'fields.sku': 'A' } }), 'InvalidQuery', 400);
  await rejects(cma.entry.getMany({ query: { content_type: 'product', limit: 1001 } }), 'InvalidQuery', 400);

  const unpublished = await cma.entry.unpublish({ entryId: 'prod-a' });
  assert.equal(unpublished.sys.publishedVersion, undefined);
  await cma.entry.delete({ entryId: 'prod-a' });
  await rejects(cma.entry.get({ entryId: 'prod-a' }), 'NotFound', 404);
});

test('version conflicts are VersionMismatch', async () => {
  const e = await cma.entry.createWithId({ contentTypeId: 'product', entryId: 'prod-v' }, { fields: { sku: { 'en-US': 'V' } } });
  const stale = await cma.entry.get({ entryId: 'prod-v' });
  e.fields.sku['en-US'] = 'V2';
  await cma.entry.update({ entryId: 'prod-v' }, e);
  stale.fields.sku['en-US'] = 'V3';
  await rejects(cma.entry.update({ entryId: 'prod-v' }, stale), 'VersionMismatch', 409);
});

test('invalid entries are ValidationFailed with details', async () => {
  const body = await rejects(
    cma.entry.create({ contentTypeId: 'product' }, { fields: { sku: { 'en-US': 'X' }, price: { 'en-US': 'cheap' } } }),
    'ValidationFailed',
    422,
  );
  assert.equal(body.details.errors[0].path.join('.'), 'fields.price.en-US');
  await rejects(cma.entry.create({ contentTypeId: 'product' }, { fields: { colour: { 'en-US': 'red' } } }), 'ValidationFailed', 422);
  const noSku = await cma.entry.createWithId({ contentTypeId: 'product', entryId: 'prod-nosku' }, { fields: { name: { 'en-US': 'no sku' } } });
  await rejects(cma.entry.publish({ entryId: 'prod-nosku' }, noSku), 'ValidationFailed', 422);
});

test('bulk publish actions run to completion', async () => {
  const items = [];
  for (const sku of ['P1', 'P2', 'P3']) {
    const e = await cma.entry.create({ contentTypeId: 'product' }, { fields: { sku: { 'en-US': sku } } });
    items.push({ sys: { type: 'Link', linkType: 'Entry', id: e.sys.id, version: e.sys.version } });
  }
  const action = await cma.bulkAction.publish({}, { entities: { sys: { type: 'Array' }, items } });
  assert.equal(action.sys.type, 'BulkAction');
  let status = action;
  for (let i = 0; i < 50 && !['succeeded', 'failed'].includes(status.sys.status); i++) {
    await new Promise((r) => setTimeout(r, 50));
    status = await cma.bulkAction.get({ bulkActionId: action.sys.id });
  }
  assert.equal(status.sys.status, 'succeeded');
  for (const item of items) {
    const e = await cma.entry.get({ entryId: item.sys.id });
    assert.equal(e.sys.publishedVersion, item.sys.version);
  }
});

test('rate limits answer 429 RateLimitExceeded', async () => {
  const limited = await startEmulator(2);
  try {
    const c = client(limited.host);
    const results = await Promise.allSettled(Array.from({ length: 6 }, () => c.space.get({})));
    const rejected = results.filter((r) => r.status === 'rejected');
    assert.ok(rejected.length >= 3, `${rejected.length} rejected`);
    for (const r of rejected) {
      assert.equal(r.reason.name, 'RateLimitExceeded');
      assert.equal(JSON.parse(r.reason.message).status, 429);
    }
  } finally {
    limited.child.kill();
  }
});
