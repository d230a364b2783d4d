// mconnect --rate (the lab's health tests' new connections): starts connections at a steady
// pace and says when the failed ones were started; and metricSum, which reads the checkers'
// per-target gauges. The servers listen on loopback.
import { createServer, type Server } from 'node:net';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { metricSum } from '../../src/lab/health-tests.js';
import { mconnect } from '../../src/lab/traffic/mconnect.js';

let server: Server;
let port: number;

beforeAll(async () => {
  server = createServer((s) => s.end('vm-001\n'));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as { port: number }).port;
});

afterAll(() => {
  server.close();
});

test('--rate paces the connections and reports when the failed ones started', async () => {
  const r = await mconnect({ address: `127.0.0.1:${port}`, nconn: 20, rate: 100 });
  expect(r).toMatchObject({ connections: 20, failed_connects: 0, failed_reads: 0, hosts: { 'vm-001': 20 }, failed_at: [] });
  // The last connection starts 190 ms after the first.
  expect(Date.now() - r.started!).toBeGreaterThanOrEqual(190);

  const closed = createServer();
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
  const closedPort = (closed.address() as { port: number }).port;
  await new Promise((resolve) => closed.close(resolve));
  const failed = await mconnect({ address: `127.0.0.1:${closedPort}`, nconn: 4, rate: 20 });
  expect(failed.failed_connects).toBe(4);
  expect(failed.failed_at).toHaveLength(4);
  failed.failed_at!.forEach((at, k) => {
    expect(at).toBeGreaterThanOrEqual(k * 50 - 5);
    expect(at).toBeLessThan(k * 50 + 40);
  });
});

test('without --rate the result is as before (no timing fields)', async () => {
  const r = await mconnect({ address: `127.0.0.1:${port}`, nconn: 3 });
  expect(r).toEqual({ connections: 3, failed_connects: 0, failed_reads: 0, hosts: { 'vm-001': 3 } });
});

test('metricSum adds up every sample of a metric (of those whose labels include a match), and is 0 without one', () => {
  const text = [
    '# HELP nfqlb_target_up x',
    'nfqlb_target_up{service="web",fwmark="101"} 1',
    'nfqlb_target_up{service="web",fwmark="102"} 0',
    'nfqlb_target_up{service="web",fwmark="103"} 1',
    'nfqlb_target_upx 7',
  ].join('\n');
  expect(metricSum(text, 'nfqlb_target_up')).toBe(2);
  expect(metricSum(text, 'nfqlb_service_all_down')).toBe(0);
  expect(metricSum(text, 'nfqlb_target_up', 'fwmark="103"')).toBe(1);
  expect(metricSum(text, 'nfqlb_target_up', 'fwmark="102"')).toBe(0);
  expect(metricSum(text, 'nfqlb_target_upx', 'fwmark')).toBe(0);
});
